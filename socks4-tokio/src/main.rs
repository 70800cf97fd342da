//! The `socks4-tokio` binary: the shared command line, then the server until SIGINT/SIGTERM.

use std::process::ExitCode;

use socks4_core::cli::ServerArgs;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = ServerArgs::parse_env();
    tracing_subscriber::fmt().with_env_filter(EnvFilter::new(&args.log_level)).init();
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("socks4-tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match socks4_tokio::Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("socks4-tokio: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in server.local_addrs() {
        tracing::info!("listening on {addr}");
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socks4-tokio: {e}");
            ExitCode::FAILURE
        }
    }
}
