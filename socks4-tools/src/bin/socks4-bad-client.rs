//! `socks4-bad-client MODE connect PROXY HOST PORT USER PATH TIMEOUT_SECS` or
//! `socks4-bad-client MODE bind PROXY PEER_IP PEER_PORT USER TIMEOUT_SECS`: a reference SOCKS4/4a
//! client with the known bugs of real clients as modes (`good` is correct), for the self-test of
//! `socks4-check --client` (see `socks4_tools::client_check::fixture`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use socks4_tools::client_check::fixture::{self, Job, Mode};

const USAGE: &str = "usage: socks4-bad-client MODE connect PROXY HOST PORT USER PATH TIMEOUT_SECS
       socks4-bad-client MODE bind PROXY PEER_IP PEER_PORT USER TIMEOUT_SECS";

fn parse(args: &[String]) -> Result<(Mode, Job, SocketAddr, String, Duration), String> {
    let field = |i: usize| args.get(i).map(String::as_str).ok_or_else(|| format!("missing argument {}", i + 1));
    let mode = Mode::from_name(field(0)?).ok_or_else(|| {
        let names: Vec<_> = Mode::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mode {:?} (modes: {})", field(0).unwrap_or_default(), names.join(", "))
    })?;
    let proxy: SocketAddr = field(2)?.parse().map_err(|e| format!("PROXY: {e}"))?;
    let port: u16 = field(4)?.parse().map_err(|e| format!("PORT: {e}"))?;
    let user = field(5)?.to_owned();
    let (job, secs) = match field(1)? {
        "connect" => (Job::Connect { host: field(3)?.to_owned(), port, path: field(6)?.to_owned() }, field(7)?),
        "bind" => {
            let ip = field(3)?.parse().map_err(|e| format!("PEER_IP: {e}"))?;
            (Job::Bind { peer: std::net::SocketAddrV4::new(ip, port) }, field(6)?)
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    let secs: f64 = secs.parse().map_err(|e| format!("TIMEOUT_SECS: {e}"))?;
    let timeout = Duration::try_from_secs_f64(secs).map_err(|e| format!("TIMEOUT_SECS: {e}"))?;
    Ok((mode, job, proxy, user, timeout))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, job, proxy, user, timeout) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("socks4-bad-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    match fixture::run(mode, &job, proxy, user.as_bytes(), timeout, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socks4-bad-client: {e}");
            ExitCode::FAILURE
        }
    }
}
