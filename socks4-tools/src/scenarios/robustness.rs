//! Bad clients: garbage, HTTP, abandoned handshakes, silent and stalled clients. After each, the
//! server must still serve.

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::support::{CLOSE_TIMEOUT, Context, bail, connect_proxy, expect_rejected_or_closed, still_serves};
use super::{Ctx, Failure, Outcome};
use crate::checksum::pattern;
use crate::targets::EchoTarget;
use crate::wire;

/// How long a server may take to get rid of a bad client: a few seconds, or its handshake
/// timeout plus a margin if that is longer (a server may simply wait for the timeout).
fn bad_input_deadline(ctx: &Ctx) -> Duration {
    let by_timeout = ctx.profile.handshake_timeout.map_or(Duration::ZERO, |t| t + MARGIN);
    CLOSE_TIMEOUT.max(by_timeout)
}

/// Margin over the handshake timeout.
const MARGIN: Duration = Duration::from_secs(3);

fn bad_input(ctx: &Ctx, input: &[u8], what: &str) -> Result<Outcome, Failure> {
    let target = EchoTarget::start().context("starting the echo target")?;
    let mut s = connect_proxy(ctx)?;
    // The server may close while we write: that is fine.
    let _ = s.write_all(input);
    expect_rejected_or_closed(&mut s, bad_input_deadline(ctx), what)?;
    still_serves(ctx, target.addr())?;
    Ok(Outcome::Pass)
}

/// Random bytes with VN != 4: reply 91 or a close in bounded time; the server keeps serving.
pub(crate) fn garbage_input(ctx: &Ctx) -> Result<Outcome, Failure> {
    let mut junk = vec![0u8; 64];
    pattern(0x6a75_6e6b, 0, &mut junk);
    junk[0] = 0x17; // not 4
    junk[1] = 1;
    bad_input(ctx, &junk, "garbage (VN 0x17)")
}

/// An HTTP request instead of SOCKS: reply 91 or a close; the server keeps serving.
pub(crate) fn http_request(ctx: &Ctx) -> Result<Outcome, Failure> {
    bad_input(ctx, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "an HTTP request")
}

/// Half a request then a close, 50 times; the server keeps serving.
pub(crate) fn mid_handshake_disconnects(ctx: &Ctx) -> Result<Outcome, Failure> {
    let target = EchoTarget::start().context("starting the echo target")?;
    let req = wire::connect(target.addr(), b"abandoned");
    for i in 0..50 {
        let mut s = connect_proxy(ctx).context(format!("connection {i}"))?;
        let cut = 1 + i % (req.len() - 1);
        let _ = s.write_all(&req[..cut]);
        if i % 2 == 0 {
            let _ = s.shutdown(Shutdown::Both);
        }
        drop(s);
    }
    still_serves(ctx, target.addr())?;
    Ok(Outcome::Pass)
}

/// A silent client and one that sends 3 bytes then stalls: the server closes both within the
/// handshake timeout plus a margin. Skips if the timeout is unknown.
pub(crate) fn silent_client_timeout(ctx: &Ctx) -> Result<Outcome, Failure> {
    let Some(timeout) = ctx.profile.handshake_timeout else {
        return Ok(Outcome::Skip("handshake timeout unknown".into()));
    };
    let target = EchoTarget::start().context("starting the echo target")?;
    let limit = timeout + MARGIN;
    let silent_start = Instant::now();
    let mut silent = connect_proxy(ctx).context("silent client")?;
    let stalled_start = Instant::now();
    let mut stalled = connect_proxy(ctx).context("stalled client")?;
    stalled.write_all(&[4, 1, 0]).context("stalled client writing 3 bytes")?;
    for (name, s, start) in [("silent", &mut silent, silent_start), ("stalled", &mut stalled, stalled_start)] {
        let left = limit.saturating_sub(start.elapsed());
        expect_rejected_or_closed(s, left.max(Duration::from_millis(1)), &format!("{name} client"))
            .context(format!("handshake timeout {timeout:?} + {MARGIN:?} margin"))?;
        let took = start.elapsed();
        if took > limit {
            bail!("the {name} client was closed after {took:?}, more than {limit:?}");
        }
    }
    still_serves(ctx, target.addr())?;
    Ok(Outcome::Pass)
}
