//! A SOCKS4/4a client on [`socks4_tokio::connect`] and [`socks4_tokio::bind`], in the shape
//! `socks4-check --client` drives (CI checks it with every client case):
//!
//! - `tokio_client connect PROXY HOST PORT USER PATH TIMEOUT_SECS` fetches `http://HOST:PORT/PATH` through
//!   the proxy (a host name is sent to the proxy: SOCKS4a) and prints the response;
//! - `tokio_client bind PROXY PEER_IP PEER_PORT USER TIMEOUT_SECS` asks the proxy to accept the peer and
//!   prints `listening ADDR` (where the peer must connect), `peer ADDR`, then what the peer sent.
//!
//! ```text
//! cargo run -p socks4-tokio --example tokio_client -- connect 127.0.0.1:1080 example.com 80 '' / 10
//! ```

use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use socks4_tokio::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const USAGE: &str = "usage: tokio_client connect PROXY HOST PORT USER PATH TIMEOUT_SECS | tokio_client bind PROXY PEER_IP PEER_PORT USER TIMEOUT_SECS";

async fn run(args: &[String]) -> Result<(), Box<dyn Error>> {
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or(USAGE);
    let proxy: SocketAddr = arg(1)?.parse()?;
    let port: u16 = arg(3)?.parse()?;
    let user = arg(4)?.as_bytes();
    let mut out = std::io::stdout().lock();
    let mut data = Vec::new();
    match arg(0)? {
        "connect" => {
            let (host, path) = (arg(2)?, arg(5)?);
            let limit = Duration::try_from_secs_f64(arg(6)?.parse()?)?;
            let target = match host.parse::<Ipv4Addr>() {
                Ok(ip) => Target::Addr((ip, port).into()),
                Err(_) => Target::Host(host, port),
            };
            let mut stream =
                timeout(limit, socks4_tokio::connect(proxy, target, user)).await.map_err(|_| "timed out")??;
            stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
            stream.read_to_end(&mut data).await?;
        }
        "bind" => {
            let peer = SocketAddrV4::new(arg(2)?.parse()?, port);
            let limit = Duration::try_from_secs_f64(arg(5)?.parse()?)?;
            let pending = timeout(limit, socks4_tokio::bind(proxy, peer, user)).await.map_err(|_| "timed out")??;
            writeln!(out, "listening {}", pending.listen_addr())?;
            out.flush()?;
            let (mut stream, peer) = pending.accept().await?;
            writeln!(out, "peer {peer}")?;
            stream.read_to_end(&mut data).await?;
        }
        _ => return Err(USAGE.into()),
    }
    out.write_all(&data)?;
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Box::<dyn Error>::from)
        .and_then(|rt| rt.block_on(run(&args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_client: {e}");
            ExitCode::FAILURE
        }
    }
}
