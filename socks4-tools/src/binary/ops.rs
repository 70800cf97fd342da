//! Checks of the operations side against an adapter's binary: live reload on `SIGHUP`,
//! `--check-config`, systemd socket activation (with the real `systemd-socket-activate`) and
//! readiness notifications (on a datagram socket of the test's own, as systemd reads them).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{Server, connect_from, echo_target, line_with, served_from, start, start_command};
use crate::scenarios::{Failure, Outcome};
use crate::targets::http_once;
use crate::wire;

/// A directory of the check's own files, removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(what: &str) -> Result<Self, Failure> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("socks4-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// Writes `text` to the file `name` in it; returns the file's path.
    pub(crate) fn write(&self, name: &str, text: &str) -> Result<PathBuf, Failure> {
        let path = self.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` (a `kill` name: HUP, TERM) to the server.
pub(crate) fn signal(server: &Server, signal: &str) -> Result<(), Failure> {
    let status = Command::new("kill").args([&format!("-{signal}"), &server.0.id().to_string()]).status()?;
    if status.success() { Ok(()) } else { Err(Failure::new(format!("kill -{signal}: {status}"))) }
}

/// The reply code to a CONNECT to 127.0.0.1:`port` through `proxy`.
fn reply_to(proxy: SocketAddr, port: u16) -> Result<u8, Failure> {
    Ok(connect_from(Ipv4Addr::LOCALHOST, proxy, std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), b"ops")?.0)
}

/// Writes `text` into `relay` and reads it back from the echo target behind it.
fn echo(relay: &mut TcpStream, text: &[u8]) -> Result<(), Failure> {
    relay.write_all(text)?;
    let mut back = vec![0u8; text.len()];
    relay.read_exact(&mut back)?;
    if back == text { Ok(()) } else { Err(Failure::new("the relay did not echo what was sent")) }
}

fn rules_file(port: u16) -> String {
    format!("rules = [\"allow to 127.0.0.1 port {port}\"]\n")
}

/// Live reload through `binary` started with `--config FILE` allowing only echo target A: a relay
/// to A is opened and B is refused (91); the file is changed to allow only B and the server gets
/// `SIGHUP`: it logs `config reloaded`, B is then served, A refused, and the relay opened before the
/// reload still carries bytes both ways. Then a broken file and `SIGHUP`: the server logs `config
/// reload failed, keeping the running config: ...` and B is still served, A still refused. Then
/// an empty file (one truncated to be rewritten, caught half-way) and `SIGHUP`: refused as empty
/// (it would drop the rules), and A is still refused.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn sighup_reload(binary: &Path) -> Result<Outcome, Failure> {
    let (a, b) = (echo_target()?, echo_target()?);
    let (a_port, b_port) = (a.addr().port(), b.addr().port());
    let dir = Scratch::new("reload")?;
    let file = dir.write("socks4.toml", &rules_file(a_port))?;
    let path = file.to_string_lossy().into_owned();
    let (server, lines, proxy, mut seen) = start(binary, &["--listen", "127.0.0.1:0", "--config", &path])?;
    let (code, mut relay) = connect_from(Ipv4Addr::LOCALHOST, proxy, a.addr(), b"before")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("A, allowed by the first file: reply {code}, not 90")));
    }
    relay.set_read_timeout(Some(Duration::from_secs(10)))?;
    echo(&mut relay, b"before the reload")?;
    if reply_to(proxy, b_port)? != 91 {
        return Err(Failure::new("B, which no rule of the first file allows, was not refused"));
    }

    dir.write("socks4.toml", &rules_file(b_port))?;
    signal(&server, "HUP")?;
    line_with(&lines, "config reloaded from ", &mut seen)?;
    served_from(Ipv4Addr::LOCALHOST, proxy, b.addr(), "B after the reload that allows it")?;
    if reply_to(proxy, a_port)? != 91 {
        return Err(Failure::new("A, no longer allowed after the reload, was not refused"));
    }
    echo(&mut relay, b"after the reload: the relay opened before it still flows")?;

    dir.write("socks4.toml", "rules = [\"allow to 127.0.0.1 port http-ish\"]\n")?;
    signal(&server, "HUP")?;
    let failed = line_with(&lines, "config reload failed, keeping the running config: ", &mut seen)?;
    if !failed.contains("`http-ish` is not a port") {
        return Err(Failure::new(format!("the failed reload's line does not say why: {failed}")));
    }
    served_from(Ipv4Addr::LOCALHOST, proxy, b.addr(), "B after a broken file (the running rules stay)")?;
    if reply_to(proxy, a_port)? != 91 {
        return Err(Failure::new("A after a broken file: the running rules were not kept"));
    }
    echo(&mut relay, b"still")?;

    // A file truncated to be rewritten in place, caught empty: a valid empty config, refused.
    dir.write("socks4.toml", "")?;
    signal(&server, "HUP")?;
    let failed = line_with(&lines, "config reload failed, keeping the running config: ", &mut seen)?;
    if !failed.contains("is empty") {
        return Err(Failure::new(format!("the reload of an empty file does not say it is empty: {failed}")));
    }
    if reply_to(proxy, a_port)? != 91 {
        return Err(Failure::new("A after an empty file was reloaded: the running rules were dropped"));
    }
    drop((relay, server));
    Ok(Outcome::Pass)
}

/// How the target of [`shutdown_cut_resets`] saw its connection end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetEnd {
    Eof,
    Reset,
}

/// A target that streams to its one client (16 KiB every 10 ms) until the connection ends; sends
/// how it ended.
fn streaming_target() -> Result<(SocketAddr, std::sync::mpsc::Receiver<TargetEnd>), Failure> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (tx, ended) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
        let chunk = vec![0x5a; 16 * 1024];
        let end = loop {
            if let Err(e) = s.write_all(&chunk) {
                break if e.kind() == std::io::ErrorKind::BrokenPipe { TargetEnd::Eof } else { TargetEnd::Reset };
            }
            match s.read(&mut [0u8; 64]) {
                Ok(0) => break TargetEnd::Eof,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break TargetEnd::Reset,
                Ok(_) => {}
            }
        };
        let _ = tx.send(end);
    });
    Ok((addr, ended))
}

/// A relay cut when `--shutdown-grace` runs out ends with a reset on both sides, never a clean
/// end of file (which would make a cut download look complete): `binary` with `--shutdown-grace
/// 1s` relays an endless stream to a slow client; after SIGTERM and the grace period the client's
/// read fails with ECONNRESET, and the target sees a reset, not an end of file.
///
/// # Errors
/// What went wrong.
pub fn shutdown_cut_resets(binary: &Path) -> Result<Outcome, Failure> {
    let (server, lines, proxy, mut seen) =
        start(binary, &["--listen", "127.0.0.1:0", "--allow", "any", "--shutdown-grace", "1s"])?;
    let (target, ended) = streaming_target()?;
    let SocketAddr::V4(target) = target else { return Err(Failure::new("an IPv4 target")) };
    let (code, mut s) = connect_from(Ipv4Addr::LOCALHOST, proxy, target, b"cut")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("CONNECT to the streaming target: reply {code}")));
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; 16 * 1024];
    s.read_exact(&mut buf)?;
    signal(&server, "TERM")?;
    line_with(&lines, "shutting down", &mut seen)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let client_end = loop {
        match s.read(&mut buf) {
            Ok(0) => break "a clean end of file",
            Ok(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(_) => break "still open 10 s after SIGTERM",
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(_) => break "another error",
        }
    };
    if client_end != "reset" {
        return Err(Failure::new(format!(
            "the client of a relay cut at the end of the grace saw {client_end}, not a reset"
        )));
    }
    match ended.recv_timeout(Duration::from_secs(5)) {
        Ok(TargetEnd::Reset) => {}
        other => return Err(Failure::new(format!("the target of the cut relay saw {other:?}, not a reset"))),
    }
    drop(server);
    Ok(Outcome::Pass)
}

/// Runs `binary` with `args` to its end (at most 20 s); returns its status, stdout and stderr.
pub(super) fn run(binary: &Path, args: &[&str]) -> Result<(ExitStatus, String, String), Failure> {
    run_with(binary, args, &[])
}

/// [`run`] with `env` added to the environment.
fn run_with(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(ExitStatus, String, String), Failure> {
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::new(format!("starting {}: {e}", binary.display())))?;
    let status = wait_exit(&mut child, Duration::from_secs(20))?;
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out)?;
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err)?;
    }
    Ok((status, out, err))
}

/// Waits for `child` to exit, at most `within` (then kills it and fails).
fn wait_exit(child: &mut std::process::Child, within: Duration) -> Result<ExitStatus, Failure> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failure::new(format!("the process did not exit within {within:?}")));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `--check-config` of `binary`: with a good file and command-line options on top it exits 0 and
/// prints the merged configuration (binding nothing: the file's port is held by this check), and
/// that output is itself a config file giving the same output; a file with a bad rule, an open
/// proxy on the command line and a missing file exit with status 2 and the reason on stderr, and
/// so does starting with a misspelt `SOCKS4_SPLICE_POLICY`.
///
/// # Errors
/// What went wrong.
pub fn check_config(binary: &Path) -> Result<Outcome, Failure> {
    let held = TcpListener::bind("127.0.0.1:0")?;
    let port = held.local_addr()?.port();
    let dir = Scratch::new("check")?;
    let good = dir.write(
        "good.toml",
        &format!(
            "listen = [\"127.0.0.1:{port}\"]\nrules = [\"deny to loopback\", \"allow from 10.0.0.0/8\"]\n\
             [timeouts]\nidle = \"90s\"\n"
        ),
    )?;
    let good = good.to_string_lossy().into_owned();
    let (status, out, err) = run(binary, &["--check-config", "--config", &good, "--max-connections", "77"])?;
    if !status.success() {
        return Err(Failure::new(format!("--check-config on a good file: {status}; stderr: {err}")));
    }
    for needle in [
        format!("listen = [\"127.0.0.1:{port}\"]"),
        "max_connections = 77".into(),
        "rules = [\"deny to loopback\", \"allow from 10.0.0.0/8\"]".into(),
        "idle = \"90s\"".into(),
        "handshake = \"10s\"".into(),
    ] {
        if !out.contains(&needle) {
            return Err(Failure::new(format!("--check-config does not print {needle:?}: {out}")));
        }
    }
    let dumped = dir.write("dumped.toml", &out)?;
    let (status, again, _) = run(binary, &["--check-config", "--config", &dumped.to_string_lossy()])?;
    let body = |text: &str| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    if !status.success() || body(&again) != body(&out) {
        return Err(Failure::new(format!("its own output as a file ({status}) gives {again}, not {out}")));
    }

    let bad = dir.write("bad.toml", "rules = [\"allow from nowhere\"]\n")?;
    let open = ["--check-config", "--listen", "0.0.0.0:1080"];
    for (args, reason) in [
        (vec!["--check-config", "--config", &*bad.to_string_lossy()].as_slice(), "`nowhere` is not a network"),
        (&open[..], "open proxy"),
        (&["--check-config", "--config", "/nonexistent/socks4.toml"], "/nonexistent/socks4.toml"),
    ] {
        let (status, _, err) = run(binary, args)?;
        if status.code() != Some(2) || !err.contains(reason) {
            return Err(Failure::new(format!("{args:?}: {status}, stderr {err:?} (wanted 2 and {reason:?})")));
        }
    }
    // A misspelt splice policy (a benchmark knob) refuses to start, rather than measure the default.
    let serve = ["--listen", "127.0.0.1:0", "--allow", "any"];
    let (status, _, err) = run_with(binary, &serve, &[("SOCKS4_SPLICE_POLICY", "sometimes")])?;
    if status.code() != Some(2) || !err.contains("SOCKS4_SPLICE_POLICY") {
        return Err(Failure::new(format!("SOCKS4_SPLICE_POLICY=sometimes: {status}, stderr {err:?}")));
    }
    drop(held);
    Ok(Outcome::Pass)
}

/// `binary` names itself, not the shared `socks4-server` crate its command line comes from: its
/// `--version` is `<file name> <version>`, its usage line, man page (`--generate-man`) and shell
/// completions (`--generate-completions SHELL`) are for its own name, and no output names
/// `socks4-server`.
///
/// # Errors
/// What went wrong.
pub fn names_itself(binary: &Path) -> Result<Outcome, Failure> {
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure::new(format!("{}: no file name", binary.display())))?;
    let version = format!("{name} {}\n", env!("CARGO_PKG_VERSION"));
    let usage = format!("Usage: {name} ");
    let title = format!(".TH {name} 1");
    let zsh = format!("#compdef {name}");
    let fish = format!("complete -c {name} ");
    let bash = format!("-o default {name}\n");
    for (args, needle) in [
        (&["--version"][..], &version),
        (&["--help"], &usage),
        (&["--generate-man"], &title),
        (&["--generate-completions", "bash"], &bash),
        (&["--generate-completions", "zsh"], &zsh),
        (&["--generate-completions", "fish"], &fish),
    ] {
        let (status, out, err) = run(binary, args)?;
        if !status.success() || !out.contains(needle.as_str()) {
            return Err(Failure::new(format!("{args:?}: {status}, wanted {needle:?} in {out:?} (stderr {err:?})")));
        }
        if out.contains("socks4-server") || out.contains("socks4_server") {
            return Err(Failure::new(format!("{args:?} names the socks4-server crate: {out}")));
        }
    }
    Ok(Outcome::Pass)
}

/// A route whose parent is the server itself, through `binary`: `--check-config` exits 2 naming
/// the route that leads back to its own listener, for the listen address itself, another
/// loopback address on a `0.0.0.0` listener and the name `localhost`; a start with such a route
/// exits at once with the reason (it would loop each request through itself); a parent on
/// another port is accepted.
///
/// # Errors
/// What went wrong.
pub fn route_to_self(binary: &Path) -> Result<Outcome, Failure> {
    let held = TcpListener::bind("127.0.0.1:0")?;
    let port = held.local_addr()?.port();
    let local = format!("127.0.0.1:{port}");
    let any = format!("0.0.0.0:{port}");
    let via = |parent: &str| format!("from 127.0.0.0/8 via {parent}");
    let cases = [
        (local.as_str(), via(&format!("socks4://127.0.0.1:{port}"))),
        (any.as_str(), via(&format!("socks4a://127.0.0.2:{port}"))),
        (local.as_str(), via(&format!("socks4a://localhost:{port}"))),
    ];
    for (listen, rule) in &cases {
        let (status, _, err) = run(binary, &["--check-config", "--listen", listen, "--allow", rule])?;
        if status.code() != Some(2) || !err.contains("leads back to this server's own listener") {
            return Err(Failure::new(format!(
                "--check-config --listen {listen} --allow {rule:?}: {status}, stderr {err:?}"
            )));
        }
    }
    let other = via(&format!("socks4://127.0.0.1:{}", if port == 65535 { 1 } else { port + 1 }));
    let (status, _, err) = run(binary, &["--check-config", "--listen", &local, "--allow", &other])?;
    if !status.success() {
        return Err(Failure::new(format!("a parent on another port was refused: {status}, stderr {err:?}")));
    }
    drop(held); // the start below must fail on the route, not on a port in use
    let (status, _, err) = run(binary, &["--listen", &local, "--allow", &cases[0].1])?;
    if status.success() || !err.contains("leads back to this server's own listener") {
        return Err(Failure::new(format!("a start with a route to itself: {status}, stderr {err:?}")));
    }
    Ok(Outcome::Pass)
}

/// `program` on the PATH, if there.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16, Failure> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Socket activation with the real `systemd-socket-activate -l 127.0.0.1:PORT binary --listen
/// [::1]:0`: the first connection starts the binary, which serves the passed socket (its log says
/// `listening on 127.0.0.1:PORT`, not `[::1]`) and that connection's SOCKS4 CONNECT; then `curl
/// --socks4a` (when installed) fetches a page through it. Skips when `systemd-socket-activate` is
/// missing, unless `SOCKS4_REQUIRE_SYSTEMD` is set.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn socket_activation(binary: &Path) -> Result<Outcome, Failure> {
    let Some(activate) = on_path("systemd-socket-activate") else {
        let why = "no systemd-socket-activate (apt-get install systemd)";
        return if std::env::var_os("SOCKS4_REQUIRE_SYSTEMD").is_some() {
            Err(Failure::new(why))
        } else {
            Ok(Outcome::Skip(why.into()))
        };
    };
    let target = echo_target()?;
    let port = free_port()?;
    let mut command = Command::new(activate);
    command.args(["-l", &format!("127.0.0.1:{port}")]).arg(binary).args(["--listen", "[::1]:0"]);
    let (server, lines) = super::spawn_logged(command)?;
    // systemd-socket-activate listens first, and starts the binary on the first connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut client = loop {
        match TcpStream::connect_timeout(&proxy, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(Failure::new(format!("systemd-socket-activate does not listen on {proxy}: {e}")));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    };
    client.set_read_timeout(Some(Duration::from_secs(15)))?;
    client.write_all(&wire::connect(target.addr(), b"activated"))?;
    let mut reply = [0u8; 8];
    client.read_exact(&mut reply)?;
    if reply[1] != wire::GRANTED {
        return Err(Failure::new(format!("CONNECT on the activated socket: reply {}, not 90", reply[1])));
    }
    echo(&mut client, b"socket activation")?;
    let mut seen = Vec::new();
    let listening = line_with(&lines, "listening on ", &mut seen)?;
    if !listening.ends_with(&format!("listening on {proxy}")) {
        return Err(Failure::new(format!("the activated server logs {listening:?}, not {proxy}")));
    }
    if let Some(curl) = on_path("curl") {
        let page = http_once("served through an activated socket")?;
        let out = Command::new(curl)
            .args(["--silent", "--show-error", "--max-time", "10", "--socks4a", &proxy.to_string()])
            .arg(format!("http://localhost:{}/", page.port()))
            .output()?;
        let body = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || body != "served through an activated socket" {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Failure::new(format!("curl --socks4a: {} {body:?} {err}", out.status)));
        }
    }
    drop((client, server));
    Ok(Outcome::Pass)
}

/// Readiness notifications as systemd's `Type=notify-reload` reads them: `binary` started with
/// `NOTIFY_SOCKET` naming a datagram socket of this check sends `READY=1` once listening;
/// `SIGHUP` brings `RELOADING=1` with `MONOTONIC_USEC=` then `READY=1`; `SIGTERM` brings
/// `STOPPING=1`, and the server exits with status 0.
///
/// # Errors
/// What went wrong, with the server's log so far.
#[cfg(unix)]
pub fn notify_readiness(binary: &Path) -> Result<Outcome, Failure> {
    use std::os::unix::net::UnixDatagram;
    let dir = Scratch::new("notify")?;
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let next = || -> Result<String, Failure> {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).map_err(|e| Failure::new(format!("no notification within 10 s: {e}")))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let mut command = Command::new(binary);
    command.args(["--listen", "127.0.0.1:0"]).env("NOTIFY_SOCKET", &path);
    let (mut server, _lines, _proxy, _seen) = start_command(command)?;
    let ready = next()?;
    if ready != "READY=1\n" {
        return Err(Failure::new(format!("first notification {ready:?}, not READY=1")));
    }
    signal(&server, "HUP")?;
    let reloading = next()?;
    let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").and_then(|r| r.strip_suffix('\n'));
    if !usec.is_some_and(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit())) {
        return Err(Failure::new(format!("on SIGHUP: {reloading:?}, not RELOADING=1 and MONOTONIC_USEC=")));
    }
    let again = next()?;
    if again != "READY=1\n" {
        return Err(Failure::new(format!("after the reload: {again:?}, not READY=1")));
    }
    signal(&server, "TERM")?;
    let stopping = next()?;
    if stopping != "STOPPING=1\n" {
        return Err(Failure::new(format!("on SIGTERM: {stopping:?}, not STOPPING=1")));
    }
    let status = wait_exit(&mut server.0, Duration::from_secs(15))?;
    if !status.success() {
        return Err(Failure::new(format!("after SIGTERM the server exited with {status}")));
    }
    Ok(Outcome::Pass)
}

/// Readiness notifications use a Unix datagram socket.
#[cfg(not(unix))]
pub fn notify_readiness(_binary: &Path) -> Result<Outcome, Failure> {
    Ok(Outcome::Skip("NOTIFY_SOCKET is a Unix socket".into()))
}
