//! Chaining checks run against an adapter's binary (see [`binary`](crate::binary)): chains of our
//! own servers (two and three hops, mixed adapters when their binaries are built), Dante as a
//! parent, a refusing parent and a dead first parent. The shared scenarios run through the chain's
//! first server.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::Duration;

use crate::binary::{Server, echo_target, line_with, start, thread_count};
use crate::caps::connect_from;
use crate::scenarios::{Ctx, Failure, Outcome, Profile, find};
use crate::wire;

/// The adapters' binaries, in the order a mixed chain uses them after the one under test.
const ADAPTERS: [&str; 3] = ["socks4-tokio", "socks4-std", "socks4-smol"];

/// The scenarios run through every chain: early data, half-close both ways and BIND among them.
const THROUGH_CHAIN: &[&str] = &[
    "connect_basic",
    "connect_4a_localhost",
    "early_data",
    "half_close_client_first",
    "half_close_target_first",
    "upstream_reset_reaches_client",
    "client_reset_reaches_upstream",
    "bulk_both_ways",
    "urgent_data_both_ways",
    "bind_basic",
    "bind_wrong_peer",
    "bind_client_leaves",
];

/// A started server: the process, its log lines, its address and the lines seen so far.
struct Hop {
    _server: Server,
    lines: Receiver<String>,
    addr: SocketAddr,
    seen: Vec<String>,
}

impl Hop {
    /// Starts `binary` with `rules` in order: `--deny` for those that start with `deny `, an
    /// option with its value for those that start with `--` (`--max-bind-waits 1`), `--allow` for
    /// the others.
    fn start(binary: &Path, rules: &[String]) -> Result<Self, Failure> {
        let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned(), "--connect-timeout".into(), "3s".into()];
        for rule in rules {
            match (rule.strip_prefix("deny "), rule.starts_with("--").then(|| rule.split_once(' ')).flatten()) {
                (_, Some((option, value))) => args.extend([option.to_owned(), value.to_owned()]),
                (Some(deny), None) => args.extend(["--deny".to_owned(), deny.to_owned()]),
                (None, None) => args.extend(["--allow".to_owned(), rule.clone()]),
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (server, lines, addr, seen) = start(binary, &args)?;
        Ok(Self { _server: server, lines, addr, seen })
    }

    /// A log line containing every one of `needles`, seen already or waited for.
    fn line(&mut self, needles: &[&str]) -> Result<String, Failure> {
        if let Some(i) = self.seen.iter().position(|l| needles.iter().all(|n| l.contains(n))) {
            return Ok(self.seen.remove(i));
        }
        loop {
            let line = line_with(&self.lines, needles[0], &mut self.seen)?;
            if needles.iter().all(|n| line.contains(n)) {
                return Ok(line);
            }
            self.seen.push(line);
        }
    }
}

/// The binary of adapter `name` next to `binary` (cargo builds every member's binaries into one
/// directory for `cargo test --workspace`), or `binary` itself when it is not built.
fn sibling(binary: &Path, name: &str) -> PathBuf {
    let path = binary.with_file_name(name);
    if path.exists() { path } else { binary.to_path_buf() }
}

/// `binary` first, then the other adapters' binaries in [`ADAPTERS`] order (where built).
fn mixed(binary: &Path) -> Vec<PathBuf> {
    let me = binary.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let start = ADAPTERS.iter().position(|a| *a == me).unwrap_or(0);
    (0..3).map(|i| sibling(binary, ADAPTERS[(start + i) % 3])).collect()
}

/// Runs [`THROUGH_CHAIN`] through `proxy`.
fn scenarios_through(proxy: SocketAddr, what: &str) -> Result<(), Failure> {
    let profile = Profile { bulk_bytes: 8 << 20, ..Profile::default() };
    for name in THROUGH_CHAIN {
        let scenario = find(name).ok_or_else(|| Failure::new(format!("no scenario {name}")))?;
        match scenario.run_catching(&Ctx { proxy, profile: profile.clone() }) {
            Ok(Outcome::Pass) => {}
            Ok(Outcome::Skip(why)) => return Err(Failure::new(format!("{what}: {name} skipped: {why}"))),
            Err(f) => return Err(Failure::new(format!("{what}: {name}: {f}"))),
        }
    }
    Ok(())
}

/// Sends `request` through `proxy`; returns the reply code.
pub(crate) fn reply_code(proxy: SocketAddr, request: &[u8]) -> Result<u8, Failure> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(request)?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    Ok(reply[1])
}

/// Two hops: `binary` routes `localhost`, `*.onion` and `127.0.0.0/8` through a parent (another
/// adapter where built) with `socks4a://`. The scenarios pass through it; a `.onion` name reaches
/// the parent unresolved (the parent's log shows the name, ours `via socks4a://...` and no lookup
/// failure of our own) and its 91 reaches the client; `localhost` routed through `socks4a://`
/// behind `deny to loopback` is served (it was never resolved here); BIND goes through the parent
/// (its two replies relayed: the BIND scenarios pass) and both logs show it.
///
/// # Errors
/// What went wrong, with the servers' logs.
pub fn chain_two_hops(binary: &Path) -> Result<Outcome, Failure> {
    let bins = mixed(binary);
    let mut parent = Hop::start(&bins[1], &["any".to_owned()])?;
    let via = format!("via socks4a://{}", parent.addr);
    let rules: Vec<String> =
        ["to localhost", "to *.onion", "to 127.0.0.0/8"].iter().map(|to| format!("{to} {via}")).collect();
    let mut child = Hop::start(&bins[0], &rules)?;
    scenarios_through(child.addr, "two hops")?;

    let code = reply_code(child.addr, &wire::connect_host("nowhere.onion", 80, b"alice"))?;
    if code != 91 {
        return Err(Failure::new(format!("a .onion name the parent cannot resolve: reply {code}, not 91")));
    }
    parent.line(&["dest=nowhere.onion:80", "user=alice", "result=resolve"])?;
    let ours = child.line(&["dest=nowhere.onion:80"])?;
    if !ours.contains(&format!("rejected by upstream (91) {via} ")) || ours.contains("result=resolve") {
        return Err(Failure::new(format!("our log line does not show the parent's 91 {via}: {ours}")));
    }

    // Decided on the name before any lookup: were `localhost` resolved here, `deny to loopback`
    // would refuse it; unresolved, the rule routing the name applies and the parent resolves it.
    let mut no_lookup = Hop::start(&bins[0], &["deny to loopback".to_owned(), format!("to localhost {via}")])?;
    let target = echo_target()?;
    let code = reply_code(no_lookup.addr, &wire::connect_host("localhost", target.addr().port(), b"bob"))?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("`localhost` routed through socks4a under `deny to loopback`: reply {code}")));
    }
    no_lookup.line(&["dest=localhost:", "user=bob", &format!("result=ok {via} ")])?;

    child.line(&["cmd=BIND", &format!("result=ok {via} ")])?;
    parent.line(&["cmd=BIND", "result=ok "])?;
    Ok(Outcome::Pass)
}

/// Three hops through three adapters (where built): `binary` routes everything through the second
/// with `socks4a://` (names pass on unresolved), which routes through the third with `socks4://`
/// (it resolves the name and sends the address). The scenarios pass through the chain; the logs
/// show the name at the second hop and the address at the third.
///
/// # Errors
/// What went wrong, with the servers' logs.
pub fn chain_three_hops(binary: &Path) -> Result<Outcome, Failure> {
    let bins = mixed(binary);
    let mut third = Hop::start(&bins[2], &["any".to_owned()])?;
    let mut second = Hop::start(&bins[1], &[format!("via socks4://{}", third.addr)])?;
    let first = Hop::start(&bins[0], &[format!("via socks4a://{}", second.addr)])?;
    scenarios_through(first.addr, "three hops")?;
    second.line(&["dest=localhost:", &format!("result=ok via socks4://{}", third.addr)])?;
    third.line(&["dest=127.0.0.1:", "result=ok up="])?;
    Ok(Outcome::Pass)
}

/// A parent that answers any request with `code`, once.
fn answering_parent(code: u8) -> Result<SocketAddr, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&[0, code, 0, 0, 0, 0, 0, 0]);
        }
    });
    Ok(addr)
}

/// A parent that answers every request with 91 and sends what it received on `requests`.
fn recording_parent() -> Result<(SocketAddr, Receiver<Vec<u8>>), Failure> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (tx, requests) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 600];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(&[0, 91, 0, 0, 0, 0, 0, 0]);
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    Ok((addr, requests))
}

/// The SOCKS4a names [`chain_numeric_names`] sends: loopback and 0.0.0.0 written as numbers the
/// way resolvers (C's `inet_aton`) read them.
const NUMERIC_NAMES: [&str; 10] =
    ["0", "00", "0x0", "0.0.0.0.", "127.1", "127.0.0.1.", "2130706433", "0x7f000001", "0177.0.0.1", "::1"];

/// Names written as numbers on a `socks4a://` route: `binary` with `--deny 'to loopback' --allow
/// 'via socks4a://PARENT'` (a parent that records what it gets). Each of `0`, `00`, `0x0`, `0.0.0.0.`, `127.1`, `127.0.0.1.`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `::1` is
/// refused (91) without reaching the parent (it is checked here as the address it stands for:
/// forwarded, a glibc parent would read it as 127.0.0.1 or 0.0.0.0, past `deny to loopback`);
/// a real name does reach the parent, unresolved.
///
/// # Errors
/// What went wrong, with the server's log.
pub fn chain_numeric_names(binary: &Path) -> Result<Outcome, Failure> {
    let (parent, requests) = recording_parent()?;
    let child = Hop::start(binary, &["deny to loopback".to_owned(), format!("via socks4a://{parent}")])?;
    for name in NUMERIC_NAMES {
        let code = reply_code(child.addr, &wire::connect_host(name, 80, b"n"))?;
        if code != 91 {
            return Err(Failure::new(format!("{name:?} under `deny to loopback`: reply {code}, not 91")));
        }
    }
    let code = reply_code(child.addr, &wire::connect_host("control.example", 80, b"n"))?;
    if code != 91 {
        return Err(Failure::new(format!("control.example: reply {code}, not the parent's 91")));
    }
    let first = requests.recv_timeout(Duration::from_secs(5)).map_err(|_| Failure::new("the parent got nothing"))?;
    let name_of =
        |req: &[u8]| String::from_utf8_lossy(req.get(10..).unwrap_or_default()).trim_end_matches('\0').to_owned();
    if !first.ends_with(b"control.example\0") {
        return Err(Failure::new(format!("a numeric name reached the parent: {:?}", name_of(&first))));
    }
    Ok(Outcome::Pass)
}

/// A SOCKS4a BIND by a name a `socks4a://` route claims: `binary` with `--allow 'to localhost
/// via socks4a://PARENT'` (a parent that records what it gets). The BIND is refused (91) without
/// a lookup here (`localhost` would resolve locally, from /etc/hosts) and without reaching the
/// parent; the log line says why. A CONNECT to the same name does reach the parent, unresolved.
///
/// # Errors
/// What went wrong, with the server's log.
pub fn chain_bind_by_name(binary: &Path) -> Result<Outcome, Failure> {
    let (parent, requests) = recording_parent()?;
    let mut child = Hop::start(binary, &[format!("to localhost via socks4a://{parent}")])?;
    let code = reply_code(child.addr, &wire::bind_host("localhost", 21, b"b"))?;
    if code != 91 {
        return Err(Failure::new(format!("a BIND by a routed name: reply {code}, not 91")));
    }
    child.line(&["cmd=BIND", "result=BIND by host name on a route that forwards names"])?;
    let code = reply_code(child.addr, &wire::connect_host("localhost", 80, b"b"))?;
    if code != 91 {
        return Err(Failure::new(format!("a CONNECT by the routed name: reply {code}, not the parent's 91")));
    }
    let first = requests.recv_timeout(Duration::from_secs(5)).map_err(|_| Failure::new("the parent got nothing"))?;
    if first.get(1) != Some(&1) || !first.ends_with(b"localhost\0") {
        return Err(Failure::new(format!("the parent's first request is not the CONNECT by name: {first:?}")));
    }
    Ok(Outcome::Pass)
}

/// Stream isolation: `binary` with `--allow 'port 1001 via socks4a://PARENT isolate client'` and
/// `--allow 'port 1002 via socks4a://PARENT as tor isolate client,user'` (a parent that records
/// what it gets). Through port 1001, the parent sees one 16-hex-digit user id per client address
/// (127.0.0.1 and 127.0.0.2 differ, a second user from 127.0.0.1 keeps its id) that holds neither
/// the address nor the name; through port 1002, `tor-` and an id per (address, user) pair, stable
/// across connections.
///
/// # Errors
/// What went wrong, with the server's log.
pub fn chain_stream_isolation(binary: &Path) -> Result<Outcome, Failure> {
    let (parent, requests) = recording_parent()?;
    let child = Hop::start(
        binary,
        &[
            format!("port 1001 via socks4a://{parent} isolate client"),
            format!("port 1002 via socks4a://{parent} as tor isolate client,user"),
        ],
    )?;
    // The user id the parent got for a CONNECT from `source` as `user` to port `port`.
    let seen = |source: [u8; 4], user: &str, port: u16| -> Result<String, Failure> {
        let target = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), port);
        let (code, _) = connect_from(source.into(), child.addr, target, user.as_bytes())?;
        if code != 91 {
            return Err(Failure::new(format!(
                "from {source:?} as {user} to port {port}: reply {code}, not the parent's 91"
            )));
        }
        let request = requests
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| Failure::new(format!("from {source:?} as {user}: the parent got nothing")))?;
        let id = request.get(8..).unwrap_or_default().split(|&b| b == 0).next().unwrap_or_default();
        Ok(String::from_utf8_lossy(id).into_owned())
    };
    let hex = |id: &str| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let a = seen([127, 0, 0, 1], "alice", 1001)?;
    let b = seen([127, 0, 0, 2], "alice", 1001)?;
    let a_bob = seen([127, 0, 0, 1], "bob", 1001)?;
    if !hex(&a) || !hex(&b) {
        return Err(Failure::new(format!("isolate client: ids {a:?} and {b:?} are not 16 hex digits")));
    }
    if a == b {
        return Err(Failure::new(format!("isolate client: 127.0.0.1 and 127.0.0.2 share the id {a:?}")));
    }
    if a_bob != a {
        return Err(Failure::new(format!("isolate client: a second user from 127.0.0.1 got {a_bob:?}, not {a:?}")));
    }
    let alice = seen([127, 0, 0, 1], "alice", 1002)?;
    let bob = seen([127, 0, 0, 1], "bob", 1002)?;
    let again = seen([127, 0, 0, 1], "alice", 1002)?;
    let id = |with: &str| with.strip_prefix("tor-").filter(|id| hex(id)).map(str::to_owned);
    match (id(&alice), id(&bob)) {
        (Some(x), Some(y)) if x != y && again == alice && x != a => {}
        _ => {
            return Err(Failure::new(format!(
                "as tor isolate client,user: alice {alice:?}, bob {bob:?}, alice again {again:?} \
                 (want tor- and 16 hex digits, one per user, stable, unlike the client-only id {a:?})"
            )));
        }
    }
    Ok(Outcome::Pass)
}

/// Failover and refusals: `binary` routes through a dead parent first, then a live one named
/// `localhost` (another adapter, which denies the user `refuse-me`; its name is resolved when
/// connecting), and the user `want-93` through a parent that answers 93. A CONNECT is served
/// through the second parent (the log names it); the live parent's 91 and the other's 93 reach
/// the client.
///
/// # Errors
/// What went wrong, with the servers' logs.
pub fn chain_failover_and_refusals(binary: &Path) -> Result<Outcome, Failure> {
    let bins = mixed(binary);
    let dead = TcpListener::bind("127.0.0.1:0")?.local_addr()?; // closed again: connects are refused
    let mut live = Hop::start(&bins[1], &["deny user refuse-me".to_owned(), "any".to_owned()])?;
    let ninety_three = answering_parent(93)?;
    let mut child = Hop::start(
        &bins[0],
        &[
            format!("user want-93 via socks4://{ninety_three}"),
            format!("via socks4://{dead},socks4://localhost:{}", live.addr.port()),
        ],
    )?;
    let target = echo_target()?;
    let (code, mut s) = connect_from(Ipv4Addr::LOCALHOST, child.addr, target.addr(), b"alice")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("through a dead parent, then a live one: reply {code}, not 90")));
    }
    s.write_all(b"failover")?;
    let mut echo = [0u8; 8];
    s.read_exact(&mut echo)?;
    drop(s);
    child.line(&["user=alice", &format!("result=ok via socks4://localhost:{} ", live.addr.port())])?;
    let (code, _s) = connect_from(Ipv4Addr::LOCALHOST, child.addr, target.addr(), b"refuse-me")?;
    if code != 91 {
        return Err(Failure::new(format!("the parent denies the user: reply {code}, not its 91")));
    }
    live.line(&["user=refuse-me", "result=denied"])?;
    let (code, _s) = connect_from(Ipv4Addr::LOCALHOST, child.addr, target.addr(), b"want-93")?;
    if code != 93 {
        return Err(Failure::new(format!("the parent answers 93: reply {code}, not 93")));
    }
    child.line(&["user=want-93", "rejected by upstream (93) via socks4://"])?;
    Ok(Outcome::Pass)
}

/// Dante (`socks4-tools/scripts/dante.sh`, Debian's `dante-server`) in the foreground; killed when
/// dropped.
struct Dante(std::process::Child);

impl Drop for Dante {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dante() -> Result<(Dante, SocketAddr), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dante.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--foreground")
        .env("DANTE_NEGOTIATE_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let dante = Dante(child);
    let mut text = [0u8; 64];
    let n = out.read(&mut text).map_err(|e| e.to_string())?;
    let addr = String::from_utf8_lossy(&text[..n]).trim().to_owned();
    let addr: SocketAddr = addr.parse().map_err(|_| "dante.sh found no danted (apt-get install dante-server)")?;
    for _ in 0..100 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok((dante, addr));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("danted did not listen on {addr}"))
}

/// Dante as a `socks4://` parent: `binary` routes everything through it and the scenarios pass
/// through the pair (names resolved here, addresses sent to Dante). Skips when Dante is missing,
/// unless `SOCKS4_REQUIRE_DANTE` is set.
///
/// # Errors
/// What went wrong, with the server's log.
pub fn chain_dante_parent(binary: &Path) -> Result<Outcome, Failure> {
    let (_dante, addr) = match dante() {
        Ok(found) => found,
        Err(why) if std::env::var_os("SOCKS4_REQUIRE_DANTE").is_none() => return Ok(Outcome::Skip(why)),
        Err(why) => return Err(Failure::new(why)),
    };
    let mut child = Hop::start(binary, &[format!("via socks4://{addr}")])?;
    scenarios_through(child.addr, "Dante as the parent")?;
    child.line(&["dest=localhost:", &format!("result=ok via socks4://{addr}")])?;
    Ok(Outcome::Pass)
}

/// How many clients [`chain_silent_parent`] routes to its silent parent.
const SILENT_CLIENTS: usize = 20;

/// A route to a parent that accepts TCP connections but never answers (`--connect-timeout 20s`):
/// 20 clients routed there wait on it. Meanwhile the server's thread count
/// (`Threads:` in `/proc/PID/status`) does not grow by one per client, and a SOCKS4a `localhost`
/// request (a local lookup) is served within a second. Then the clients reset: within two seconds
/// the parent sees each of its connections closed and the server logs every one (the attempts
/// were dropped, not left to the timeout). Every adapter chains on its event loop (socks4-std in
/// its workers' pollers); named by each adapter's tests rather than `binary_tests!`. Skips without
/// `/proc`.
///
/// # Errors
/// What went wrong, with the server's log.
pub fn chain_silent_parent(binary: &Path) -> Result<Outcome, Failure> {
    let silent = TcpListener::bind("127.0.0.1:0")?;
    let parent = silent.local_addr()?;
    let (tx, accepted) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for conn in silent.incoming().take(SILENT_CLIENTS) {
            if conn.map(|c| tx.send(c)).is_err() {
                return;
            }
        }
    });
    let route = format!("to 192.0.2.0/24 via socks4://{parent}");
    let args = ["--listen", "127.0.0.1:0", "--connect-timeout", "20s", "--allow", &route, "--allow", "any"];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    let threads = || thread_count(&server);
    let target = echo_target()?;
    let by_name = wire::connect_host("localhost", target.addr().port(), b"");
    // A first lookup, so that what the resolver keeps (a thread, a cache) counts in the baseline.
    reply_code(proxy, &by_name)?;
    let Some(before) = threads() else { return Ok(Outcome::Skip("cannot read /proc/PID/status".into())) };

    let dest = std::net::SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80);
    let mut clients = Vec::new();
    for _ in 0..SILENT_CLIENTS {
        let mut client = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
        client.write_all(&wire::connect(dest, b""))?;
        clients.push(client);
    }
    let mut at_parent = Vec::new();
    for _ in 0..SILENT_CLIENTS {
        let conn = accepted.recv_timeout(Duration::from_secs(5));
        at_parent.push(
            conn.map_err(|_| Failure::new(format!("{} of the routed connects reached the parent", at_parent.len())))?,
        );
    }
    let during = threads().unwrap_or(usize::MAX);
    if during > before + SILENT_CLIENTS / 4 {
        return Err(Failure::new(format!(
            "{SILENT_CLIENTS} routed connects waiting: {before} threads became {during}"
        )));
    }
    let asked = std::time::Instant::now();
    let code = reply_code(proxy, &by_name)?;
    if code != wire::GRANTED || asked.elapsed() > Duration::from_secs(1) {
        return Err(Failure::new(format!("a lookup meanwhile: reply {code} after {:?}", asked.elapsed())));
    }

    clients.into_iter().for_each(crate::targets::reset);
    for mut conn in at_parent {
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        if let Err(e) = conn.read(&mut [0u8; 64]) {
            return Err(Failure::new(format!("the client left; the parent's connection stays open ({e})")));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let logged = |seen: &[String]| seen.iter().filter(|l| l.contains("dest=192.0.2.1:80")).count();
    while logged(&seen) < SILENT_CLIENTS {
        match lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => {
                return Err(Failure::new(format!("{} of {SILENT_CLIENTS} lines within 2 s: {seen:#?}", logged(&seen))));
            }
        }
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// A parent that accepts the connection and never answers (`--connect-timeout 1s`): the client
/// gets 91 once the timeout is over (after 0.8 s, within 3 s), the connection to the parent is
/// closed, the route's second parent is not tried (once a parent has the request, a second one
/// could reach the destination twice), and the log line says `connect timed out via` the silent
/// parent. Meanwhile the server uses next to no CPU (under 0.2 s in `/proc/PID/stat`, where
/// there is one): a stalled parent holds a socket and a timer, neither a thread nor a busy loop.
///
/// # Errors
/// What went wrong, with the server's log.
pub fn chain_stalled_parent(binary: &Path) -> Result<Outcome, Failure> {
    let silent = TcpListener::bind("127.0.0.1:0")?;
    let second = TcpListener::bind("127.0.0.1:0")?;
    second.set_nonblocking(true)?;
    let route = format!("via socks4://{},socks4://{}", silent.local_addr()?, second.local_addr()?);
    let args = ["--listen", "127.0.0.1:0", "--connect-timeout", "1s", "--allow", &route];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    // utime + stime, in the kernel's USER_HZ (100 a second on Linux).
    let stat = format!("/proc/{}/stat", server.0.id());
    let cpu_ticks = || -> Option<u64> {
        let text = std::fs::read_to_string(&stat).ok()?;
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let before = cpu_ticks();
    let target = echo_target()?;
    let mut client = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let asked = std::time::Instant::now();
    client.write_all(&wire::connect(target.addr(), b"stall"))?;
    let (mut at_parent, _) = silent.accept()?;
    let mut reply = [0u8; 8];
    client.read_exact(&mut reply)?;
    let waited = asked.elapsed();
    if reply[1] != 91 || waited < Duration::from_millis(800) || waited > Duration::from_secs(3) {
        return Err(Failure::new(format!("a parent that never answers: reply {} after {waited:?}", reply[1])));
    }
    if let (Some(before), Some(after)) = (before, cpu_ticks()) {
        if after.saturating_sub(before) >= 20 {
            return Err(Failure::new(format!(
                "{} ms of CPU while a parent stalled for {waited:?}",
                (after - before) * 10
            )));
        }
    }
    at_parent.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    if let Err(e) = at_parent.read_to_end(&mut request) {
        return Err(Failure::new(format!("the server kept its connection to the stalled parent open ({e})")));
    }
    if second.accept().is_ok() {
        return Err(Failure::new("the second parent was tried after the first had the request"));
    }
    drop(client); // the line is written once the drain after the reply ends
    let line = line_with(&lines, "user=stall", &mut seen)?;
    let silent_via = format!("result=connect timed out via socks4://{} ", silent.local_addr()?);
    if !line.contains(&silent_via) {
        return Err(Failure::new(format!("the log line does not say `{silent_via}`: {line}")));
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// A BIND through a parent takes a BIND-wait slot like a direct one: with
/// `--max-bind-waits-per-client 1`, a second BIND of the client while the first waits at the
/// parent gets 91 (`bind over the limit`), and once the first client leaves a new BIND is served.
///
/// # Errors
/// What went wrong, with the servers' logs so far.
pub fn chain_bind_wait_cap(binary: &Path) -> Result<Outcome, Failure> {
    let bins = mixed(binary);
    let parent = Hop::start(&bins[1], &["any".to_owned()])?;
    let rules = ["--max-bind-waits-per-client 1".to_owned(), format!("via socks4://{}", parent.addr)];
    let mut front = Hop::start(&bins[0], &rules)?;
    let addr = front.addr;
    let bind = |user: &[u8]| -> Result<(u8, TcpStream), Failure> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&wire::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9), user))?;
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply)?;
        Ok((reply[1], s))
    };
    let (first, held) = bind(b"first")?;
    if first != wire::GRANTED {
        return Err(Failure::new(format!("a BIND through the parent: reply {first}, not 90")));
    }
    let (second, _refused) = bind(b"second")?;
    if second != 91 {
        return Err(Failure::new(format!("a second BIND waiting through the parent: reply {second}, not 91")));
    }
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (again, _s) = bind(b"again")?;
        if again == wire::GRANTED {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(Failure::new("the first BIND's slot was not freed when its client left"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    front.line(&["user=second", "bind over the limit"])?;
    Ok(Outcome::Pass)
}
