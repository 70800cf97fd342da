//! The `socks4-tokio` binary: the adapters' shared command line, then the server until SIGINT/SIGTERM.

fn main() -> std::process::ExitCode {
    socks4_server::cli::main::<socks4_tokio::Server>("socks4-tokio")
}
