//! A blocking SOCKS4/4a client on [`socks4_std::connect`] and [`socks4_std::bind`], in the shape
//! `socks4-check --client` drives (CI checks it with every client case):
//!
//! - `std_client connect PROXY HOST PORT USER PATH TIMEOUT_SECS` fetches `http://HOST:PORT/PATH` through
//!   the proxy (a host name is sent to the proxy: SOCKS4a) and prints the response;
//! - `std_client bind PROXY PEER_IP PEER_PORT USER TIMEOUT_SECS` asks the proxy to accept the peer and
//!   prints `listening ADDR` (where the peer must connect), `peer ADDR`, then what the peer sent.
//!
//! ```text
//! cargo run -p socks4-std --example std_client -- connect 127.0.0.1:1080 example.com 80 '' / 10
//! ```

use std::error::Error;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use socks4_std::Target;

const USAGE: &str = "usage: std_client connect PROXY HOST PORT USER PATH TIMEOUT_SECS | std_client bind PROXY PEER_IP PEER_PORT USER TIMEOUT_SECS";
/// How long the BIND peer may take (the proxy's own BIND timeout bounds it too).
const ACCEPT_LIMIT: Duration = Duration::from_secs(120);

fn run(args: &[String]) -> Result<(), Box<dyn Error>> {
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or(USAGE);
    let proxy: SocketAddr = arg(1)?.parse()?;
    let port: u16 = arg(3)?.parse()?;
    let user = arg(4)?.as_bytes();
    let mut out = io::stdout().lock();
    match arg(0)? {
        "connect" => {
            let (host, path) = (arg(2)?, arg(5)?);
            let limit = Duration::try_from_secs_f64(arg(6)?.parse()?)?;
            let target = match host.parse::<Ipv4Addr>() {
                Ok(ip) => Target::Addr((ip, port).into()),
                Err(_) => Target::Host(host, port),
            };
            let mut stream = socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(limit), target, user)?;
            stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
            io::copy(&mut stream, &mut out)?;
        }
        "bind" => {
            let peer = SocketAddrV4::new(arg(2)?.parse()?, port);
            let limit = Duration::try_from_secs_f64(arg(5)?.parse()?)?;
            let pending = socks4_std::bind(socks4_std::ProxyAddr::from(proxy).with_timeout(limit), peer, user)?;
            writeln!(out, "listening {}", pending.listen_addr())?;
            out.flush()?;
            let (mut stream, peer) = pending.accept_timeout(ACCEPT_LIMIT)?;
            writeln!(out, "peer {peer}")?;
            io::copy(&mut stream, &mut out)?;
        }
        _ => return Err(USAGE.into()),
    }
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("std_client: {e}");
            ExitCode::FAILURE
        }
    }
}
