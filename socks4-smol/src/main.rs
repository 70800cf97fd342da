//! `socks4-smol`: the SOCKS4/4a proxy server on smol.

use std::process::ExitCode;

use socks4_core::cli::ServerArgs;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = ServerArgs::parse_env();
    tracing_subscriber::fmt().with_env_filter(EnvFilter::new(&args.log_level)).init();
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("socks4-smol: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match socks4_smol::Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("socks4-smol: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in server.local_addrs() {
        tracing::info!("listening on {addr}");
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socks4-smol: {e}");
            ExitCode::FAILURE
        }
    }
}
