//! The PROXY protocol check (`--proxy-protocol`) against an adapter's binary.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

use socks4_core::proxy_header::encode_v2;

use super::{closed_at_once, echo_target, line_with, silent_from, start};
use crate::caps::connect_from;
use crate::scenarios::{Failure, Outcome};
use crate::wire;

/// A v2 header for `client` (to a made-up front end).
fn v2(client: SocketAddrV4) -> Vec<u8> {
    let mut out = [0u8; 52];
    let n = encode_v2(client.into(), SocketAddr::from(([192, 0, 2, 1], 1080)), &mut out);
    out[..n].to_vec()
}

/// A v1 header for `client`.
fn v1(client: SocketAddrV4) -> Vec<u8> {
    format!("PROXY TCP4 {} 192.0.2.1 {} 1080\r\n", client.ip(), client.port()).into_bytes()
}

/// From 127.0.0.1 (trusted), sends `bytes` in two writes split at `at`, a moment apart; returns
/// the stream and the reply code, or `None` if the server closed without a reply.
fn send_split(proxy: SocketAddr, bytes: &[u8], at: usize) -> Result<(Option<u8>, TcpStream), Failure> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&bytes[..at])?;
    if at > 0 && at < bytes.len() {
        // Separate segments, read separately by the server.
        thread::sleep(Duration::from_millis(2));
    }
    s.write_all(&bytes[at..])?;
    let mut reply = [0u8; 8];
    match s.read_exact(&mut reply) {
        Ok(()) => Ok((Some(reply[1]), s)),
        Err(_) => Ok((None, s)),
    }
}

/// The reply to `header` + a CONNECT to `target` with `user`, sent whole from 127.0.0.1.
fn reply_to(proxy: SocketAddr, header: &[u8], target: SocketAddrV4, user: &[u8]) -> Result<Option<u8>, Failure> {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&wire::connect(target, user));
    Ok(send_split(proxy, &bytes, bytes.len())?.0)
}

/// PROXY protocol through `binary` started with `--proxy-protocol 127.0.0.1`:
/// - a v1 and a v2 header followed by a CONNECT, split in two reads at every byte (and sent in
///   one piece), are served: reply 90 and an echo; the log line names the header's client;
/// - rules see the header's client (`deny from 192.0.2.9` gives 91), and a rule with `ident`
///   gives 92 behind a balancer; a CONNECT to the server's own listener gets 91 (it would let a
///   client forge a header from the server's own, trusted, address);
/// - a header from 127.0.0.2 (not trusted) is an invalid request (91), logged as a likely PROXY
///   header; a request without a header from 127.0.0.1, and `UNKNOWN`, are closed without reply;
///   v2 `LOCAL` (a health check) is closed without reply;
/// - `--max-per-client 1` counts the header's clients, not the balancer: a second connection of
///   one client is closed while another client is served; half a header is closed at the
///   handshake timeout.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn proxy_protocol(binary: &Path) -> Result<Outcome, Failure> {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--proxy-protocol",
        "127.0.0.1/32",
        "--deny",
        "from 192.0.2.9",
        "--allow",
        "user idt ident",
        "--allow",
        "any",
        "--ident-timeout",
        "2s",
    ];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    let target = echo_target()?;
    let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 40000);
    for (version, header) in [("v1", v1(client)), ("v2", v2(client))] {
        let mut bytes = header.clone();
        bytes.extend_from_slice(&wire::connect(target.addr(), b"pp"));
        for at in 0..=bytes.len() {
            let (code, mut s) = send_split(proxy, &bytes, at)?;
            if code != Some(wire::GRANTED) {
                return Err(Failure::new(format!("{version} header + request split at {at}: reply {code:?}")));
            }
            s.write_all(b"ping")?;
            let mut echo = [0u8; 4];
            s.read_exact(&mut echo)?;
            if &echo != b"ping" {
                return Err(Failure::new(format!("{version} split at {at}: no echo")));
            }
        }
    }
    line_with(&lines, "conn client=192.0.2.7:40000 cmd=CONNECT", &mut seen)?;

    let denied = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 1234);
    if reply_to(proxy, &v2(denied), target.addr(), b"pp")? != Some(91) {
        return Err(Failure::new("`deny from 192.0.2.9` did not apply to a v2 header naming 192.0.2.9"));
    }
    line_with(&lines, "conn client=192.0.2.9:1234 cmd=CONNECT", &mut seen)?;
    let ident = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 8), 1234);
    if reply_to(proxy, &v1(ident), target.addr(), b"idt")? != Some(92) {
        return Err(Failure::new("a rule with ident behind a balancer did not reply 92"));
    }
    line_with(&lines, "ident cannot ask a client behind a PROXY protocol balancer", &mut seen)?;
    // The server's own listener is no destination: connected to itself from a trusted address, a
    // client could send a header naming anyone.
    let SocketAddr::V4(own) = proxy else { return Err(Failure::new("an IPv4 listener")) };
    if reply_to(proxy, &v1(client), own, b"pp")? != Some(91) {
        return Err(Failure::new("a CONNECT to the server's own listener was granted with --proxy-protocol"));
    }

    // A header from a source that is not trusted: an invalid request.
    let mut untrusted = silent_from(Ipv4Addr::new(127, 0, 0, 2), proxy)?;
    untrusted.write_all(&v1(client))?;
    untrusted.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = [0u8; 8];
    untrusted.read_exact(&mut reply)?;
    if reply[1] != 91 {
        return Err(Failure::new(format!("a header from an untrusted source: reply {}, not 91", reply[1])));
    }
    line_with(&lines, "a PROXY protocol header from an untrusted source", &mut seen)?;

    // Trusted sources: no header, UNKNOWN, LOCAL.
    for (what, bytes, log) in [
        ("a request without a header", wire::connect(target.addr(), b"pp"), Some("no PROXY protocol header")),
        ("UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), Some("without a client address")),
        ("LOCAL", b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec(), None),
    ] {
        let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
        s.write_all(&bytes)?;
        if !closed_at_once(&mut s, Duration::from_secs(3))? {
            return Err(Failure::new(format!("{what} from a trusted source: not closed at once without a reply")));
        }
        if let Some(log) = log {
            line_with(&lines, log, &mut seen)?;
        }
    }
    drop(server);

    // Per-client limits count the header's clients.
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--proxy-protocol",
        "127.0.0.1/32",
        "--allow",
        "any",
        "--max-per-client",
        "1",
        "--handshake-timeout",
        "1s",
    ];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    // Half a header: closed at the handshake timeout.
    let mut half = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    half.write_all(b"PROXY TCP4 192.0.2.")?;
    if !closed_at_once(&mut half, Duration::from_secs(3))? {
        return Err(Failure::new("half a PROXY header was not closed at the handshake timeout (1 s)"));
    }
    line_with(&lines, "result=PROXY header timed out", &mut seen)?;
    let mut held = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    held.write_all(&v1(client))?;
    thread::sleep(Duration::from_millis(200)); // let the server admit it
    let (code, _second) = send_split(proxy, &v1(client), 0)?;
    if code.is_some() {
        return Err(Failure::new("a 2nd connection of one client behind the balancer (limit 1) got a reply"));
    }
    let other = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 77), 1);
    if reply_to(proxy, &v1(other), target.addr(), b"pp")? != Some(wire::GRANTED) {
        return Err(Failure::new("another client behind the same balancer was not served"));
    }
    drop((held, server));
    Ok(Outcome::Pass)
}

/// Debian's HAProxy, started in the foreground with `config`; killed when dropped.
struct Haproxy(std::process::Child, std::path::PathBuf);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

/// `haproxy` on the PATH or in /usr/sbin (Debian's place for it).
fn haproxy_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
}

/// HAProxy in TCP mode on 127.0.0.1:`front`, sending a PROXY v2 header to `backend`.
fn haproxy(front: u16, backend: SocketAddr) -> Result<Haproxy, String> {
    let binary = haproxy_binary().ok_or("no haproxy (apt-get install haproxy)")?;
    let config = std::env::temp_dir().join(format!("socks4-reentry-{}-{front}.cfg", std::process::id()));
    let text = format!(
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend socks\n    bind 127.0.0.1:{front}\n    default_backend pool\n\
         backend pool\n    server s1 {backend} send-proxy-v2\n"
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let child = std::process::Command::new(binary)
        .args(["-db", "-f"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting haproxy: {e}"))?;
    let haproxy = Haproxy(child, config);
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, front));
    for _ in 0..200 {
        if TcpStream::connect_timeout(&front, Duration::from_millis(200)).is_ok() {
            return Ok(haproxy);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("haproxy did not listen on {front}"))
}

/// Re-entry through the balancer, behind Debian's HAProxy (TCP mode, `send-proxy-v2`) in front of
/// `binary` started with `--proxy-protocol 127.0.0.1/32 --deny 'from 127.0.0.6 to 127.0.0.1/32
/// port P'` (P: an echo target): a client from 127.0.0.5 is served through HAProxy and 127.0.0.6
/// is refused; then 127.0.0.6 CONNECTs to HAProxy's own front (allowed) and sends, inside that
/// tunnel, a CONNECT to P: it comes back to the server through HAProxy with a header naming the
/// server's own outgoing address, 127.0.0.1, inside the trusted network, and must be refused (no
/// reply; logged as a re-entry), or every `from` rule would be bypassed. Skips without HAProxy
/// unless `SOCKS4_REQUIRE_HAPROXY` is set.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn proxy_reentry(binary: &Path) -> Result<Outcome, Failure> {
    if haproxy_binary().is_none() {
        let why = "no haproxy (apt-get install haproxy)".to_owned();
        return if std::env::var_os("SOCKS4_REQUIRE_HAPROXY").is_none() {
            Ok(Outcome::Skip(why))
        } else {
            Err(Failure::new(why))
        };
    }
    let target = echo_target()?;
    let front = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let deny = format!("from 127.0.0.6 to 127.0.0.1/32 port {}", target.addr().port());
    let args = ["--listen", "127.0.0.1:0", "--proxy-protocol", "127.0.0.1/32", "--deny", &deny, "--allow", "any"];
    let (server, lines, proxy, mut seen) = start(binary, &args)?;
    let _haproxy = haproxy(front, proxy).map_err(Failure::new)?;
    let front_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, front));

    let (code, mut s) = connect_from(Ipv4Addr::new(127, 0, 0, 5), front_addr, target.addr(), b"ok")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("127.0.0.5 through HAProxy: reply {code}, not 90; log: {seen:#?}")));
    }
    s.write_all(b"ping")?;
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)?;
    drop(s);
    line_with(&lines, "conn client=127.0.0.5:", &mut seen)?;
    let six = Ipv4Addr::new(127, 0, 0, 6);
    let (code, _s) = connect_from(six, front_addr, target.addr(), b"six")?;
    if code != 91 {
        return Err(Failure::new(format!("127.0.0.6 through HAProxy, denied by its rule: reply {code}, not 91")));
    }

    let (code, mut tunnel) = connect_from(six, front_addr, SocketAddrV4::new(Ipv4Addr::LOCALHOST, front), b"six")?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("127.0.0.6 to HAProxy's front (allowed): reply {code}, not 90")));
    }
    tunnel.set_read_timeout(Some(Duration::from_secs(10)))?;
    tunnel.write_all(&wire::connect(target.addr(), b"six"))?;
    let mut reply = [0u8; 8];
    match tunnel.read(&mut reply) {
        Ok(n) if n >= 2 && reply[1] == wire::GRANTED => {
            return Err(Failure::new("127.0.0.6 re-entering through HAProxy was granted what its rule denies"));
        }
        Ok(_) | Err(_) => {}
    }
    line_with(&lines, "result=PROXY header names a trusted balancer or this host", &mut seen)?;
    drop(server);
    Ok(Outcome::Pass)
}
