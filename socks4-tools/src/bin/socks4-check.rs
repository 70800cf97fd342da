//! `socks4-check PROXY_ADDR [options]`: runs the behavioural scenarios against any SOCKS4/4a
//! server listening on `PROXY_ADDR` (the targets are started on 127.0.0.1 by the checker).
//! `socks4-check --client --run 'COMMAND'`: plays the proxy for a SOCKS4/4a client and judges it.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use socks4_tools::client_check::{self, Config};
use socks4_tools::report;
use socks4_tools::scenarios::{Ctx, Profile};

const USAGE: &str = "\
usage: socks4-check PROXY_ADDR [options]

Runs the SOCKS4/4a behavioural scenarios against the server at PROXY_ADDR (host:port).
Destination servers are started on 127.0.0.1, so the server must be able to reach them.

options:
  --only NAME              run only this scenario (repeatable)
  --skip NAME              do not run this scenario (repeatable; e.g. upstream_reset_reaches_client
                           behind a load balancer, which turns resets into closes)
  --list                   list the scenario names and exit
  --user-id-limit N        the server's longest accepted user id, in bytes
  --handshake-timeout SECS the server's handshake timeout (fractions allowed)
  --denied-user U          a user id the server's rules deny (all others allowed)
  --no-bind                skip the BIND scenarios
  --no-localhost           the server does not resolve `localhost` (skip that 4a case)
  --safe-socks             the server refuses CONNECT by IP address (names required)
  --bulk-mib N             MiB sent each way by bulk_both_ways (default 64)
  -h, --help               this help

Exit status: 0 if nothing failed, 1 if a scenario failed, 2 on bad usage.

usage: socks4-check --client [--run 'COMMAND'] [options]

Checks a SOCKS4/4a client: listens as its proxy on 127.0.0.1 and runs COMMAND (with sh -c) once
per case, placeholders filled in: {proxy} (host:port of the checker), {proxy_host}, {proxy_port},
{host}, {port}, {path}, {url} (http://{host}:{port}{path}, a page the checker serves through the
fake tunnel), {user} (the user id the client must send; may be empty: quote it), {case}. The
client must fetch the page and print it. Without --run, waits for a client to connect for each
case (printing what to connect to on stderr) and judges only what it sees on the wire.
e.g. socks4-check --client --run 'curl -sS --socks4a {proxy} --proxy-user '\''{user}:'\'' {url}'

options:
  --run COMMAND            the client command
  --bind-run COMMAND       a BIND client for the BIND cases ({host}:{port} is the peer to
                           expect): it must print the address the peer should connect to as
                           IP:PORT, then what the peer sent
  --host NAME              the destination given to the client (default localhost)
  --4a                     a host name must be sent to the proxy (SOCKS4a), not resolved locally
  --user U                 the user id for the cases that do not test user ids (default empty)
  --client-timeout SECS    how long the client waits for the reply: enables slow_reply_past_timeout
  --client-limit SECS      how long a client may take to connect and to exit (default 10)
  --listen ADDR            the checker's proxy address (default 127.0.0.1:0)
  --only NAME, --skip NAME, --list   as above, with the client cases";

struct Args {
    proxy: SocketAddr,
    only: Vec<String>,
    skip: Vec<String>,
    profile: Profile,
}

enum Parsed {
    Run(Args),
    List,
    Help,
}

fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
    it.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut it = args.into_iter();
    let mut proxy = None;
    let mut only = Vec::new();
    let mut skip = Vec::new();
    let mut profile = Profile::default();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--list" => return Ok(Parsed::List),
            "--only" => only.push(value(&mut it, &arg)?),
            "--skip" => skip.push(value(&mut it, &arg)?),
            "--user-id-limit" => {
                let v = value(&mut it, &arg)?;
                profile.user_id_limit = Some(v.parse().map_err(|e| format!("--user-id-limit {v}: {e}"))?);
            }
            "--handshake-timeout" => {
                let v = value(&mut it, &arg)?;
                let secs: f64 = v.parse().map_err(|e| format!("--handshake-timeout {v}: {e}"))?;
                let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("--handshake-timeout {v}: {e}"))?;
                profile.handshake_timeout = Some(d);
            }
            "--denied-user" => profile.denied_user = Some(value(&mut it, &arg)?),
            "--no-bind" => profile.bind = false,
            "--no-localhost" => profile.resolves_localhost = false,
            "--safe-socks" => profile.safe_socks = true,
            "--bulk-mib" => {
                let v = value(&mut it, &arg)?;
                let mib: u64 = v.parse().map_err(|e| format!("--bulk-mib {v}: {e}"))?;
                profile.bulk_bytes = mib.checked_mul(1 << 20).ok_or("--bulk-mib too large")?;
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if proxy.is_some() {
                    return Err(format!("unexpected argument {s}"));
                }
                let addr = s
                    .to_socket_addrs()
                    .map_err(|e| format!("PROXY_ADDR {s}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("PROXY_ADDR {s}: no address"))?;
                proxy = Some(addr);
            }
        }
    }
    let proxy = proxy.ok_or("missing PROXY_ADDR")?;
    Ok(Parsed::Run(Args { proxy, only, skip, profile }))
}

fn secs(v: &str, flag: &str) -> Result<Duration, String> {
    let secs: f64 = v.parse().map_err(|e| format!("{flag} {v}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{flag} {v}: {e}"))
}

enum ClientParsed {
    Run(Box<Config>, Vec<String>, Vec<String>),
    List,
    Help,
}

fn parse_client(args: impl IntoIterator<Item = String>) -> Result<ClientParsed, String> {
    let mut it = args.into_iter();
    let mut config = Config::default();
    let (mut only, mut skip) = (Vec::new(), Vec::new());
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(ClientParsed::Help),
            "--list" => return Ok(ClientParsed::List),
            "--client" => {}
            "--run" => config.command = Some(value(&mut it, &arg)?),
            "--bind-run" => config.bind_command = Some(value(&mut it, &arg)?),
            "--host" => config.host = value(&mut it, &arg)?,
            "--4a" => config.require_4a = true,
            "--user" => config.user = value(&mut it, &arg)?,
            "--client-timeout" => config.client_timeout = Some(secs(&value(&mut it, &arg)?, &arg)?),
            "--client-limit" => config.client_limit = secs(&value(&mut it, &arg)?, &arg)?,
            "--listen" => {
                let v = value(&mut it, &arg)?;
                config.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--only" => only.push(value(&mut it, &arg)?),
            "--skip" => skip.push(value(&mut it, &arg)?),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    if let Some(unknown) = only.iter().chain(&skip).find(|n| client_check::find(n).is_none()) {
        return Err(format!("unknown case {unknown:?} (see --client --list)"));
    }
    Ok(ClientParsed::Run(Box::new(config), only, skip))
}

fn main_client(args: Vec<String>) -> ExitCode {
    let (config, only, skip) = match parse_client(args) {
        Ok(ClientParsed::Run(c, o, s)) => (c, o, s),
        Ok(ClientParsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(ClientParsed::List) => {
            for c in client_check::all() {
                println!("{}", c.name);
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("socks4-check: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let checker = match client_check::Checker::new(*config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("socks4-check: listening: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let selected: Vec<_> = client_check::all()
        .iter()
        .filter(|c| only.is_empty() || only.iter().any(|n| n == c.name))
        .filter(|c| !skip.iter().any(|n| n == c.name))
        .collect();
    match client_check::run(&checker, &selected, &mut out) {
        Ok(summary) if summary.ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("socks4-check: writing the report: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--client") {
        return main_client(argv);
    }
    let args = match parse(argv) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::List) => {
            for s in socks4_tools::scenarios::all() {
                println!("{}", s.name);
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("socks4-check: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let selected = match report::select(&args.only).and_then(|s| report::select(&args.skip).map(|_| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("socks4-check: {e} (see --list)");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let (skipped, selected): (Vec<&socks4_tools::scenarios::Scenario>, Vec<_>) =
        selected.into_iter().partition(|s| args.skip.iter().any(|n| n == s.name));
    for s in skipped {
        let _ = writeln!(out, "SKIP {}: --skip", s.name);
    }
    let ctx = Ctx { proxy: args.proxy, profile: args.profile };
    match report::run(&ctx, &selected, &mut out) {
        Ok(summary) if summary.ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("socks4-check: writing the report: {e}");
            ExitCode::from(1)
        }
    }
}
