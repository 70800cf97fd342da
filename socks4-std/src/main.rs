//! The `socks4-std` binary: the adapters' shared command line, then the server until SIGINT/SIGTERM.

fn main() -> std::process::ExitCode {
    socks4_server::cli::main::<socks4_std::Server>("socks4-std")
}
