//! CONNECT cases: plain, SOCKS4a, refused, split and early-data requests, user id limits, rules.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use super::support::{
    CLOSE_TIMEOUT, CONNECT_TIMEOUT, Context, IO_TIMEOUT, bail, connect_proxy, echo_round_trip, expect_quiet,
    expect_rejected, expect_rejected_or_closed, expect_reply, open_connect, read_exact_n, still_serves,
};
use super::{Ctx, Failure, Outcome};
use crate::targets::{EchoTarget, closed_port};
use crate::wire;

fn echo() -> Result<EchoTarget, Failure> {
    EchoTarget::start().context("starting the echo target")
}

/// CONNECT: the reply is exactly 8 bytes, VN 0, CD 90; then an echo round trip.
pub(crate) fn connect_basic(ctx: &Ctx) -> Result<Outcome, Failure> {
    let target = echo()?;
    let mut s = connect_proxy(ctx)?;
    s.write_all(&wire::connect(target.addr(), b"user")).context("sending CONNECT")?;
    expect_reply(&mut s, wire::GRANTED, "CONNECT reply")?;
    expect_quiet(&mut s, Duration::from_millis(200), "after the CONNECT reply")?;
    echo_round_trip(&mut s, b"hello through socks4", "echo")?;
    echo_round_trip(&mut s, &[0u8, 255, 4, 1, 0, 0], "second echo")?;
    Ok(Outcome::Pass)
}

/// SOCKS4a CONNECT to `localhost`: reply 90 and an echo round trip.
pub(crate) fn connect_4a_localhost(ctx: &Ctx) -> Result<Outcome, Failure> {
    if !ctx.profile.resolves_localhost {
        return Ok(Outcome::Skip("the profile says the server does not resolve localhost".into()));
    }
    let target = echo()?;
    let mut s = connect_proxy(ctx)?;
    s.write_all(&wire::connect_host("localhost", target.addr().port(), b"user")).context("sending a 4a CONNECT")?;
    expect_reply(&mut s, wire::GRANTED, "4a CONNECT to localhost")?;
    echo_round_trip(&mut s, b"hello via a host name", "echo")?;
    Ok(Outcome::Pass)
}

/// SOCKS4a CONNECT to an unresolvable name: exactly reply 91, then the server closes.
pub(crate) fn connect_4a_unresolvable(ctx: &Ctx) -> Result<Outcome, Failure> {
    let mut s = connect_proxy(ctx)?;
    // Resolution failure can be slow when no DNS server answers.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&wire::connect_host("no-such-host.invalid", 80, b"user")).context("sending a 4a CONNECT")?;
    expect_rejected(&mut s, "4a CONNECT to no-such-host.invalid")?;
    Ok(Outcome::Pass)
}

/// SOCKS4a CONNECT with an empty host name: reply 91 or a clean close; the server keeps serving.
pub(crate) fn connect_4a_empty_host(ctx: &Ctx) -> Result<Outcome, Failure> {
    let target = echo()?;
    let mut s = connect_proxy(ctx)?;
    s.write_all(&wire::connect_host("", target.addr().port(), b"user")).context("sending a 4a CONNECT")?;
    expect_rejected_or_closed(&mut s, CLOSE_TIMEOUT, "4a CONNECT with an empty host name")?;
    still_serves(ctx, target.addr())?;
    Ok(Outcome::Pass)
}

/// CONNECT to a port with nothing listening: reply 91, then close.
pub(crate) fn connect_refused(ctx: &Ctx) -> Result<Outcome, Failure> {
    let dest = closed_port().context("finding a closed port")?;
    let mut s = connect_proxy(ctx)?;
    s.write_all(&wire::connect(dest, b"user")).context("sending CONNECT")?;
    expect_rejected(&mut s, &format!("CONNECT to closed port {dest}"))?;
    Ok(Outcome::Pass)
}

/// The request delivered one byte at a time (TCP_NODELAY, small pauses) still works.
pub(crate) fn request_byte_at_a_time(ctx: &Ctx) -> Result<Outcome, Failure> {
    let target = echo()?;
    let mut s = connect_proxy(ctx)?;
    let req = wire::connect(target.addr(), b"trickle");
    for (i, b) in req.iter().enumerate() {
        s.write_all(&[*b]).context(format!("sending request byte {i}"))?;
        s.flush()?;
        thread::sleep(Duration::from_millis(15));
    }
    expect_reply(&mut s, wire::GRANTED, "CONNECT sent byte by byte")?;
    echo_round_trip(&mut s, b"trickled", "echo")?;
    Ok(Outcome::Pass)
}

/// The request and the first payload in one write: the payload reaches the target and returns.
pub(crate) fn early_data(ctx: &Ctx) -> Result<Outcome, Failure> {
    let target = echo()?;
    let mut s = connect_proxy(ctx)?;
    let payload = b"early data sent with the request";
    let mut msg = wire::connect(target.addr(), b"early");
    msg.extend_from_slice(payload);
    s.write_all(&msg).context("sending CONNECT and payload")?;
    expect_reply(&mut s, wire::GRANTED, "CONNECT with early data")?;
    let back = read_exact_n(&mut s, payload.len(), "reading the echoed early data")?;
    if back != payload {
        bail!("the early data came back different: {:?}", String::from_utf8_lossy(&back));
    }
    echo_round_trip(&mut s, b"and later data", "echo after early data")?;
    Ok(Outcome::Pass)
}

/// A user id exactly at the limit is accepted.
pub(crate) fn user_id_at_limit(ctx: &Ctx) -> Result<Outcome, Failure> {
    let Some(limit) = ctx.profile.user_id_limit else {
        return Ok(Outcome::Skip("user id limit unknown".into()));
    };
    let target = echo()?;
    let user = vec![b'u'; limit];
    let mut s = open_connect(ctx, target.addr(), &user).context(format!("user id of {limit} bytes"))?;
    echo_round_trip(&mut s, b"long user", "echo")?;
    Ok(Outcome::Pass)
}

/// A user id one byte over the limit: reply 91 or a clean close; the server keeps serving.
pub(crate) fn user_id_over_limit(ctx: &Ctx) -> Result<Outcome, Failure> {
    let Some(limit) = ctx.profile.user_id_limit else {
        return Ok(Outcome::Skip("user id limit unknown".into()));
    };
    let target = echo()?;
    let mut s = connect_proxy(ctx)?;
    let user = vec![b'u'; limit + 1];
    // The server may close while we are still writing: a write error is acceptable here.
    let _ = s.write_all(&wire::connect(target.addr(), &user));
    expect_rejected_or_closed(&mut s, CLOSE_TIMEOUT, &format!("user id of {} bytes", limit + 1))?;
    still_serves(ctx, target.addr())?;
    Ok(Outcome::Pass)
}

/// Rules: the denied user id gets 91, another user id gets 90.
pub(crate) fn rules_denied_user(ctx: &Ctx) -> Result<Outcome, Failure> {
    let Some(denied) = ctx.profile.denied_user.as_deref() else {
        return Ok(Outcome::Skip("no denied user id configured".into()));
    };
    let target = echo()?;
    let mut s = connect_proxy(ctx)?;
    s.write_all(&wire::connect(target.addr(), denied.as_bytes())).context("sending CONNECT")?;
    expect_rejected(&mut s, &format!("CONNECT as denied user {denied:?}"))?;
    let other = if denied == "allowed" { "someone-else" } else { "allowed" };
    let mut s = open_connect(ctx, target.addr(), other.as_bytes()).context(format!("CONNECT as user {other:?}"))?;
    echo_round_trip(&mut s, b"allowed", "echo")?;
    let _ = s.shutdown(Shutdown::Both);
    Ok(Outcome::Pass)
}

/// How much a rejected client sends after its request in [`rejected_client_drained`]: more than a
/// loopback receive buffer holds at first (128 KiB), less than the drain's bound (256 KiB).
const TRAILING_BYTES: usize = 200 * 1024;

/// A rejected client that sent 200 KiB after its request still gets its 91 and a clean close:
/// the server drains after the final reply (`socks4_server::linger`: write side shut, input read
/// and discarded until end of file, up to 256 KiB / 2 s) instead of closing with unread input,
/// which makes the kernel send a reset. On loopback the reply itself is never overtaken, so this
/// checks what the reset would do: with a 4 KiB send buffer the client's write of the 200 KiB
/// completes only if the server reads it (a closing server resets it), and after the reply the
/// client must see end of file, not a reset. (`binary::rejected_reply_survives_loss` shows the
/// reply itself lost to a reset, where a network namespace drops a packet.)
pub(crate) fn rejected_client_drained(ctx: &Ctx) -> Result<Outcome, Failure> {
    let Some(denied) = ctx.profile.denied_user.as_deref() else {
        return Ok(Outcome::Skip("no denied user id configured".into()));
    };
    let target = echo()?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(ctx.proxy), socket2::Type::STREAM, None)?;
    socket.set_send_buffer_size(4096)?;
    socket.connect_timeout(&ctx.proxy.into(), CONNECT_TIMEOUT).context("connecting to the proxy")?;
    let mut s = std::net::TcpStream::from(socket);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut sent = wire::connect(target.addr(), denied.as_bytes());
    sent.resize(sent.len() + TRAILING_BYTES, b'x');
    if let Err(e) = s.write_all(&sent) {
        bail!("sending a denied CONNECT and {TRAILING_BYTES} bytes after it: {e} (the server closed without draining)");
    }
    s.shutdown(Shutdown::Write).context("half-closing")?;
    expect_reply(&mut s, wire::REJECTED, &format!("CONNECT as denied user {denied:?}, then {TRAILING_BYTES} bytes"))?;
    let mut rest = [0u8; 64];
    match s.read(&mut rest) {
        Ok(0) => Ok(Outcome::Pass),
        Ok(n) => bail!("after reply 91: expected end of file, got {n} more bytes"),
        Err(e) => bail!("after reply 91: expected end of file, got {e} (closed with unread input)"),
    }
}
