//! Destination cases: addresses that are never a real destination are refused whatever the rules
//! say, and a SOCKS4a name may lead to an IPv6 destination.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::thread;
use std::time::Duration;

use super::support::{Context, connect_proxy, echo_round_trip, expect_rejected, expect_reply};
use super::{Ctx, Failure, Outcome};
use crate::targets::EchoTarget;
use crate::wire;

/// CONNECT to `0.0.0.0:P` (Linux connects it to the local host, bypassing `deny to 127.0.0.0/8`),
/// to broadcast and to multicast: reply 91 and nothing reaches the service on 127.0.0.1:P. The
/// SOCKS4a names `0` and `0.0.0.0` too, when the server resolves names.
pub(crate) fn connect_forbidden_destinations(ctx: &Ctx) -> Result<Outcome, Failure> {
    let service = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("listening on 127.0.0.1")?;
    service.set_nonblocking(true)?;
    let port = service.local_addr()?.port();
    let mut cases: Vec<(String, Vec<u8>)> = [Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::BROADCAST]
        .into_iter()
        .chain([Ipv4Addr::new(224, 0, 0, 1)])
        .map(|ip| (format!("CONNECT {ip}:{port}"), wire::connect(SocketAddrV4::new(ip, port), b"user")))
        .collect();
    if ctx.profile.resolves_localhost {
        for name in ["0", "0.0.0.0"] {
            cases.push((format!("4a CONNECT to {name:?}"), wire::connect_host(name, port, b"user")));
        }
    }
    for (what, request) in &cases {
        let mut s = connect_proxy(ctx)?;
        s.write_all(request).context(what)?;
        expect_rejected(&mut s, what)?;
    }
    // Anything the proxy connected would be queued by now (the replies came after its connects).
    thread::sleep(Duration::from_millis(100));
    match service.accept() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Outcome::Pass),
        Ok((_, from)) => {
            Err(Failure::new(format!("a connection from {from} reached 127.0.0.1:{port} through 0.0.0.0")))
        }
        Err(e) => Err(Failure::new(format!("checking the local service: {e}"))),
    }
}

/// With names required (`Profile::safe_socks`): a CONNECT by IP address gets 91, one by name
/// (SOCKS4a `localhost`) is served. Skipped for a server without the option.
pub(crate) fn safe_socks_requires_names(ctx: &Ctx) -> Result<Outcome, Failure> {
    if !ctx.profile.safe_socks {
        return Ok(Outcome::Skip("the profile says the server accepts requests by address".into()));
    }
    let target = EchoTarget::start().context("starting the echo target")?;
    let mut by_ip = connect_proxy(ctx)?;
    by_ip.write_all(&wire::connect(target.addr(), b"user")).context("sending CONNECT by address")?;
    expect_rejected(&mut by_ip, "CONNECT by address with names required")?;
    let mut by_name = connect_proxy(ctx)?;
    by_name
        .write_all(&wire::connect_host("localhost", target.addr().port(), b"user"))
        .context("sending a 4a CONNECT")?;
    expect_reply(&mut by_name, wire::GRANTED, "4a CONNECT with names required")?;
    echo_round_trip(&mut by_name, b"named", "echo")?;
    Ok(Outcome::Pass)
}

/// SOCKS4a CONNECT to the IPv6 literal `::1` (as Tor accepts): reply 90 and an echo round trip
/// with a service listening on `[::1]` only. Skipped where the server does not resolve names or
/// this host has no IPv6 loopback.
pub(crate) fn connect_4a_ipv6(ctx: &Ctx) -> Result<Outcome, Failure> {
    if !ctx.profile.resolves_localhost {
        return Ok(Outcome::Skip("the profile says the server does not resolve names".into()));
    }
    let Ok(service) = TcpListener::bind("[::1]:0") else {
        return Ok(Outcome::Skip("no IPv6 loopback on this host".into()));
    };
    let port = service.local_addr()?.port();
    let echo = thread::spawn(move || {
        if let Ok((conn, _)) = service.accept() {
            crate::targets::echo_with_timeouts(conn);
        }
    });
    let mut s = connect_proxy(ctx)?;
    s.write_all(&wire::connect_host("::1", port, b"user")).context("sending a 4a CONNECT to ::1")?;
    expect_reply(&mut s, wire::GRANTED, "4a CONNECT to ::1")?;
    echo_round_trip(&mut s, b"hello over IPv6", "echo")?;
    drop(s);
    let _ = echo.join();
    Ok(Outcome::Pass)
}
