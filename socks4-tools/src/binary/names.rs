//! SOCKS4a names through the servers' own resolver (`--resolver`, against [`TestDns`]) and
//! Happy Eyeballs between a name's addresses.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::{Server, start};
use crate::dns::{TestDns, Zone};
use crate::scenarios::{Failure, Outcome};
use crate::wire;

/// Echoes every connection `listener` accepts.
fn echo_on(listener: TcpListener) {
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let Ok(mut back) = stream.try_clone() else { return };
                let mut stream = stream;
                let _ = io::copy(&mut stream, &mut back);
            });
        }
    });
}

/// A CONNECT by `name`: its reply code, how long the reply took, and (granted) the stream.
fn connect_name(proxy: SocketAddr, name: &str, port: u16) -> Result<(u8, Duration, TcpStream), Failure> {
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(&wire::connect_host(name, port, b"names"))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).map_err(|e| Failure::new(format!("{name}: no reply: {e}")))?;
    Ok((reply[1], started.elapsed(), s))
}

/// A CONNECT by `name` that must be granted and relay an echo.
fn echoed(proxy: SocketAddr, name: &str, port: u16) -> Result<Duration, Failure> {
    let (code, took, mut s) = connect_name(proxy, name, port)?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("{name}: reply {code} after {took:?}, not 90")));
    }
    s.write_all(b"name")?;
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)?;
    if &echo != b"name" {
        return Err(Failure::new(format!("{name}: no echo")));
    }
    Ok(took)
}

fn serve_with_resolver(binary: &Path, dns: &TestDns, more: &[&str]) -> Result<(Server, SocketAddr), Failure> {
    let (server, _lines, proxy) = serve_logged(binary, dns, more)?;
    Ok((server, proxy))
}

fn serve_logged(
    binary: &Path,
    dns: &TestDns,
    more: &[&str],
) -> Result<(Server, Receiver<String>, SocketAddr), Failure> {
    let resolver = dns.addr().to_string();
    let mut args = vec!["--listen", "127.0.0.1:0", "--allow", "any", "--resolver", &resolver];
    args.extend_from_slice(more);
    let (server, lines, proxy, _seen) = start(binary, &args)?;
    Ok((server, lines, proxy))
}

/// The log lines written so far.
fn log_of(lines: &Receiver<String>) -> String {
    thread::sleep(Duration::from_millis(100));
    lines.try_iter().collect::<Vec<_>>().join("\n")
}

/// A listener on `[::1]:port` whose accept queue is full: a connect to it gets no answer (its
/// SYNs are dropped) until it times out. `None` when this host answers such connects anyway.
fn stalled_v6() -> Result<Option<(Socket, Vec<Socket>)>, Failure> {
    let listener = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    listener.set_only_v6(true)?;
    listener.bind(&SocketAddr::from((Ipv6Addr::LOCALHOST, 0)).into())?;
    listener.listen(0)?;
    let addr = listener.local_addr()?.as_socket().ok_or_else(|| Failure::new("no address"))?;
    let mut held = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        let _ = s.connect(&addr.into());
        held.push(s);
    }
    thread::sleep(Duration::from_millis(100));
    let probe = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    if probe.connect_timeout(&addr.into(), Duration::from_millis(500)).is_ok() {
        return Ok(None);
    }
    Ok(Some((listener, held)))
}

/// Happy Eyeballs (RFC 8305): `binary` with `--resolver` (a [`TestDns`] on 127.0.0.1) and a
/// connect timeout of 6 s; the name `dual.test` resolves to `::1` (tried first: IPv6 is preferred)
/// and `127.0.0.1`. On `[::1]:PORT` a listener's full accept queue drops the SYNs (the address is
/// slow: no answer); on `127.0.0.1:PORT` an echo server answers. The CONNECT is granted and relays
/// within about the 250 ms stagger (under 2 s), not the connect timeout; with `--prefer ipv4`
/// the working address goes first and answers at once.
///
/// # Errors
/// What went wrong.
pub fn happy_eyeballs(binary: &Path) -> Result<Outcome, Failure> {
    let Some((stalled, _held)) = stalled_v6()? else {
        return Ok(Outcome::Skip("a full accept queue on ::1 does not stall connects here".into()));
    };
    let port = stalled.local_addr()?.as_socket().map_or(0, |a| a.port());
    let Ok(v4) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) else {
        return Ok(Outcome::Skip(format!("127.0.0.1:{port} is taken")));
    };
    echo_on(v4);
    let both = [IpAddr::from(Ipv6Addr::LOCALHOST), IpAddr::from(Ipv4Addr::LOCALHOST)];
    let dns = TestDns::start(&[("dual.test", Zone::addrs(&both))])?;
    let (server, proxy) = serve_with_resolver(binary, &dns, &["--connect-timeout", "6s"])?;
    let took = echoed(proxy, "dual.test", port)?;
    if took > Duration::from_secs(2) {
        return Err(Failure::new(format!("dual.test took {took:?}: the stalled ::1 was waited for")));
    }
    if took < Duration::from_millis(200) {
        return Err(Failure::new(format!("dual.test took {took:?}: ::1 (preferred) was not tried first")));
    }
    drop(server);
    let (_server, proxy) = serve_with_resolver(binary, &dns, &["--connect-timeout", "6s", "--prefer", "ipv4"])?;
    let took = echoed(proxy, "dual.test", port)?;
    if took > Duration::from_millis(200) {
        return Err(Failure::new(format!("--prefer ipv4: dual.test took {took:?}, not at once")));
    }
    Ok(Outcome::Pass)
}

/// Our own resolver: `binary` with `--resolver` (a [`TestDns`] on 127.0.0.1). Names with an `A`
/// record, an `AAAA` record, a slow answer (400 ms) and a truncated UDP answer (asked again over
/// TCP) are granted and relay; a name that does not exist gets 91. Asked again, a name (and the
/// one that does not exist) is answered from the cache: the name server gets no new question.
///
/// # Errors
/// What went wrong.
pub fn own_resolver(binary: &Path) -> Result<Outcome, Failure> {
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let v4_port = v4.local_addr()?.port();
    echo_on(v4);
    let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) else {
        return Ok(Outcome::Skip("no ::1 here".into()));
    };
    let v6_port = v6.local_addr()?.port();
    echo_on(v6);
    let lo4 = [IpAddr::from(Ipv4Addr::LOCALHOST)];
    let slow = Duration::from_millis(400);
    let dns = TestDns::start(&[
        ("v4.test", Zone::addrs(&lo4)),
        ("v6.test", Zone::addrs(&[IpAddr::from(Ipv6Addr::LOCALHOST)])),
        ("slow.test", Zone::addrs(&lo4).slow(slow)),
        ("tc.test", Zone::addrs(&lo4).truncated()),
    ])?;
    let (_server, lines, proxy) = serve_logged(binary, &dns, &[])?;
    let with_log = |f: Failure| Failure::new(format!("{f}; log:\n{}", log_of(&lines)));
    own_resolver_through(proxy, &dns, (v4_port, v6_port), slow).map_err(with_log)
}

fn own_resolver_through(
    proxy: SocketAddr,
    dns: &TestDns,
    (v4_port, v6_port): (u16, u16),
    slow: Duration,
) -> Result<Outcome, Failure> {
    echoed(proxy, "v4.test", v4_port)?;
    echoed(proxy, "v6.test", v6_port)?;
    let took = echoed(proxy, "slow.test", v4_port)?;
    if took < slow {
        return Err(Failure::new(format!("slow.test answered in {took:?}: not by the test's name server")));
    }
    echoed(proxy, "tc.test", v4_port)?;
    if dns.asked("tc.test").1 == 0 {
        return Err(Failure::new("tc.test: truncated over UDP, but never asked over TCP"));
    }
    let (code, _, _) = connect_name(proxy, "nx.test", v4_port)?;
    if code != 91 {
        return Err(Failure::new(format!("nx.test (NXDOMAIN): reply {code}, not 91")));
    }
    let before = (dns.asked("v4.test"), dns.asked("nx.test"));
    echoed(proxy, "v4.test", v4_port)?;
    let (code, _, _) = connect_name(proxy, "NX.test", v4_port)?;
    if code != 91 {
        return Err(Failure::new(format!("nx.test again: reply {code}, not 91")));
    }
    let after = (dns.asked("v4.test"), dns.asked("nx.test"));
    if after != before {
        return Err(Failure::new(format!("asked again, not from the cache: {before:?} then {after:?}")));
    }
    if before.0.0 == 0 || before.1.0 == 0 {
        return Err(Failure::new(format!("the test's name server was not asked: {before:?}")));
    }
    Ok(Outcome::Pass)
}
