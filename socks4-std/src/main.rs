//! `socks4-std`: the SOCKS4/4a server on std threads and `polling`, with the adapters' shared
//! command line.

use std::process::ExitCode;

use socks4_core::cli::ServerArgs;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = ServerArgs::parse_env();
    tracing_subscriber::fmt().with_env_filter(EnvFilter::new(&args.log_level)).init();
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("socks4-std: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match socks4_std::Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("socks4-std: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in server.local_addrs() {
        tracing::info!("listening on {addr}");
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socks4-std: {e}");
            ExitCode::FAILURE
        }
    }
}
