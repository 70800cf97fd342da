//! Checks of the operations features against an adapter's binary: `--metrics` (counters moved by
//! exactly the traffic sent, the exposition valid for `promtool`), `/readyz` during a drain, and
//! `--log-format json`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

use super::{Server, connect_from, echo_target, line_with, start};
use crate::scenarios::{Failure, Outcome};
use crate::wire;

/// The address in a log line after `marker`: the characters an IP socket address is made of.
pub(super) fn address_after(line: &str, marker: &str) -> Result<SocketAddr, Failure> {
    let text: String = line
        .rsplit(marker)
        .next()
        .unwrap_or_default()
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    text.parse().map_err(|e| Failure::new(format!("address {text:?} after {marker:?} in {line:?}: {e}")))
}

/// `GET path` on the metrics endpoint: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), Failure> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok());
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    match (status, body) {
        (Some(status), Some(body)) => Ok((status, body)),
        _ => Err(Failure::new(format!("GET {path}: not an HTTP answer: {answer:?}"))),
    }
}

/// Scrapes `/metrics`: every sample by its series (`name{labels}`), and the text.
pub(super) fn scrape(addr: SocketAddr) -> Result<(HashMap<String, f64>, String), Failure> {
    let (status, text) = http_get(addr, "/metrics")?;
    if status != 200 {
        return Err(Failure::new(format!("GET /metrics: {status}")));
    }
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, v)| Some((series.to_owned(), v.parse().ok()?)))
        .collect();
    Ok((samples, text))
}

/// A server binary started with `--metrics`.
pub(super) struct WithMetrics {
    pub(super) server: Server,
    pub(super) lines: Receiver<String>,
    pub(super) seen: Vec<String>,
    pub(super) proxy: SocketAddr,
    pub(super) metrics: SocketAddr,
}

/// Starts `binary` with `args` and `--metrics 127.0.0.1:0`.
pub(super) fn start_with_metrics(binary: &Path, args: &[&str]) -> Result<WithMetrics, Failure> {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (server, lines, proxy, mut seen) = start(binary, &all)?;
    let line = line_with(&lines, "serving metrics on http://", &mut seen)?;
    let metrics = address_after(&line, "http://")?;
    Ok(WithMetrics { server, lines, seen, proxy, metrics })
}

/// Checks the exposition with Prometheus's own `promtool check metrics` (Debian package
/// `prometheus`); `Ok(Some(why))` when there is no promtool and `SOCKS4_REQUIRE_PROMTOOL` is unset.
fn promtool_check(text: &str) -> Result<Option<String>, Failure> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("SOCKS4_REQUIRE_PROMTOOL").is_none() => {
            return Ok(Some(format!("no promtool ({e}); install it with `apt-get install prometheus`")));
        }
        Err(e) => return Err(Failure::new(format!("SOCKS4_REQUIRE_PROMTOOL is set but promtool: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || !said.trim().is_empty() {
        return Err(Failure::new(format!("promtool check metrics: {} {said}", out.status)));
    }
    Ok(None)
}

/// The series every adapter must expose (names shared by all three).
const SERIES: &[&str] = &[
    "socks4_connections_accepted_total",
    "socks4_worker_connections_total{worker=\"1\"}",
    "socks4_worker_active_connections{worker=\"0\"}",
    "socks4_active_connections{phase=\"handshake\"}",
    "socks4_active_connections{phase=\"resolving\"}",
    "socks4_active_connections{phase=\"connecting\"}",
    "socks4_active_connections{phase=\"bind_wait\"}",
    "socks4_active_connections{phase=\"relaying\"}",
    "socks4_connections_refused_total{reason=\"per_client_connections\"}",
    "socks4_accept_errors_total",
    "socks4_requests_total{command=\"bind\",reply=\"93\"}",
    "socks4_connections_closed_total{reason=\"idle_timeout\"}",
    "socks4_relayed_bytes_total{direction=\"up\"}",
    "socks4_handshake_duration_seconds_bucket{le=\"0.001\"}",
    "socks4_connect_duration_seconds_sum",
    "socks4_resolve_duration_seconds_count",
    "socks4_resolve_failures_total",
    "socks4_reloads_total{result=\"failed\"}",
    "socks4_ready",
    "socks4_connections_refused_total{reason=\"per_client_bind_waits\"}",
    "socks4_connections_refused_total{reason=\"per_client_handshakes\"}",
    "socks4_upstream_failures_total",
    "socks4_upstream_skips_total",
    "socks4_upstream_parents_down",
];

/// `--metrics` through `binary` (2 workers, `--deny 'port 9' --allow any`): a scrape before and
/// after 3 CONNECTs that each relay a known number of bytes, 1 CONNECT denied by the rule, and 1
/// SOCKS4a CONNECT to a name that cannot resolve; the counters moved by exactly that (accepted 5,
/// requests by code, closes by reason, bytes each way, 5 handshake and 3 connect times, 1 resolve
/// failure, the 5 connections spread 3/2 over the workers, nothing left active), every expected
/// series is there, and `promtool check metrics` finds nothing wrong.
///
/// # Errors
/// What went wrong.
pub fn metrics_count_what_was_sent(binary: &Path) -> Result<Outcome, Failure> {
    let args =
        ["--listen", "127.0.0.1:0", "--workers", "2", "--connect-timeout", "3s", "--deny", "port 9", "--allow", "any"];
    let WithMetrics { server, lines, mut seen, proxy, metrics } = start_with_metrics(binary, &args)?;
    let target = echo_target()?;
    let (before, _) = scrape(metrics)?;
    let sizes = [1usize, 1000, 70_000];
    for &n in &sizes {
        let (code, mut s) = connect_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), b"metrics")?;
        if code != wire::GRANTED {
            return Err(Failure::new(format!("CONNECT: reply {code}, not 90")));
        }
        let data = vec![b'm'; n];
        s.write_all(&data)?;
        let mut echo = vec![0u8; n];
        s.read_exact(&mut echo)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        line_with(&lines, &format!("result=ok up={n} down={n} "), &mut seen)?;
    }
    let denied = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
    let (code, _s) = connect_from(Ipv4Addr::LOCALHOST, proxy, denied, b"metrics")?;
    if code != 91 {
        return Err(Failure::new(format!("CONNECT to a denied port: reply {code}, not 91")));
    }
    let denied_line = line_with(&lines, "result=denied", &mut seen)?;
    if !denied_line.contains(" reply=91") || !denied_line.contains(" worker=") {
        return Err(Failure::new(format!("the log line lacks worker= or reply=91: {denied_line}")));
    }
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(&wire::connect_host("no-such-host.invalid", 80, b"metrics"))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    if reply[1] != 91 {
        return Err(Failure::new(format!("CONNECT to an unresolvable name: reply {}, not 91", reply[1])));
    }
    drop(s);
    line_with(&lines, "dest=no-such-host.invalid:80", &mut seen)?;
    let (after, text) = scrape(metrics)?;
    drop(server);

    for series in SERIES {
        if !after.contains_key(*series) {
            return Err(Failure::new(format!("no series {series} in /metrics:\n{text}")));
        }
    }
    let moved =
        |series: &str| after.get(series).copied().unwrap_or(f64::NAN) - before.get(series).copied().unwrap_or(0.0);
    let bytes: usize = sizes.iter().sum();
    let expected: &[(&str, f64)] = &[
        ("socks4_connections_accepted_total", 5.0),
        ("socks4_worker_connections_total{worker=\"0\"}", 3.0),
        ("socks4_worker_connections_total{worker=\"1\"}", 2.0),
        ("socks4_requests_total{command=\"connect\",reply=\"90\"}", 3.0),
        ("socks4_requests_total{command=\"connect\",reply=\"91\"}", 2.0),
        ("socks4_requests_total{command=\"bind\",reply=\"90\"}", 0.0),
        ("socks4_connections_closed_total{reason=\"ok\"}", 3.0),
        ("socks4_connections_closed_total{reason=\"denied\"}", 1.0),
        ("socks4_connections_closed_total{reason=\"resolve_failed\"}", 1.0),
        ("socks4_relayed_bytes_total{direction=\"up\"}", bytes as f64),
        ("socks4_relayed_bytes_total{direction=\"down\"}", bytes as f64),
        ("socks4_handshake_duration_seconds_count", 5.0),
        ("socks4_connect_duration_seconds_count", 3.0),
        ("socks4_resolve_duration_seconds_count", 1.0),
        ("socks4_resolve_failures_total", 1.0),
        ("socks4_accept_errors_total", 0.0),
    ];
    for &(series, want) in expected {
        let got = moved(series);
        if got != want {
            return Err(Failure::new(format!("{series} moved by {got}, not {want}:\n{text}")));
        }
    }
    for (series, value) in &after {
        if series.starts_with("socks4_active_connections{") && *value != 0.0 {
            return Err(Failure::new(format!("{series} is {value} with every connection closed")));
        }
    }
    match promtool_check(&text)? {
        None => Ok(Outcome::Pass),
        Some(why) => Ok(Outcome::Skip(why)),
    }
}

/// Idle sockets do not take the probes down, on `binary` with `--metrics`: 50 connections to the
/// metrics endpoint from 127.0.0.7 that send nothing, re-opened as soon as it closes them, while 10 probes of
/// `/healthz` and `/readyz` (one with bare-LF line ends) a tenth of a second apart are each
/// answered 200 within a second.
///
/// # Errors
/// What went wrong.
pub fn healthz_beside_idle_sockets(binary: &Path) -> Result<Outcome, Failure> {
    let WithMetrics { server, metrics, .. } =
        start_with_metrics(binary, &["--listen", "127.0.0.1:0", "--allow", "any"])?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = std::thread::spawn({
        let stop = std::sync::Arc::clone(&stop);
        move || {
            // From another address than the probes' (127.0.0.1), as an attacker's would be.
            let open = || {
                let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
                socket.bind(&SocketAddr::from(([127, 0, 0, 7], 0)).into()).ok()?;
                socket.connect_timeout(&metrics.into(), Duration::from_secs(1)).ok()?;
                let s = TcpStream::from(socket);
                s.set_nonblocking(true).ok().map(|()| s)
            };
            let mut idle: Vec<Option<TcpStream>> = (0..50).map(|_| open()).collect();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for s in &mut idle {
                    let closed = s.as_mut().is_none_or(|s| match s.read(&mut [0u8; 1]) {
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        Ok(_) => true,
                    });
                    if closed {
                        *s = open();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut failed = None;
    for i in 0..10 {
        let started = std::time::Instant::now();
        let answer = if i == 5 {
            let mut s = TcpStream::connect_timeout(&metrics, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /healthz HTTP/1.0\n\n")?;
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| Failure::new(format!("{answer:?}")))
        } else {
            http_get(metrics, if i % 2 == 0 { "/healthz" } else { "/readyz" }).map(|(status, _)| status)
        };
        match answer {
            Ok(200) if started.elapsed() < Duration::from_secs(1) => {}
            other => {
                failed = Some(format!("probe {i} beside 50 idle sockets: {other:?} after {:?}", started.elapsed()));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = flood.join();
    drop(server);
    failed.map_or(Ok(Outcome::Pass), |why| Err(Failure::new(why)))
}

/// `/readyz` through a drain, on `binary` with `--metrics` and a 10 s grace period: 200 while
/// serving; after SIGTERM, with a relay still open, 503 within 2 s while `/healthz` stays 200 and
/// the relay still carries bytes; the process exits once the relay ends.
///
/// # Errors
/// What went wrong.
pub fn readyz_while_draining(binary: &Path) -> Result<Outcome, Failure> {
    let args = ["--listen", "127.0.0.1:0", "--allow", "any", "--shutdown-grace", "10s"];
    let WithMetrics { mut server, proxy, metrics, .. } = start_with_metrics(binary, &args)?;
    let target = echo_target()?;
    for path in ["/readyz", "/healthz"] {
        let (status, body) = http_get(metrics, path)?;
        if status != 200 {
            return Err(Failure::new(format!("GET {path} before the drain: {status} {body}")));
        }
    }
    let (code, mut relay) = connect_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), b"drain")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("CONNECT: reply {code}, not 90")));
    }
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
    if !killed.success() {
        return Err(Failure::new(format!("kill -TERM {pid}: {killed}")));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, _) = http_get(metrics, "/readyz")?;
        if status == 503 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!("/readyz still {status} 2 s after SIGTERM")));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = http_get(metrics, "/healthz")?;
    if status != 200 {
        return Err(Failure::new(format!("/healthz during the drain: {status}, not 200")));
    }
    relay.write_all(b"still flowing")?;
    let mut echo = [0u8; 13];
    relay.read_exact(&mut echo)?;
    if &echo != b"still flowing" {
        return Err(Failure::new("the relay did not carry bytes during the drain"));
    }
    drop(relay);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.0.try_wait()?.is_none() {
        if Instant::now() > deadline {
            return Err(Failure::new("the server did not exit within 5 s of its last relay ending"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(Outcome::Pass)
}

/// `--log-format json` through `binary`: every log line is a JSON object; a CONNECT with the user
/// id `x y` gives a `conn` object with the text line's fields (the user still escaped, numbers as
/// numbers, `worker` and `reply` 90).
///
/// # Errors
/// What went wrong.
pub fn json_log_lines(binary: &Path) -> Result<Outcome, Failure> {
    let args = ["--listen", "127.0.0.1:0", "--allow", "any", "--log-format", "json"];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    let target = echo_target()?;
    let (code, mut s) = connect_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), b"x y")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("CONNECT: reply {code}, not 90")));
    }
    s.write_all(b"json")?;
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)?;
    drop(s);
    let line = line_with(&lines, "\"message\":\"conn\"", &mut seen)?;
    drop(server);
    for l in seen.iter().chain([&line]) {
        if serde_json::from_str::<serde_json::Value>(l).map_or(true, |v| !v.is_object()) {
            return Err(Failure::new(format!("a log line that is not a JSON object: {l}")));
        }
    }
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Failure::new(format!("{e}: {line}")))?;
    let want = serde_json::json!({
        "level": "INFO",
        "cmd": "CONNECT",
        "dest": target.addr().to_string(),
        "user": "x\\x20y",
        "result": "ok",
        "up": 4,
        "down": 4,
        "reply": 90,
    });
    for (key, value) in want.as_object().into_iter().flatten() {
        if v.get(key) != Some(value) {
            return Err(Failure::new(format!("{key}: {:?}, not {value}, in {line}", v.get(key))));
        }
    }
    for key in ["client", "ms", "worker", "timestamp"] {
        if v.get(key).is_none() {
            return Err(Failure::new(format!("no {key} in {line}")));
        }
    }
    if !v["ms"].is_u64() || !v["worker"].is_u64() {
        return Err(Failure::new(format!("ms and worker are not numbers in {line}")));
    }
    Ok(Outcome::Pass)
}
