//! Checks of users-file authentication under attack, against an adapter's binary started with
//! `--users FILE` (tokens hashed by the binary's own `hash-token`, the default Argon2 parameters:
//! 19 MiB, about 20 ms a check).
//!
//! - [`users_memory_bounded`]: hundreds of wrong tokens keep the server's peak RSS within its
//!   verification threads' buffers (threads × 19 MiB) plus slack;
//! - [`users_flood_fairness`]: one address flooding wrong tokens gets "busy" (91) at once past its
//!   share, while first-time logins from other addresses, a SOCKS4a lookup and, after a reload,
//!   both the users verified before and new ones are served;
//! - [`users_burst`]: 200 simultaneous connections of one valid user id are all granted.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{Server, echo_target, start};
use crate::caps::connect_from;
use crate::scenarios::{Failure, Outcome};
use crate::wire;

/// The Argon2 memory of a `hash-token` hash (19 MiB), in KiB.
const M_COST_KIB: u64 = 19 * 1024;

/// `NAME:PHC` for `token`, from `binary hash-token NAME`.
pub(super) fn hash_line(binary: &Path, name: &str, token: &str) -> Result<String, Failure> {
    let mut hasher = Command::new(binary)
        .args(["hash-token", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Failure::new(format!("{} hash-token: {e}", binary.display())))?;
    if let Some(mut stdin) = hasher.stdin.take() {
        stdin.write_all(token.as_bytes())?;
    }
    let out = hasher.wait_with_output()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !line.starts_with(&format!("{name}:$argon2id$")) {
        return Err(Failure::new(format!("hash-token printed {line:?} ({})", out.status)));
    }
    Ok(line)
}

/// A users file of `users` (name, token), removed when dropped.
struct UsersFile(PathBuf);

impl UsersFile {
    fn write(binary: &Path, tag: &str, users: &[(String, String)]) -> Result<Self, Failure> {
        let lines: Result<Vec<String>, Failure> = users.iter().map(|(n, t)| hash_line(binary, n, t)).collect();
        let path = std::env::temp_dir().join(format!("socks4-auth-{tag}-{}", std::process::id()));
        std::fs::write(&path, lines?.join("\n") + "\n")?;
        Ok(Self(path))
    }

    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for UsersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(server: &Server, field: &str) -> Result<u64, Failure> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| Failure::new(format!("no {field} in /proc/PID/status")))
}

/// The verification threads the server runs: one per CPU, at most 4 (as `Verifier::new`).
fn verify_threads() -> u64 {
    thread::available_parallelism().map_or(1, |n| n.get()).min(4) as u64
}

/// The reply code to a CONNECT with `user` from `source`, or `None` if there was none.
fn reply_code(source: Ipv4Addr, proxy: SocketAddr, target: SocketAddrV4, user: &[u8]) -> Option<u8> {
    connect_from(source, proxy, target, user).ok().map(|(code, _)| code)
}

/// Replies seen by a flood.
#[derive(Default)]
struct Counts {
    refused: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
}

/// Floods `proxy` from the `sources` with wrong tokens for `name` (one thread per entry, each
/// with [`DEPTH`] requests in flight: sent together, then their replies read) until `stop`;
/// counts the replies.
fn flood(
    proxy: SocketAddr,
    target: SocketAddrV4,
    sources: Vec<Ipv4Addr>,
    name: &'static str,
    stop: &Arc<AtomicBool>,
    counts: &Arc<Counts>,
) -> Vec<thread::JoinHandle<()>> {
    sources
        .into_iter()
        .enumerate()
        .map(|(t, source)| {
            let (stop, counts) = (Arc::clone(stop), Arc::clone(counts));
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sent: Vec<TcpStream> = (0..DEPTH)
                        .filter_map(|_| {
                            i += 1;
                            send(source, proxy, &wire::connect(target, format!("{name}:guess-{t}-{i}").as_bytes()))
                        })
                        .collect();
                    for mut s in sent {
                        let mut reply = [0u8; 8];
                        let counter = match s.read_exact(&mut reply).map(|()| reply[1]) {
                            Ok(93) => &counts.refused,
                            Ok(91) => &counts.busy,
                            _ => &counts.other,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

/// Requests in flight per flooding thread.
const DEPTH: usize = 8;

/// Connects from `source` and sends `request`; the stream, with a read timeout.
fn send(source: Ipv4Addr, proxy: SocketAddr, request: &[u8]) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5)).ok()?;
    let mut s = TcpStream::from(socket);
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    s.write_all(request).ok()?;
    Some(s)
}

/// Memory under a flood of wrong tokens: 16 threads from 16 addresses send `alice:RANDOM` (8
/// requests in flight each) until
/// at least 300 checks failed (93); the server's peak RSS (`VmHWM`) must stay within its RSS
/// before the flood + threads × 19 MiB + 32 MiB. (Before: a freed 19 MiB array per check, and
/// the blocking pools' dozens of threads, took tokio to gigabytes, kept.)
///
/// # Errors
/// What went wrong.
pub fn users_memory_bounded(binary: &Path) -> Result<Outcome, Failure> {
    if !Path::new("/proc/self/status").exists() {
        return Ok(Outcome::Skip("no /proc/PID/status to read the RSS from".into()));
    }
    let file = UsersFile::write(binary, "memory", &[("alice".into(), "alice-token-0123456789".into())])?;
    let (server, _lines, proxy, _seen) =
        start(binary, &["--listen", "127.0.0.1:0", "--allow", "any", "--users", &file.arg()])?;
    let target = echo_target()?;
    let before = status_kib(&server, "VmRSS")?;
    let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(Counts::default()));
    let sources = (0..16).map(|i| Ipv4Addr::new(127, 0, 3, 1 + i)).collect();
    let threads = flood(proxy, target.addr(), sources, "alice", &stop, &counts);
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts.refused.load(Ordering::Relaxed) < 300 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let (peak, after) = (status_kib(&server, "VmHWM")?, status_kib(&server, "VmRSS")?);
    let refused = counts.refused.load(Ordering::Relaxed);
    drop(server);
    let bound = before + verify_threads() * M_COST_KIB + 32 * 1024;
    let what = format!(
        "{refused} failed checks ({} busy): RSS {} MiB before, {} MiB after, peak {} MiB; bound {} MiB ({} threads × 19 MiB + 32)",
        counts.busy.load(Ordering::Relaxed),
        before >> 10,
        after >> 10,
        peak >> 10,
        bound >> 10,
        verify_threads()
    );
    if refused < 300 {
        return Err(Failure::new(format!("too few checks in 60 s: {what}")));
    }
    if peak > bound {
        return Err(Failure::new(format!("memory not bounded: {what}")));
    }
    println!("{what}");
    Ok(Outcome::Pass)
}

/// Fairness under a flood: 32 threads from one address send `u0:RANDOM` as fast as they can,
/// 256 requests in flight (more than the places).
/// Meanwhile 10 first-time logins (`uN:TOKEN`, each from its own address, at once) are all
/// granted, a SOCKS4a CONNECT to `localhost` is granted within 3 s, and the flooder is told
/// "busy" (91) at once past its share. Then `SIGHUP` (the same file) under the flood: the 10
/// users are still granted and 10 more first-time logins too.
///
/// # Errors
/// What went wrong.
pub fn users_flood_fairness(binary: &Path) -> Result<Outcome, Failure> {
    let users: Vec<(String, String)> = (0..21).map(|i| (format!("u{i}"), format!("token-of-user-{i}-xyz"))).collect();
    let file = UsersFile::write(binary, "fair", &users)?;
    let (server, lines, proxy, mut seen) =
        start(binary, &["--listen", "127.0.0.1:0", "--allow", "any", "--users", &file.arg()])?;
    let target = echo_target()?;
    let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(Counts::default()));
    let threads = flood(proxy, target.addr(), vec![Ipv4Addr::new(127, 0, 4, 1); 32], "u0", &stop, &counts);
    thread::sleep(Duration::from_secs(1));
    let result = (|| {
        logins(proxy, target.addr(), &users[1..11], "first-time login under a flood")?;
        let started = Instant::now();
        let user = format!("{}:{}", users[1].0, users[1].1);
        let (code, _s) = connect_4a(Ipv4Addr::new(127, 0, 4, 2), proxy, target.addr().port(), user.as_bytes())?;
        if code != wire::GRANTED || started.elapsed() > Duration::from_secs(3) {
            return Err(Failure::new(format!(
                "SOCKS4a CONNECT to localhost under a flood: reply {code} after {:?}",
                started.elapsed()
            )));
        }
        super::ops::signal(&server, "HUP")?;
        super::line_with(&lines, "config reloaded", &mut seen)?;
        seen.clear();
        logins(proxy, target.addr(), &users[1..11], "login verified before a reload, under a flood")?;
        logins(proxy, target.addr(), &users[11..21], "first-time login after a reload, under a flood")
    })();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(server);
    result?;
    let (busy, refused) = (counts.busy.load(Ordering::Relaxed), counts.refused.load(Ordering::Relaxed));
    if busy == 0 {
        return Err(Failure::new(format!(
            "the flooder got no busy reply (91) ({refused} refused): its checks are not bounded"
        )));
    }
    println!("flood: {refused} refused (93), {busy} busy (91), {} other", counts.other.load(Ordering::Relaxed));
    Ok(Outcome::Pass)
}

/// Each user logs in at once from its own address (127.0.5.N): all must be granted.
fn logins(proxy: SocketAddr, target: SocketAddrV4, users: &[(String, String)], what: &str) -> Result<(), Failure> {
    let handles: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, (name, token))| {
            let user = format!("{name}:{token}");
            let source = Ipv4Addr::new(127, 0, 5, 1 + i as u8);
            thread::spawn(move || reply_code(source, proxy, target, user.as_bytes()))
        })
        .collect();
    let codes: Vec<Option<u8>> = handles.into_iter().map(|h| h.join().unwrap_or(None)).collect();
    if codes.iter().all(|c| *c == Some(wire::GRANTED)) {
        Ok(())
    } else {
        Err(Failure::new(format!("{what}: replies {codes:?}, not all 90")))
    }
}

/// A SOCKS4a CONNECT to `localhost:port` from `source` with `user`; the reply code and stream.
fn connect_4a(source: Ipv4Addr, proxy: SocketAddr, port: u16, user: &[u8]) -> Result<(u8, TcpStream), Failure> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
    let mut s = TcpStream::from(socket);
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(&wire::connect_host("localhost", port, user))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    Ok((reply[1], s))
}

/// A burst of one valid user: 200 connections of `alice:TOKEN` at once (her first), all granted
/// with one check (the others wait for its verdict, not for a place).
///
/// # Errors
/// What went wrong.
pub fn users_burst(binary: &Path) -> Result<Outcome, Failure> {
    let token = "alice-burst-token-0123456789";
    let file = UsersFile::write(binary, "burst", &[("alice".into(), token.into())])?;
    let (server, lines, proxy, _seen) =
        start(binary, &["--listen", "127.0.0.1:0", "--allow", "any", "--users", &file.arg()])?;
    let echo = echo_target()?;
    let target = echo.addr();
    // All connected first, then the 200 requests written back to back, then the replies read.
    let mut conns = Vec::new();
    for i in 0..200u8 {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 6, 1 + i % 4), 0)).into())?;
        socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
        let s = TcpStream::from(socket);
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        conns.push(s);
    }
    let request = wire::connect(target, format!("alice:{token}").as_bytes());
    for s in &mut conns {
        s.write_all(&request)?;
    }
    let codes: Vec<Option<u8>> = conns
        .iter_mut()
        .map(|s| {
            let mut reply = [0u8; 8];
            s.read_exact(&mut reply).ok().map(|()| reply[1])
        })
        .collect();
    drop(server);
    let granted = codes.iter().filter(|c| **c == Some(wire::GRANTED)).count();
    let busy = codes.iter().filter(|c| **c == Some(91)).count();
    if granted != 200 {
        let log: Vec<String> = lines.try_iter().take(5).collect();
        return Err(Failure::new(format!(
            "200 connections of alice at once: {granted} granted, {busy} busy (91); log: {log:#?}"
        )));
    }
    Ok(Outcome::Pass)
}
