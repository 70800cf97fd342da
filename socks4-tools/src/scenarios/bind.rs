//! BIND cases: the full two-reply exchange with a peer, and a peer from the wrong address.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};

use super::support::{
    CLOSE_TIMEOUT, Context, bail, connect_proxy, connect_to, expect_close, expect_reply, read_exact_n,
};
use super::{Ctx, Failure, Outcome};
use crate::wire::{self, Reply};

fn skip_unless_bind(ctx: &Ctx) -> Option<Outcome> {
    (!ctx.profile.bind).then(|| Outcome::Skip("BIND cases disabled in the profile".into()))
}

/// Sends BIND expecting `expected_peer`, reads the first reply (90) and returns the address a
/// peer must connect to (0.0.0.0 in the reply means the proxy's own address).
fn start_bind(ctx: &Ctx, expected_peer: Ipv4Addr) -> Result<(TcpStream, SocketAddr), Failure> {
    let mut client = connect_proxy(ctx)?;
    // The port is informational for SOCKS4 BIND; send a plausible one.
    client.write_all(&wire::bind(SocketAddrV4::new(expected_peer, 21), b"binder")).context("sending BIND")?;
    let first: Reply = expect_reply(&mut client, wire::GRANTED, "BIND first reply")?;
    if first.addr.port() == 0 {
        bail!("BIND first reply has port 0");
    }
    let ip = if first.addr.ip().is_unspecified() { ctx.proxy.ip() } else { IpAddr::V4(*first.addr.ip()) };
    Ok((client, SocketAddr::new(ip, first.addr.port())))
}

/// BIND end to end: first reply 90, a peer from 127.0.0.1 connects, second reply 90, data flows
/// both ways between peer and client.
pub(crate) fn bind_basic(ctx: &Ctx) -> Result<Outcome, Failure> {
    if let Some(skip) = skip_unless_bind(ctx) {
        return Ok(skip);
    }
    let (mut client, listen) = start_bind(ctx, Ipv4Addr::LOCALHOST)?;
    let mut peer = connect_to(listen).context("the peer connecting to the BIND port")?;
    expect_reply(&mut client, wire::GRANTED, "BIND second reply")?;

    peer.write_all(b"from the peer").context("peer writing")?;
    let got = read_exact_n(&mut client, 13, "client reading the peer's data")?;
    if got != b"from the peer" {
        bail!("client got {:?} instead of the peer's data", String::from_utf8_lossy(&got));
    }
    client.write_all(b"from the client").context("client writing")?;
    let got = read_exact_n(&mut peer, 15, "peer reading the client's data")?;
    if got != b"from the client" {
        bail!("peer got {:?} instead of the client's data", String::from_utf8_lossy(&got));
    }
    // A larger exchange: the peer echoes what the client sends.
    let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&payload).context("client writing 64 KiB")?;
    let got = read_exact_n(&mut peer, payload.len(), "peer reading 64 KiB")?;
    peer.write_all(&got).context("peer echoing 64 KiB")?;
    let back = read_exact_n(&mut client, payload.len(), "client reading 64 KiB back")?;
    if back != payload {
        bail!("64 KiB through the BIND relay came back different");
    }
    // The client closing is seen by the peer.
    client.shutdown(Shutdown::Write).context("client shutdown(Write)")?;
    expect_close(&mut peer, CLOSE_TIMEOUT, "peer after the client's shutdown(Write)")?;
    Ok(Outcome::Pass)
}

/// BIND expecting 127.0.0.2 while the peer comes from 127.0.0.1: second reply 91 and close,
/// and the peer's connection is closed too.
pub(crate) fn bind_wrong_peer(ctx: &Ctx) -> Result<Outcome, Failure> {
    if let Some(skip) = skip_unless_bind(ctx) {
        return Ok(skip);
    }
    let (mut client, listen) = start_bind(ctx, Ipv4Addr::new(127, 0, 0, 2))?;
    let mut peer = connect_to(listen).context("the (wrong) peer connecting to the BIND port")?;
    expect_reply(&mut client, wire::REJECTED, "BIND second reply for a peer from the wrong address")?;
    expect_close(&mut client, CLOSE_TIMEOUT, "client after the 91 second reply")?;
    // The peer may see a close, or (if it writes first) a reset; either way it must not stay open.
    let _ = peer.write_all(b"x");
    expect_close(&mut peer, CLOSE_TIMEOUT, "the wrong peer's connection")?;
    Ok(Outcome::Pass)
}

/// A BIND client that leaves while waiting for its peer frees its listening port at once: 5 BINDs
/// whose clients close right after the first reply; 1 s later every port refuses connections (not
/// only after the bind timeout). One probe per port, after the wait: a probe that connected would
/// itself be the awaited peer.
pub(crate) fn bind_client_leaves(ctx: &Ctx) -> Result<Outcome, Failure> {
    if let Some(skip) = skip_unless_bind(ctx) {
        return Ok(skip);
    }
    let mut ports = Vec::new();
    for _ in 0..5 {
        let (client, listen) = start_bind(ctx, Ipv4Addr::LOCALHOST)?;
        drop(client);
        ports.push(listen);
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    for listen in ports {
        if TcpStream::connect_timeout(&listen, std::time::Duration::from_secs(1)).is_ok() {
            bail!("{listen} still accepts 1 s after its BIND client left");
        }
    }
    Ok(Outcome::Pass)
}
