//! Checks of the outgoing side against an adapter's binary: source addresses (`--outgoing`, a
//! rule's `out`, `out same`) as the destination sees them, a source not on this host refused at
//! start-up, TCP keepalive on both relayed sockets as `ss -o` shows it, and `--warn-unsafe-socks`
//! (its log line once per client, the protocol counts in the metrics).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::operations::{WithMetrics, address_after, scrape, start_with_metrics};
use super::ops::{Scratch, run, signal};
use super::{connect_from, echo_target, line_with, start};
use crate::scenarios::{Failure, Outcome};
use crate::wire;

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A destination that records where each connection came from.
struct Recorder(TcpListener);

impl Recorder {
    fn start() -> Result<Self, Failure> {
        let listener = TcpListener::bind((LOCAL, 0))?;
        listener.set_nonblocking(true)?;
        Ok(Self(listener))
    }

    fn addr(&self) -> Result<SocketAddrV4, Failure> {
        match self.0.local_addr()? {
            SocketAddr::V4(a) => Ok(a),
            other => Err(Failure::new(format!("recorder on {other}"))),
        }
    }

    /// The next connection's source address (within 5 s).
    fn next_source(&self) -> Result<(TcpStream, IpAddr), Failure> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.0.accept() {
                Ok((s, peer)) => return Ok((s, peer.ip())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(Failure::new(format!("the destination saw no connection: {e}"))),
            }
        }
    }
}

/// CONNECT through `proxy` (from 127.0.0.1, as `user`) to `target`: the source address the
/// destination saw.
fn source_seen(proxy: SocketAddr, target: &Recorder, user: &str) -> Result<IpAddr, Failure> {
    let (code, client) = connect_from(LOCAL, proxy, target.addr()?, user.as_bytes())?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("CONNECT through {proxy} as {user}: reply {code}, not 90")));
    }
    let (_theirs, source) = target.next_source()?;
    drop(client);
    Ok(source)
}

fn sample(samples: &HashMap<String, f64>, series: &str, text: &str) -> Result<f64, Failure> {
    samples.get(series).copied().ok_or_else(|| Failure::new(format!("no {series} in /metrics: {text}")))
}

/// `--outgoing 127.0.0.2 --outgoing 127.0.0.3` and `--allow 'user alice out 127.0.0.4'`: ten
/// CONNECTs reach the destination from 127.0.0.2 and 127.0.0.3 in turn (five each), alice's from
/// 127.0.0.4 (the rule's `out` wins); the log lines say `out=ADDR`, and
/// `socks4_outgoing_connections_total{source=...}` counts each source.
///
/// # Errors
/// What went wrong.
pub fn outgoing_rotation(binary: &Path) -> Result<Outcome, Failure> {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--outgoing",
        "127.0.0.2",
        "--outgoing",
        "127.0.0.3",
        "--allow",
        "user alice out 127.0.0.4",
        "--allow",
        "any",
    ];
    let WithMetrics { server, lines, mut seen, proxy, metrics } = start_with_metrics(binary, &args)?;
    let target = Recorder::start()?;
    let mut sources = Vec::new();
    for _ in 0..10 {
        sources.push(source_seen(proxy, &target, "bob")?);
    }
    let count = |ip: Ipv4Addr| sources.iter().filter(|s| **s == IpAddr::V4(ip)).count();
    if count(v4(2)) != 5 || count(v4(3)) != 5 || sources.windows(2).any(|w| w[0] == w[1]) {
        return Err(Failure::new(format!(
            "two --outgoing addresses should alternate; the destination saw {sources:?}"
        )));
    }
    let alice = source_seen(proxy, &target, "alice")?;
    if alice != IpAddr::V4(v4(4)) {
        return Err(Failure::new(format!("alice's rule says `out 127.0.0.4`; the destination saw {alice}")));
    }
    let line = line_with(&lines, " out=127.0.0.4", &mut seen)?;
    if !line.contains("user=alice") {
        return Err(Failure::new(format!("the line with out=127.0.0.4 is not alice's: {line}")));
    }
    let (samples, text) = scrape(metrics)?;
    for (source, want) in [("127.0.0.2", 5.0), ("127.0.0.3", 5.0), ("127.0.0.4", 1.0)] {
        let series = format!("socks4_outgoing_connections_total{{source=\"{source}\"}}");
        let got = sample(&samples, &series, &text)?;
        if got != want {
            return Err(Failure::new(format!("{series} is {got}, not {want}")));
        }
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// The source a parent sees, and a reload: `--config FILE` with `outgoing = ["127.0.0.2"]` and
/// the rules `allow user carol out 127.0.0.5 via socks4://PARENT`, `allow any`. Bob reaches the destination
/// from 127.0.0.2; carol's request reaches the parent (the first hop of her route) from 127.0.0.5.
/// The file then says `outgoing = ["127.0.0.3"]` and `out 127.0.0.6`, and after `SIGHUP` new
/// connections leave from those: bob's from 127.0.0.3, carol's parent sees 127.0.0.6.
///
/// # Errors
/// What went wrong.
pub fn outgoing_parent_and_reload(binary: &Path) -> Result<Outcome, Failure> {
    let (target, parent) = (Recorder::start()?, Recorder::start()?);
    let file = |default: u8, carol: u8| {
        format!(
            "outgoing = [\"127.0.0.{default}\"]\nrules = [\"allow user carol out 127.0.0.{carol} via socks4://{}\", \"allow any\"]\n",
            SocketAddr::V4(parent.addr().unwrap_or(SocketAddrV4::new(LOCAL, 0)))
        )
    };
    let dir = Scratch::new("egress-reload")?;
    let path = dir.write("socks4.toml", &file(2, 5))?.to_string_lossy().into_owned();
    let (server, lines, proxy, mut seen) = start(binary, &["--listen", "127.0.0.1:0", "--config", &path])?;
    let expect = |default: u8, carol: u8, when: &str| -> Result<(), Failure> {
        let bob = source_seen(proxy, &target, "bob")?;
        if bob != IpAddr::V4(v4(default)) {
            return Err(Failure::new(format!("{when}: `outgoing` is 127.0.0.{default}; the destination saw {bob}")));
        }
        let dest = target.addr()?;
        let client = thread::spawn(move || connect_from(LOCAL, proxy, dest, b"carol").map(|(code, _)| code));
        let (mut hop, seen_from) = parent.next_source()?;
        hop.set_nonblocking(false)?;
        hop.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = [0u8; 64];
        let _ = hop.read(&mut request)?;
        hop.write_all(&[0, wire::GRANTED, 0, 0, 0, 0, 0, 0])?;
        let code = client.join().map_err(|_| Failure::new("the client thread panicked"))??;
        if seen_from != IpAddr::V4(v4(carol)) || code != wire::GRANTED {
            return Err(Failure::new(format!(
                "{when}: carol's rule says `out 127.0.0.{carol}` for its route; the parent saw {seen_from} (reply {code})"
            )));
        }
        Ok(())
    };
    expect(2, 5, "before the reload")?;
    dir.write("socks4.toml", &file(3, 6))?;
    signal(&server, "HUP")?;
    line_with(&lines, "config reloaded from ", &mut seen)?;
    expect(3, 6, "after the reload")?;
    drop(server);
    Ok(Outcome::Pass)
}

/// `--listen 127.0.0.1:0 --listen 127.0.0.2:0 --allow 'out same'` (and `--outgoing 127.0.0.3`,
/// which the rule overrides): a client of the first listener reaches the destination from
/// 127.0.0.1, one of the second from 127.0.0.2, every time.
///
/// # Errors
/// What went wrong.
pub fn outgoing_same_same(binary: &Path) -> Result<Outcome, Failure> {
    let args = ["--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0", "--allow", "out same", "--outgoing", "127.0.0.3"];
    let (server, lines, first, mut seen) = start(binary, &args)?;
    let second = address_after(&line_with(&lines, "listening on ", &mut seen)?, "listening on ")?;
    let target = Recorder::start()?;
    for _ in 0..2 {
        for proxy in [first, second] {
            let source = source_seen(proxy, &target, "bob")?;
            if source != proxy.ip() {
                return Err(Failure::new(format!(
                    "`out same`: a client of the listener {proxy} reached the destination from {source}, not {}",
                    proxy.ip()
                )));
            }
        }
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// Runs `binary` with `args` and `env`: exit status, stdout, stderr.
fn run_env(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(Option<i32>, String, String), Failure> {
    let out = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::new(format!("starting {}: {e}", binary.display())))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
}

/// A source not on this host (`--outgoing 192.0.2.1`, `out 192.0.2.7`, `out dev nosuch0`) stops
/// the server at start-up (status 2, the address and why on stderr), never per connection;
/// `--check-config` prints `outgoing`, `keepalive`, `warn_unsafe_socks` and the rules' `out`, and
/// `SOCKS4_OUTGOING` is read as a list.
///
/// # Errors
/// What went wrong.
pub fn outgoing_refused_at_start(binary: &Path) -> Result<Outcome, Failure> {
    for (args, needles) in [
        (
            &["--listen", "127.0.0.1:0", "--outgoing", "192.0.2.1"][..],
            &["192.0.2.1", "not an address of this host"][..],
        ),
        (&["--listen", "127.0.0.1:0", "--allow", "user a out 127.0.0.2,192.0.2.7"], &["192.0.2.7", "not an address"]),
        (&["--listen", "127.0.0.1:0", "--allow", "out dev nosuch0"], &["nosuch0", "interface"]),
    ] {
        let (status, err) = match run(binary, args) {
            Ok((status, _, err)) => (status, err),
            Err(e) => return Err(e),
        };
        if status.code() != Some(2) || !needles.iter().all(|n| err.contains(n)) {
            return Err(Failure::new(format!("{args:?}: status {status}, stderr {err:?}; wanted 2 and {needles:?}")));
        }
    }
    let args = [
        "--check-config",
        "--keepalive",
        "60s,10s,5",
        "--warn-unsafe-socks",
        "--allow",
        "user a out same",
        "--allow",
        "user b out dev lo",
    ];
    let (status, out, err) = run_env(binary, &args, &[("SOCKS4_OUTGOING", "127.0.0.2,::1")])?;
    if status != Some(0) {
        return Err(Failure::new(format!("--check-config: status {status:?}; stderr {err}")));
    }
    for needle in [
        "outgoing = [\"127.0.0.2\", \"::1\"]",
        "keepalive = \"60s,10s,5\"",
        "warn_unsafe_socks = true",
        "\"allow user a out same\"",
        "\"allow user b out dev lo\"",
    ] {
        if !out.contains(needle) {
            return Err(Failure::new(format!("--check-config does not print {needle:?}: {out}")));
        }
    }
    Ok(Outcome::Pass)
}

/// The sockets `ss -tnoH state established` shows: (local, peer, the rest of the line).
fn sockets() -> Result<Vec<(SocketAddr, SocketAddr, String)>, Failure> {
    let out = Command::new("ss").args(["-tnoH", "state", "established"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut addrs = line.split_whitespace().filter_map(|w| w.parse::<SocketAddr>().ok());
            Some((addrs.next()?, addrs.next()?, line.to_owned()))
        })
        .collect())
}

/// Whether the proxy's two sockets of one relay (its client's, to the client at `client`; its
/// upstream, to `target`) have a keepalive timer: (client side, upstream side).
/// `ss` shows one timer per socket, and a retransmission timer (`timer:(on,...)`: data sent, not
/// yet acknowledged, e.g. the echo the client's delayed ACK has not answered) hides the keepalive
/// one: asked again (for up to 3 s) until neither socket has one.
fn keepalive_timers(proxy: SocketAddr, client: SocketAddr, target: SocketAddr) -> Result<(bool, bool), Failure> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let all = sockets()?;
        let timer = |line: &str| line.contains("timer:(keepalive");
        let front = all.iter().find(|(l, p, _)| *l == proxy && *p == client);
        let back = all.iter().find(|(l, p, _)| *p == target && *l != client);
        match (front, back) {
            (Some(f), Some(b))
                if (f.2.contains("timer:(on") || b.2.contains("timer:(on")) && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(50));
            }
            (Some(f), Some(b)) => return Ok((timer(&f.2), timer(&b.2))),
            _ => {
                return Err(Failure::new(format!(
                    "ss does not show the relay {client} → {proxy} → {target}: {all:#?}"
                )));
            }
        }
    }
}

/// `--keepalive 37s,5s,3`: both sockets of a relay (the client's and the destination's) carry a
/// keepalive timer in `ss -o`; without the option neither does. Skips without `ss` (iproute2)
/// unless `SOCKS4_REQUIRE_SS` is set.
///
/// # Errors
/// What went wrong.
pub fn keepalive_on_relayed_sockets(binary: &Path) -> Result<Outcome, Failure> {
    if Command::new("ss").arg("-V").output().is_err() {
        let why = "no `ss` (install iproute2)".to_owned();
        if std::env::var_os("SOCKS4_REQUIRE_SS").is_some() {
            return Err(Failure::new(why));
        }
        return Ok(Outcome::Skip(why));
    }
    let target = echo_target()?;
    for (keepalive, want) in [(true, (true, true)), (false, (false, false))] {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        if keepalive {
            args.extend(["--keepalive", "37s,5s,3"]);
        }
        let (server, _lines, proxy, _seen) = start(binary, &args)?;
        let (code, mut s) = connect_from(LOCAL, proxy, target.addr(), b"user")?;
        if code != wire::GRANTED {
            return Err(Failure::new(format!("CONNECT: reply {code}, not 90")));
        }
        // A round trip: the relay has started (and set its sockets' options).
        s.write_all(b"ka")?;
        let mut echo = [0u8; 2];
        s.read_exact(&mut echo)?;
        let timers = keepalive_timers(proxy, s.local_addr()?, SocketAddr::V4(target.addr()))?;
        drop((s, server));
        if timers != want {
            return Err(Failure::new(format!(
                "keepalive {}: (client side, destination side) timers are {timers:?}, not {want:?}",
                if keepalive { "on" } else { "off" }
            )));
        }
    }
    Ok(Outcome::Pass)
}

/// `--warn-unsafe-socks`: CONNECTs by address are served, and logged at warn level once per
/// client (two from 127.0.0.1: one line; one from 127.0.0.2: its own line); a SOCKS4a request
/// is not; `socks4_protocol_requests_total` counts 3 `socks4` and 1 `socks4a`.
///
/// # Errors
/// What went wrong.
pub fn warn_unsafe_socks(binary: &Path) -> Result<Outcome, Failure> {
    let WithMetrics { server, lines, mut seen, proxy, metrics } =
        start_with_metrics(binary, &["--listen", "127.0.0.1:0", "--warn-unsafe-socks"])?;
    let target = echo_target()?;
    for source in [v4(1), v4(1), v4(2)] {
        let (code, s) = connect_from(source, proxy, target.addr(), b"user")?;
        if code != wire::GRANTED {
            return Err(Failure::new(format!("warn-only: a CONNECT by address got {code}, not 90")));
        }
        drop(s);
        let line = line_with(&lines, &format!("conn client={source}:"), &mut seen)?;
        seen.push(line);
    }
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&wire::connect_host("localhost", target.addr().port(), b"user"))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    drop(s);
    let line = line_with(&lines, "cmd=CONNECT dest=localhost:", &mut seen)?;
    seen.push(line);
    let warned = |ip: Ipv4Addr| {
        seen.iter().filter(|l| l.contains("WARN") && l.contains(&format!("client {ip} sent CONNECT"))).count()
    };
    if warned(v4(1)) != 1 || warned(v4(2)) != 1 || !seen.iter().any(|l| l.contains("by IP address")) {
        return Err(Failure::new(format!("want one warning for each of 127.0.0.1 and 127.0.0.2; log: {seen:#?}")));
    }
    let (samples, text) = scrape(metrics)?;
    for (protocol, want) in [("socks4", 3.0), ("socks4a", 1.0)] {
        let series = format!("socks4_protocol_requests_total{{protocol=\"{protocol}\"}}");
        let got = sample(&samples, &series, &text)?;
        if got != want {
            return Err(Failure::new(format!("{series} is {got}, not {want}")));
        }
    }
    drop(server);
    Ok(Outcome::Pass)
}
