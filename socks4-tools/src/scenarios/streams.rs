//! Byte streams through the relay: half-close in both directions, bulk transfer both ways, and
//! TCP urgent data.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use super::support::{CLOSE_TIMEOUT, Context, bail, expect_close, is_close, is_timeout, open_connect, read_exact_n};
use super::{Ctx, Failure, Outcome};
use crate::checksum::{Fnv1a, pattern, pattern_checksum};
use crate::targets::{EchoTarget, Report, SinkTarget, SourceTarget};

/// Bytes in flight for the half-close cases.
const HALF_CLOSE_BYTES: u64 = 1 << 20;
/// How long a target's report may take to arrive.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

/// Writes `len` bytes of stream `seed` to `s`.
fn write_pattern(s: &mut TcpStream, seed: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        pattern(seed, off, &mut buf[..n]);
        s.write_all(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

/// Reads until EOF (at most `limit` bytes accepted), hashing; a timeout or reset fails.
fn read_to_eof(s: &mut TcpStream, limit: u64, what: &str) -> Result<Fnv1a, Failure> {
    let mut h = Fnv1a::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(h),
            Ok(n) => {
                h.update(&buf[..n]);
                if h.count() > limit {
                    bail!("{what}: more than the expected {limit} bytes arrived");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => bail!("{what}: timed out after {} bytes, no EOF", h.count()),
            Err(e) if is_close(&e) => bail!("{what}: connection reset after {} bytes", h.count()),
            Err(e) => bail!("{what}: read failed after {} bytes: {e}", h.count()),
        }
    }
}

/// (a) The client writes 1 MiB then `shutdown(Write)`; the sink reads to EOF and replies with
/// count and checksum, which the client must still receive.
pub(crate) fn half_close_client_first(ctx: &Ctx) -> Result<Outcome, Failure> {
    let sink = SinkTarget::replying().context("starting the sink target")?;
    let mut s = open_connect(ctx, sink.addr(), b"half-close")?;
    write_pattern(&mut s, 1, HALF_CLOSE_BYTES).context("client writing 1 MiB")?;
    s.shutdown(Shutdown::Write).context("client shutdown(Write)")?;
    let reply = read_exact_n(&mut s, Report::WIRE_LEN, "reading the sink's reply after our half-close")?;
    let mut arr = [0u8; Report::WIRE_LEN];
    arr.copy_from_slice(&reply);
    let got = Report::from_bytes(&arr);
    let want = pattern_checksum(1, HALF_CLOSE_BYTES);
    if got.bytes != want.count() || got.checksum != want.value() {
        bail!(
            "the sink saw {} bytes (checksum {:#x}); sent {} (checksum {:#x})",
            got.bytes,
            got.checksum,
            want.count(),
            want.value()
        );
    }
    expect_close(&mut s, CLOSE_TIMEOUT, "after the sink's reply")?;
    Ok(Outcome::Pass)
}

/// (b) The source sends 1 MiB then shuts down its write side; the client reads to EOF, checks
/// every byte arrived, then sends more, which must reach the target (it reports what it got).
pub(crate) fn half_close_target_first(ctx: &Ctx) -> Result<Outcome, Failure> {
    let source = SourceTarget::start(HALF_CLOSE_BYTES, 2).context("starting the source target")?;
    let mut s = open_connect(ctx, source.addr(), b"half-close")?;
    let got = read_to_eof(&mut s, HALF_CLOSE_BYTES, "client reading the source's 1 MiB")?;
    let want = pattern_checksum(2, HALF_CLOSE_BYTES);
    if got != want {
        bail!(
            "received {} bytes (checksum {:#x}); the source sent {} (checksum {:#x})",
            got.count(),
            got.value(),
            want.count(),
            want.value()
        );
    }
    let after = b"sent after the target's half-close";
    s.write_all(after).context("writing after the target's half-close")?;
    s.shutdown(Shutdown::Write).context("client shutdown(Write)")?;
    let Some(report) = source.recv_report(REPORT_TIMEOUT) else {
        bail!("the source target did not see our data and EOF within {REPORT_TIMEOUT:?}");
    };
    let want = Fnv1a::of(after);
    if !report.eof || report.bytes != want.count() || report.checksum != want.value() {
        bail!(
            "after its half-close the target received {} bytes (eof: {}), expected {}",
            report.bytes,
            report.eof,
            want.count()
        );
    }
    Ok(Outcome::Pass)
}

/// Bulk: `profile.bulk_bytes` each way at once through one connection to an echo target (a
/// writer thread and a reader thread); every byte is checked against the deterministic pattern.
pub(crate) fn bulk_both_ways(ctx: &Ctx) -> Result<Outcome, Failure> {
    let len = ctx.profile.bulk_bytes;
    let target = EchoTarget::start().context("starting the echo target")?;
    let mut s = open_connect(ctx, target.addr(), b"bulk")?;
    let mut w = s.try_clone().context("cloning the socket")?;
    let writer = thread::Builder::new()
        .name("bulk-writer".into())
        .spawn(move || -> Result<(), Failure> {
            write_pattern(&mut w, 3, len).context("bulk writer")?;
            w.shutdown(Shutdown::Write).context("bulk writer shutdown(Write)")?;
            Ok(())
        })
        .context("spawning the writer")?;
    let read_result = read_and_verify(&mut s, 3, len);
    if read_result.is_err() {
        // Unblock the writer so it can be joined.
        let _ = s.shutdown(Shutdown::Both);
    }
    let write_result = writer.join().map_err(|_| Failure::new("the bulk writer panicked"))?;
    read_result?;
    write_result?;
    Ok(Outcome::Pass)
}

fn read_and_verify(s: &mut TcpStream, seed: u64, len: u64) -> Result<(), Failure> {
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let max = (len - off).min(CHUNK as u64) as usize;
        let n = match s.read(&mut buf[..max]) {
            Ok(0) => bail!("bulk reader: EOF after {off} of {len} bytes"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("bulk reader: error after {off} of {len} bytes: {e}"),
        };
        pattern(seed, off, &mut want[..n]);
        if buf[..n] != want[..n] {
            let i = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b).unwrap_or(0);
            bail!("bulk reader: wrong byte at offset {}", off + i as u64);
        }
        off += n as u64;
    }
    Ok(())
}

/// Bytes of [`urgent_data_both_ways`]'s bulk part: enough for a relay to move them by splice.
const URGENT_BULK: usize = 256 * 1024;

/// Writes `bytes` to `s` with the byte at each of `marks` sent as TCP urgent data (`MSG_OOB`,
/// as telnet and FTP send a "Synch" on an abort), the bytes between in ordinary writes.
fn write_with_urgent(s: &TcpStream, bytes: &[u8], marks: &[usize]) -> io::Result<()> {
    let sock = socket2::SockRef::from(s);
    let mut from = 0;
    for &at in marks {
        (&*s).write_all(&bytes[from..at])?;
        if sock.send_out_of_band(&bytes[at..=at])? != 1 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        from = at + 1;
    }
    (&*s).write_all(&bytes[from..])
}

/// The bytes [`urgent_data_both_ways`] sends each way, and where its urgent bytes are: a short
/// exchange (`ab`, urgent `U`, `cd`: relayed by copying), then [`URGENT_BULK`] bytes with an
/// urgent byte near the end (relayed by splice where the server splices).
fn urgent_stream(seed: u64) -> (Vec<u8>, [usize; 2]) {
    let mut bytes = b"abUcd".to_vec();
    let mut bulk = vec![0u8; URGENT_BULK];
    pattern(seed, 0, &mut bulk);
    bytes.extend_from_slice(&bulk);
    (bytes, [2, 5 + URGENT_BULK - 1024])
}

/// Reads exactly `want.len()` bytes (no end of file needed) and checks them.
fn expect_bytes(s: &mut TcpStream, want: &[u8], what: &str) -> Result<(), Failure> {
    let got = read_exact_n(s, want.len(), what)?;
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        bail!("{what}: byte {i} is {:#04x}, sent {:#04x}", got[i], want[i]);
    }
    Ok(())
}

/// TCP urgent data is relayed in its place, both ways, with nothing lost and no stall: the client
/// sends a short stream and then a bulk one, each with a byte sent as urgent data (`MSG_OOB`), to
/// an echo target and reads every byte back without closing; then a target sends the same to the
/// client. The urgency itself does not cross (a proxy relays a byte stream); the byte must, and
/// the bytes after it too, although a read stops at the urgent mark and a splice cannot pass it.
pub(crate) fn urgent_data_both_ways(ctx: &Ctx) -> Result<Outcome, Failure> {
    let (bytes, marks) = urgent_stream(11);
    let echo = EchoTarget::start().context("starting the echo target")?;
    let mut s = open_connect(ctx, echo.addr(), b"urgent")?;
    let writer = s.try_clone().context("cloning the socket")?;
    let sent = bytes.clone();
    let writing = thread::spawn(move || write_with_urgent(&writer, &sent, &marks));
    let echoed = expect_bytes(&mut s, &bytes, "the echo of bytes sent with urgent data");
    if echoed.is_err() {
        let _ = s.shutdown(Shutdown::Both); // unblocks the writer
    }
    let written = writing.join().map_err(|_| Failure::new("the urgent writer panicked"))?;
    echoed?;
    written.context("client writing with urgent data")?;
    drop(s);

    // The other way: a target that sends the same (and then waits for the client to close).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the urgent target")?;
    let std::net::SocketAddr::V4(addr) = listener.local_addr()? else { bail!("not IPv4") };
    let sent = bytes.clone();
    let target = thread::spawn(move || -> io::Result<()> {
        let (conn, _) = listener.accept()?;
        write_with_urgent(&conn, &sent, &marks)?;
        conn.set_read_timeout(Some(REPORT_TIMEOUT))?;
        let _ = (&conn).read(&mut [0u8; 1]); // until the client closes
        Ok(())
    });
    let mut s = open_connect(ctx, addr, b"urgent")?;
    let received = expect_bytes(&mut s, &bytes, "bytes a target sent with urgent data");
    drop(s);
    let served = target.join().map_err(|_| Failure::new("the urgent target panicked"))?;
    received?;
    served.context("the target writing with urgent data")?;
    Ok(Outcome::Pass)
}
