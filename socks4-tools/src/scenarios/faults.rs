//! Faults through the relay: a reset on one side reaches the other side as a reset (never as a
//! clean end of file), just as it does without a proxy. Each case runs directly first, then
//! through the proxy, and checks both.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use super::support::{CLOSE_TIMEOUT, Context, IO_TIMEOUT, bail, connect_to, is_timeout, open_connect, read_exact_n};
use super::{Ctx, Failure, Outcome};
use crate::checksum::pattern;
use crate::targets::{EndWatcher, Ending, ResetSource, reset};

/// Bytes the reset source sends before resetting.
const RESET_AFTER: u64 = 1 << 20;
/// How long a target's report of how a connection ended may take.
const ENDING_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client saw after the data: end of file, a reset, or something else.
fn read_end(s: &mut TcpStream) -> Result<Ending, Failure> {
    s.set_read_timeout(Some(CLOSE_TIMEOUT))?;
    let mut buf = [0u8; 64];
    loop {
        return Ok(match s.read(&mut buf) {
            Ok(0) => Ending::Eof,
            Ok(n) => bail!("{n} bytes more than were sent"),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
                Ending::Reset
            }
            Err(e) if is_timeout(&e) => bail!("neither an end of file nor a reset within {CLOSE_TIMEOUT:?}"),
            Err(e) => Ending::Other(e.to_string()),
        });
    }
}

/// Reads the source's bytes and checks them, acknowledges them with one byte (the source then
/// resets), and says how the connection ended.
fn read_then_end(s: &mut TcpStream, what: &str) -> Result<Ending, Failure> {
    let got = read_exact_n(s, RESET_AFTER as usize, &format!("{what}: reading the 1 MiB before the reset"))?;
    let mut want = vec![0u8; got.len()];
    pattern(4, 0, &mut want);
    if got != want {
        bail!("{what}: the bytes before the reset differ from those sent");
    }
    s.write_all(b"!").context(format!("{what}: acknowledging the bytes"))?;
    read_end(s).context(what)
}

/// The upstream sends 1 MiB, then resets: a client sees all the bytes, then a reset (not an end
/// of file, which would pass a truncated stream off as complete).
pub(crate) fn upstream_reset_reaches_client(ctx: &Ctx) -> Result<Outcome, Failure> {
    let source = ResetSource::start(RESET_AFTER, 4).context("starting the reset source")?;
    let mut direct = connect_to(SocketAddr::V4(source.addr()))?;
    let direct_end = read_then_end(&mut direct, "direct")?;
    if direct_end != Ending::Reset {
        bail!("without the proxy the client saw {direct_end:?}, not a reset: this platform cannot tell");
    }
    let mut s = open_connect(ctx, source.addr(), b"reset")?;
    match read_then_end(&mut s, "through the proxy")? {
        Ending::Reset => Ok(Outcome::Pass),
        other => bail!("a direct client sees a reset after the data; through the proxy it saw {other:?}"),
    }
}

/// Writes, reads the echo (so the relay is up), then resets; returns what the target saw.
fn echo_then_reset(mut s: TcpStream, watcher: &EndWatcher, what: &str) -> Result<Ending, Failure> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"ping").context(format!("{what}: writing"))?;
    let back = read_exact_n(&mut s, 4, &format!("{what}: reading the echo"))?;
    if back != b"ping" {
        bail!("{what}: the echo differs");
    }
    reset(s);
    match watcher.recv_ending(ENDING_TIMEOUT) {
        Some(ending) => Ok(ending),
        None => bail!("{what}: the target did not see its connection end within {ENDING_TIMEOUT:?}"),
    }
}

/// The client resets its connection: the upstream sees a reset, as it would without the proxy.
pub(crate) fn client_reset_reaches_upstream(ctx: &Ctx) -> Result<Outcome, Failure> {
    let watcher = EndWatcher::start().context("starting the end watcher")?;
    let addr: SocketAddrV4 = watcher.addr();
    let direct = echo_then_reset(connect_to(SocketAddr::V4(addr))?, &watcher, "direct")?;
    if direct != Ending::Reset {
        bail!("without the proxy the target saw {direct:?}, not a reset: this platform cannot tell");
    }
    match echo_then_reset(open_connect(ctx, addr, b"reset")?, &watcher, "through the proxy")? {
        Ending::Reset => Ok(Outcome::Pass),
        other => bail!("a direct client's reset reaches the target as a reset; through the proxy it saw {other:?}"),
    }
}
