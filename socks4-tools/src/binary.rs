//! Checks run against an adapter's server binary, the way an operator starts it: the same command
//! line must give the same behaviour, and the same event the same words in the log, on every
//! adapter.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::caps::{self, connect_from};
use crate::scenarios::{Ctx, Failure, Outcome, Profile, find};
use crate::targets::EchoTarget;
use crate::wire;

mod auth;
mod egress;
pub use auth::{users_burst, users_flood_fairness, users_memory_bounded};
pub use egress::{
    keepalive_on_relayed_sockets, outgoing_parent_and_reload, outgoing_refused_at_start, outgoing_rotation,
    outgoing_same_same, warn_unsafe_socks,
};
mod operations;
mod ops;
pub use operations::{healthz_beside_idle_sockets, json_log_lines, metrics_count_what_was_sent, readyz_while_draining};
mod names;
mod netns;
pub use names::{happy_eyeballs, own_resolver};
pub use netns::rejected_reply_survives_loss;
mod proxy;
pub use proxy::{proxy_protocol, proxy_reentry};

/// How long the server may take to start, and to write a connection's log line.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The server process; killed when dropped.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a log line containing `needle`; returns it.
pub(crate) fn line_with(lines: &Receiver<String>, needle: &str, seen: &mut Vec<String>) -> Result<String, Failure> {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => {
                return Err(Failure::new(format!(
                    "no log line with {needle:?} within {LOG_TIMEOUT:?}; log: {seen:#?}"
                )));
            }
        }
    }
}

/// Starts `binary` with `args` and `--log-level info`; returns the process, its log lines, the
/// address it listens on and the lines seen so far.
pub(crate) fn start(
    binary: &Path,
    args: &[&str],
) -> Result<(Server, Receiver<String>, SocketAddr, Vec<String>), Failure> {
    let mut command = Command::new(binary);
    command.args(args);
    start_command(command)
}

/// Like [`start`], for a command set up by the caller (a wrapper, environment variables).
fn start_command(command: Command) -> Result<(Server, Receiver<String>, SocketAddr, Vec<String>), Failure> {
    let (server, lines) = spawn_logged(command)?;
    let mut seen = Vec::new();
    let listening = line_with(&lines, "listening on ", &mut seen)?;
    let proxy = operations::address_after(&listening, "listening on ")?;
    Ok((server, lines, proxy, seen))
}

/// Starts `command` with `--log-level info`; returns the process and its log lines.
fn spawn_logged(mut command: Command) -> Result<(Server, Receiver<String>), Failure> {
    let mut child = command
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::new(format!("starting {:?}: {e}", command.get_program())))?;
    let stderr = child.stderr.take();
    let server = Server(child);
    let (tx, lines) = mpsc::channel();
    if let Some(stderr) = stderr {
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Ok((server, lines))
}

/// Starts `binary` with `--listen [::ffff:127.0.0.1]:0` (an IPv4-mapped address, which every
/// adapter must bind as `127.0.0.1`), runs the `upstream_reset_reaches_client` scenario through it
/// and checks the connection's log line: `result=upstream reset up=1 down=1048576`.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn mapped_listen_and_reset_words(binary: &Path) -> Result<Outcome, Failure> {
    let (server, lines, proxy, mut seen) = start(binary, &["--listen", "[::ffff:127.0.0.1]:0"])?;
    if !proxy.is_ipv4() || !proxy.ip().is_loopback() {
        return Err(Failure::new(format!("--listen [::ffff:127.0.0.1]:0 listens on {proxy}, not 127.0.0.1")));
    }
    let scenario = find("upstream_reset_reaches_client").ok_or_else(|| Failure::new("no reset scenario"))?;
    match scenario.run_catching(&Ctx { proxy, profile: Profile::default() })? {
        Outcome::Pass => {}
        Outcome::Skip(why) => return Err(Failure::new(format!("the reset scenario skipped: {why}"))),
    }
    let line = line_with(&lines, "conn client=", &mut seen)?;
    drop(server);
    if !line.contains("result=upstream reset up=1 down=1048576 ") {
        return Err(Failure::new(format!("log line {line:?} does not say `result=upstream reset up=1 down=1048576`")));
    }
    Ok(Outcome::Pass)
}

/// The identd the ident check asks: one already listening on 127.0.0.1:113, or Debian's `oidentd`
/// started here on 127.0.0.1 only (killed when dropped).
struct Identd {
    child: Option<Child>,
    /// Whether this check started it bound to 127.0.0.1 alone (so 127.0.0.2:113 refuses).
    loopback_only: bool,
}

impl Drop for Identd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn identd_listening() -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], 113)), Duration::from_secs(1)).is_ok()
}

/// An identd on 127.0.0.1:113, or why there is none.
fn identd() -> Result<Identd, String> {
    if identd_listening() {
        return Ok(Identd { child: None, loopback_only: false });
    }
    let child = Command::new("oidentd")
        .args(["-i", "-S", "-q", "-a", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start oidentd ({e}); install it with `apt-get install oidentd`"))?;
    let identd = Identd { child: Some(child), loopback_only: true };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !identd_listening() {
        if Instant::now() > deadline {
            return Err("oidentd did not listen on 127.0.0.1:113 (port 113 needs root)".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(identd)
}

/// Ident (RFC 1413) through `binary` with the rule `allow from 127.0.0.0/8 ident`, against a real
/// identd (Debian's `oidentd`, started here if none listens on 127.0.0.1:113): the user id identd
/// reports for this process gets 90 and a working relay, another user id 93, and a client whose
/// host runs no identd (127.0.0.2, when the check started oidentd on 127.0.0.1 alone) 92; the log
/// lines name why. Skips when no identd can be had, unless `SOCKS4_REQUIRE_IDENTD` is set.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn ident_rules(binary: &Path) -> Result<Outcome, Failure> {
    let identd = match identd() {
        Ok(identd) => identd,
        Err(why) if std::env::var_os("SOCKS4_REQUIRE_IDENTD").is_none() => return Ok(Outcome::Skip(why)),
        Err(why) => return Err(Failure::new(why)),
    };
    let me = Command::new("id").arg("-un").output().map_err(|e| Failure::new(format!("id -un: {e}")))?;
    let me = String::from_utf8_lossy(&me.stdout).trim().to_owned();
    let args = ["--listen", "127.0.0.1:0", "--allow", "from 127.0.0.0/8 ident", "--ident-timeout", "5s"];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    let target = EchoTarget::start().map_err(|e| Failure::new(format!("starting the echo target: {e}")))?;
    let localhost = Ipv4Addr::LOCALHOST;

    let (code, mut s) = connect_from(localhost, proxy, target.addr(), me.as_bytes())?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("user {me:?}, which identd confirms: reply {code}, not 90; log: {seen:#?}")));
    }
    s.write_all(b"ident ok")?;
    let mut echo = [0u8; 8];
    s.read_exact(&mut echo)?;
    if &echo != b"ident ok" {
        return Err(Failure::new("no echo after an ident grant"));
    }
    drop(s);
    line_with(&lines, &format!("user={me} result=ok"), &mut seen)?;

    let (code, _s) = connect_from(localhost, proxy, target.addr(), b"someone-else")?;
    if code != 93 {
        return Err(Failure::new(format!("a user id identd does not confirm: reply {code}, not 93")));
    }
    line_with(&lines, "result=identd names another user", &mut seen)?;

    if identd.loopback_only {
        let (code, _s) = connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy, target.addr(), me.as_bytes())?;
        if code != 92 {
            return Err(Failure::new(format!("a client whose host has no identd: reply {code}, not 92")));
        }
        line_with(&lines, "result=identd ", &mut seen)?;
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// Clients in [`ident_client_leaves`].
const IDENT_CLIENTS: usize = 20;

/// Ident on the event loop: with `allow from 127.0.0.0/8 ident` and `--ident-timeout 20s`,
/// 20 clients from 127.0.0.3, whose identd (this check's own, on 127.0.0.3:113)
/// accepts and never answers, are all asked at once (identd sees every connection within 2 s, not
/// a thread pool's few at a time) with no thread each; when the clients reset, identd sees each
/// of its connections closed within 2 s (the exchange ends with its client, not at the timeout),
/// and the server logs them all. Skips when port 113 cannot be bound (it needs root), unless
/// `SOCKS4_REQUIRE_IDENTD` is set.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn ident_client_leaves(binary: &Path) -> Result<Outcome, Failure> {
    let source = Ipv4Addr::new(127, 0, 0, 3);
    let silent = match std::net::TcpListener::bind((source, 113)) {
        Ok(listener) => listener,
        Err(e) if std::env::var_os("SOCKS4_REQUIRE_IDENTD").is_none() => {
            return Ok(Outcome::Skip(format!("cannot listen on {source}:113 ({e}; it needs root)")));
        }
        Err(e) => return Err(Failure::new(format!("listening on {source}:113: {e}"))),
    };
    let (tx, accepted) = mpsc::channel();
    thread::spawn(move || {
        for conn in silent.incoming().take(IDENT_CLIENTS) {
            if conn.map(|c| tx.send(c)).is_err() {
                return;
            }
        }
    });
    let rules = ["--allow", "from 127.0.0.1", "--allow", "from 127.0.0.0/8 ident"];
    let args = [&["--listen", "127.0.0.1:0", "--ident-timeout", "20s"][..], &rules].concat();
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    let target = echo_target()?;
    // A served SOCKS4a request first (from 127.0.0.1, no ident), so that the threads a server
    // starts on first use (its resolver's) count in the baseline.
    let code = crate::chain::reply_code(proxy, &wire::connect_host("localhost", target.addr().port(), b""))?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("a request without ident: reply {code}")));
    }
    let Some(before) = thread_count(&server) else { return Ok(Outcome::Skip("no /proc/PID/status".into())) };
    let mut clients = Vec::new();
    for _ in 0..IDENT_CLIENTS {
        let mut client = silent_from(source, proxy)?;
        client.write_all(&wire::connect(target.addr(), b"someone"))?;
        clients.push(client);
    }
    let mut at_identd = Vec::new();
    for _ in 0..IDENT_CLIENTS {
        match accepted.recv_timeout(Duration::from_secs(2)) {
            Ok(conn) => at_identd.push(conn),
            Err(_) => {
                return Err(Failure::new(format!(
                    "{} of {IDENT_CLIENTS} ident queries reached identd within 2 s",
                    at_identd.len()
                )));
            }
        }
    }
    let during = thread_count(&server).unwrap_or(usize::MAX);
    if during > before + IDENT_CLIENTS / 4 {
        return Err(Failure::new(format!("{IDENT_CLIENTS} ident queries waiting: {before} threads became {during}")));
    }
    // Each query arrives (a line), then, once the clients left, the end of its connection (end of
    // file or a reset), not the read timeout.
    for conn in &mut at_identd {
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut query = Vec::new();
        while !query.ends_with(b"\n") && query.len() < 64 {
            let mut byte = [0u8; 1];
            match conn.read(&mut byte) {
                Ok(1) => query.push(byte[0]),
                _ => {
                    return Err(Failure::new(format!(
                        "identd got {:?}, not a query line",
                        String::from_utf8_lossy(&query)
                    )));
                }
            }
        }
    }
    clients.into_iter().for_each(crate::targets::reset);
    for mut conn in at_identd {
        if let Err(e) = conn.read(&mut [0u8; 64])
            && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        {
            return Err(Failure::new("a client left; its identd connection stays open"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let logged = |seen: &[String]| seen.iter().filter(|l| l.contains("conn client=127.0.0.3:")).count();
    while logged(&seen) < IDENT_CLIENTS {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => {
                return Err(Failure::new(format!("{} of {IDENT_CLIENTS} lines within 2 s: {seen:#?}", logged(&seen))));
            }
        }
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// The number of threads of `server` (`Threads:` in `/proc/PID/status`), where there is `/proc`.
pub(crate) fn thread_count(server: &Server) -> Option<usize> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

/// A connection from `source` to `proxy` that sends nothing (a client still in its handshake).
fn silent_from(source: Ipv4Addr, proxy: SocketAddr) -> Result<TcpStream, Failure> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
    Ok(TcpStream::from(socket))
}

/// Is `s` closed by the server within `within` (end of file or reset, no bytes)?
fn closed_at_once(s: &mut TcpStream, within: Duration) -> Result<bool, Failure> {
    s.set_read_timeout(Some(within))?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(false),
        Err(_) => Ok(true),
    }
}

/// A full CONNECT and echo from `source` through `proxy`.
fn served_from(source: Ipv4Addr, proxy: SocketAddr, target: SocketAddrV4, what: &str) -> Result<(), Failure> {
    let (code, mut s) = connect_from(source, proxy, target, b"user")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("{what}: reply {code}, not 90")));
    }
    s.write_all(b"ping")?;
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)?;
    if &echo != b"ping" { Err(Failure::new(format!("{what}: no echo"))) } else { Ok(()) }
}

pub(crate) fn echo_target() -> Result<EchoTarget, Failure> {
    EchoTarget::start().map_err(|e| Failure::new(format!("starting the echo target: {e}")))
}

/// Per-client limits through `binary` started with `--max-per-client 3 --max-handshakes 6`: a
/// fourth connection from one address is closed at once while another address is still served;
/// six silent connections in their handshake (from several addresses) make a seventh client's
/// connection close at once, and it is served again once they leave.
///
/// # Errors
/// What went wrong.
pub fn per_client_limits(binary: &Path) -> Result<Outcome, Failure> {
    let args = ["--listen", "127.0.0.1:0", "--allow", "any", "--max-per-client", "3", "--max-handshakes", "6"];
    let (server, _lines, proxy, _seen) = start(binary, &args)?;
    let target = echo_target()?;
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let held: Vec<TcpStream> = (0..3).map(|_| silent_from(one, proxy)).collect::<Result<_, _>>()?;
    thread::sleep(Duration::from_millis(200)); // let the server admit them
    let mut fourth = silent_from(one, proxy)?;
    if !closed_at_once(&mut fourth, Duration::from_secs(2))? {
        return Err(Failure::new("a 4th connection from one address (limit 3) was not closed at once"));
    }
    served_from(Ipv4Addr::new(127, 0, 0, 2), proxy, target.addr(), "another address while one is at its limit")?;
    let more: Vec<TcpStream> =
        (3..6).map(|i| silent_from(Ipv4Addr::new(127, 0, 0, i), proxy)).collect::<Result<_, _>>()?;
    thread::sleep(Duration::from_millis(200));
    let mut seventh = silent_from(Ipv4Addr::new(127, 0, 0, 7), proxy)?;
    if !closed_at_once(&mut seventh, Duration::from_secs(2))? {
        return Err(Failure::new("a 7th connection in the handshake (cap 6) was not closed at once"));
    }
    drop((held, more));
    thread::sleep(Duration::from_millis(300)); // the server sees the closes
    served_from(Ipv4Addr::new(127, 0, 0, 7), proxy, target.addr(), "a client once the silent ones left")?;
    drop(server);
    Ok(Outcome::Pass)
}

/// How many silent sockets [`default_limits_one_address`] opens from one address: more than the
/// default handshake cap (1,024).
const SILENT_FLOOD: usize = 1_100;

/// The default limits keep one address from locking everyone out: `binary` started with no limit
/// option; 1,100 connections from 127.0.0.1 that send nothing (more than the server-wide handshake
/// cap) are held open while a client from 127.0.0.2 is served, and the refusal summary names
/// `per-client-handshakes` and 127.0.0.1. Raises the soft fd limit (the server inherits it).
///
/// # Errors
/// What went wrong.
pub fn default_limits_one_address(binary: &Path) -> Result<Outcome, Failure> {
    crate::scenarios::raise_fd_limit();
    let (server, lines, proxy, mut seen) = start(binary, &["--listen", "127.0.0.1:0", "--allow", "any"])?;
    let target = echo_target()?;
    let flood = Ipv4Addr::LOCALHOST;
    let mut held = Vec::with_capacity(SILENT_FLOOD);
    for i in 0..SILENT_FLOOD {
        match silent_from(flood, proxy) {
            Ok(s) => held.push(s),
            Err(e) => return Err(Failure::new(format!("silent connection {i}: {e} (fd limit?)"))),
        }
    }
    thread::sleep(Duration::from_millis(300)); // let the server admit or refuse them all
    served_from(Ipv4Addr::new(127, 0, 0, 2), proxy, target.addr(), "another address during a silent flood")?;
    line_with(&lines, "per-client-handshakes (top: 127.0.0.1)", &mut seen)?;
    drop((held, server));
    Ok(Outcome::Pass)
}

/// BIND clients that leave while waiting for their peer free everything at once, through
/// `binary` started with `--max-connections 8 --bind-timeout 60s`: 20 BINDs whose clients close
/// right after the first reply (each served within 2 s, while the server notices the last one
/// left); 1 s later no listening port accepts, the log says
/// `client gone during handshake`, and a CONNECT is still served (leaked slots would refuse it).
///
/// # Errors
/// What went wrong.
pub fn bind_client_leaves(binary: &Path) -> Result<Outcome, Failure> {
    let args = ["--listen", "127.0.0.1:0", "--allow", "any", "--max-connections", "8", "--bind-timeout", "60s"];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    let target = echo_target()?;
    let mut ports = Vec::new();
    for i in 0..20 {
        // The server frees a slot when it sees the last client's FIN, a moment after our close: at
        // the limit a connection may find the slot not yet freed and be closed at once. Retried
        // for up to 2 s; a leaked slot stays taken for the 60 s BIND timeout, which this still fails.
        let retry_until = Instant::now() + Duration::from_secs(2);
        let reply = loop {
            let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&wire::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 21), b"binder"))?;
            let mut reply = [0u8; 8];
            match s.read_exact(&mut reply) {
                Ok(()) => break reply,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset)
                        && Instant::now() < retry_until =>
                {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Failure::new(format!("BIND {i}: first reply: {e}"))),
            }
        };
        if reply[1] != wire::GRANTED {
            return Err(Failure::new(format!("BIND {i}: first reply {}, not 90", reply[1])));
        }
        ports.push(u16::from_be_bytes([reply[2], reply[3]]));
    }
    // One probe per port, after a wait: a probe that connected would itself be the awaited peer.
    thread::sleep(Duration::from_secs(1));
    for port in ports {
        if TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(1)).is_ok() {
            return Err(Failure::new(format!("port {port} still accepts 1 s after its BIND client left")));
        }
    }
    line_with(&lines, "result=client gone during handshake", &mut seen)?;
    served_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), "CONNECT after 20 abandoned BINDs (limit 8)")?;
    drop(server);
    Ok(Outcome::Pass)
}

/// User authentication through `binary`: `binary hash-token alice` hashes a token read from stdin,
/// the line goes into a users file, and with `--users FILE`: `alice:TOKEN` is served, a wrong
/// token, an unknown user and a user id without a token get 93, and the log never shows the token.
/// A bare token (no `NAME:`) is logged as `user=malformed(len=N)` and `result=auth refused (93)`,
/// in text and with `--log-format json`.
///
/// # Errors
/// What went wrong.
pub fn users_file(binary: &Path) -> Result<Outcome, Failure> {
    let token = "v3ry-s3cret-t0ken-4-tests";
    let line = auth::hash_line(binary, "alice", token)?;
    if line.contains(token) {
        return Err(Failure::new(format!("hash-token printed the token: {line:?}")));
    }
    let file = std::env::temp_dir().join(format!("socks4-users-{}-{}", std::process::id(), line.len()));
    std::fs::write(&file, format!("# test users\n{line}\n"))?;
    let path = file.to_string_lossy().into_owned();
    let started = start(binary, &["--listen", "127.0.0.1:0", "--allow", "any", "--users", &path]);
    let _ = std::fs::remove_file(&file);
    let (server, lines, proxy, mut seen) = started?;
    let target = echo_target()?;
    let good = format!("alice:{token}");
    let (code, mut s) = connect_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), good.as_bytes())?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("alice with her token: reply {code}, not 90")));
    }
    s.write_all(b"auth")?;
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)?;
    drop(s);
    let ok = line_with(&lines, "result=ok", &mut seen)?;
    if ok.contains(token) || !ok.contains("user=alice:***") {
        return Err(Failure::new(format!("the log line shows the token or not `user=alice:***`: {ok}")));
    }
    for user in ["alice:wrong-token", "mallory:v3ry-s3cret-t0ken-4-tests", "alice"] {
        let (code, _s) = connect_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), user.as_bytes())?;
        if code != 93 {
            return Err(Failure::new(format!("user id {user:?}: reply {code}, not 93")));
        }
    }
    // A bare token (no `NAME:`): refused, and logged by its length only, as an auth refusal.
    let bare = "B4re-t0ken-n0-name";
    let (code, _s) = connect_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), bare.as_bytes())?;
    if code != 93 {
        return Err(Failure::new(format!("bare token: reply {code}, not 93")));
    }
    let shown = format!("user=malformed(len={})", bare.len());
    let refusal = line_with(&lines, &format!("{shown} reason=malformed-user-id"), &mut seen)?;
    let conn = line_with(&lines, &format!("{shown} result=auth refused (93)"), &mut seen)?;
    for l in [&refusal, &conn] {
        if l.contains(bare) || !l.contains(&shown) {
            return Err(Failure::new(format!("a bare token's log line shows it, or not `{shown}`: {l}")));
        }
    }
    seen.extend([ok, refusal, conn]);
    drop(server);
    if let Some(l) = seen.iter().find(|l| l.contains(token) || l.contains(bare) || l.contains("denied by rules")) {
        return Err(Failure::new(format!("a token, or `denied by rules` for a refused user id, in the log: {l}")));
    }
    // The same with JSON lines.
    std::fs::write(&file, format!("# test users\n{line}\n"))?;
    let args = ["--listen", "127.0.0.1:0", "--allow", "any", "--log-format", "json", "--users", &path];
    let started = start(binary, &args);
    let _ = std::fs::remove_file(&file);
    let (server, lines, proxy, mut seen) = started?;
    let (code, _s) = connect_from(Ipv4Addr::LOCALHOST, proxy, target.addr(), bare.as_bytes())?;
    let conn = line_with(&lines, "\"message\":\"conn\"", &mut seen)?;
    drop(server);
    let shown = format!("\"user\":\"malformed(len={})\"", bare.len());
    if code != 93 || !conn.contains(&shown) || !conn.contains("auth refused (93)") {
        return Err(Failure::new(format!(
            "JSON: reply {code}; the conn line lacks {shown} or `auth refused (93)`: {conn}"
        )));
    }
    if let Some(l) = seen.iter().chain([&conn]).find(|l| l.contains(bare)) {
        return Err(Failure::new(format!("JSON: the bare token in the log: {l}")));
    }
    Ok(Outcome::Pass)
}

/// Bandwidth caps through `binary` started with [`caps::bandwidth_args`]: see [`caps::bandwidth`]
/// (per connection, per user and per client, both directions, through the relay the binary uses:
/// splice on Linux once a direction streams).
///
/// # Errors
/// What went wrong.
pub fn bandwidth_caps(binary: &Path) -> Result<Outcome, Failure> {
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned(), "--allow".to_owned(), "any".to_owned()];
    args.extend(caps::bandwidth_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, _lines, proxy, _seen) = start(binary, &args)?;
    let outcome = caps::bandwidth(proxy);
    drop(server);
    outcome
}

/// The BIND-wait cap through `binary` started with `--max-bind-waits-per-client 2`: see
/// [`caps::bind_waits`]; the refusal is logged as `per-client-bind-waits` in the refusal summary and
/// `result=bind over the limit` on the connection's line.
///
/// # Errors
/// What went wrong.
pub fn bind_wait_cap(binary: &Path) -> Result<Outcome, Failure> {
    let cap = caps::BIND_WAITS_PER_CLIENT.to_string();
    let args = ["--listen", "127.0.0.1:0", "--allow", "any", "--max-bind-waits-per-client", &cap];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    caps::bind_waits(proxy)?;
    for needle in ["1 per-client-bind-waits (top: 127.0.0.40)", "result=bind over the limit"] {
        if !seen.iter().any(|l| l.contains(needle)) {
            line_with(&lines, needle, &mut seen)?;
        }
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// A check run against an adapter's binary.
pub type Check = fn(&Path) -> Result<Outcome, Failure>;

/// Every check of this module, by name, for [`binary_tests!`](crate::binary_tests).
pub const ALL: &[(&str, Check)] = &[
    ("mapped_listen_and_reset_words", mapped_listen_and_reset_words),
    ("ident_rules", ident_rules),
    ("ident_client_leaves", ident_client_leaves),
    ("per_client_limits", per_client_limits),
    ("default_limits_one_address", default_limits_one_address),
    ("bind_client_leaves", bind_client_leaves),
    ("users_file", users_file),
    ("users_memory_bounded", users_memory_bounded),
    ("users_flood_fairness", users_flood_fairness),
    ("users_burst", users_burst),
    ("bandwidth_caps", bandwidth_caps),
    ("bind_wait_cap", bind_wait_cap),
    // --- Operations: reload, --check-config, systemd. ---
    ("sighup_reload", ops::sighup_reload),
    ("check_config", ops::check_config),
    ("names_itself", ops::names_itself),
    ("route_to_self", ops::route_to_self),
    ("socket_activation", ops::socket_activation),
    ("notify_readiness", ops::notify_readiness),
    ("metrics_count_what_was_sent", metrics_count_what_was_sent),
    ("readyz_while_draining", readyz_while_draining),
    ("shutdown_cut_resets", ops::shutdown_cut_resets),
    ("healthz_beside_idle_sockets", healthz_beside_idle_sockets),
    ("json_log_lines", json_log_lines),
    ("proxy_protocol", proxy_protocol),
    ("proxy_reentry", proxy_reentry),
    ("chain_two_hops", crate::chain::chain_two_hops),
    ("chain_three_hops", crate::chain::chain_three_hops),
    ("chain_failover_and_refusals", crate::chain::chain_failover_and_refusals),
    ("chain_dante_parent", crate::chain::chain_dante_parent),
    ("chain_bind_wait_cap", crate::chain::chain_bind_wait_cap),
    ("chain_numeric_names", crate::chain::chain_numeric_names),
    ("chain_stream_isolation", crate::chain::chain_stream_isolation),
    ("chain_bind_by_name", crate::chain::chain_bind_by_name),
    ("chain_stalled_parent", crate::chain::chain_stalled_parent),
    ("outgoing_rotation", outgoing_rotation),
    ("outgoing_same_same", outgoing_same_same),
    ("outgoing_parent_and_reload", outgoing_parent_and_reload),
    ("outgoing_refused_at_start", outgoing_refused_at_start),
    ("keepalive_on_relayed_sockets", keepalive_on_relayed_sockets),
    ("warn_unsafe_socks", warn_unsafe_socks),
    // --- Names: our own resolver, Happy Eyeballs. ---
    ("own_resolver", own_resolver),
    ("happy_eyeballs", happy_eyeballs),
    // Not in `binary_tests!`: each adapter's tests name it (see the check).
    ("chain_silent_parent", crate::chain::chain_silent_parent),
    ("rejected_reply_survives_loss", rejected_reply_survives_loss),
];

/// The body of a test generated by [`binary_tests!`](crate::binary_tests): runs the check `name`
/// against `binary`, prints the reason of a skip and panics with the message of a failure.
///
/// # Panics
/// If `name` is not a check, or the check fails.
pub fn run_as_test(name: &str, binary: &str) {
    let Some((_, check)) = ALL.iter().find(|(n, _)| *n == name) else {
        panic!("no binary check named {name:?}");
    };
    match check(Path::new(binary)) {
        Ok(Outcome::Pass) => {}
        Ok(Outcome::Skip(why)) => println!("SKIP {name}: {why}"),
        Err(f) => panic!("FAIL {name}: {f}"),
    }
}
