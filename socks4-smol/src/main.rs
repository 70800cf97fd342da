//! The `socks4-smol` binary: the adapters' shared command line, then the server until SIGINT/SIGTERM.

fn main() -> std::process::ExitCode {
    socks4_server::cli::main::<socks4_smol::Server>("socks4-smol")
}
