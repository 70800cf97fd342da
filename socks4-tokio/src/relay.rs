//! The relay between the client and the destination (or BIND peer): early bytes first, both
//! directions at once, half-close propagated, idle timeout.
//!
//! Buffers are taken from a per-thread pool only while bytes are in flight, so an idle relayed
//! connection holds no buffer.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::conn::Record;

/// Size of one relay buffer.
const BUF_SIZE: usize = 16 * 1024;
/// Most idle buffers a worker keeps for reuse.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A relay buffer borrowed from the thread's pool; returned on drop.
struct PooledBuf(Box<[u8]>);

impl PooledBuf {
    fn take() -> Self {
        let reused = POOL.with(|p| p.borrow_mut().pop());
        PooledBuf(reused.unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice()))
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        });
    }
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both directions reached EOF.
    Done,
    /// No bytes either way for the idle timeout.
    Idle,
    /// A socket failed (what was being done, and the error); both ends are closed.
    Error(&'static str, io::Error),
}

/// Relays until both directions end, one fails, or the connection is idle for `idle`.
/// `early` (client bytes that came with the request) goes upstream first.
pub(crate) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    early: Vec<u8>,
    idle: Duration,
    record: &Record,
) -> RelayEnd {
    let last = Cell::new(Instant::now());
    if !early.is_empty() {
        if let Err(e) = write_all(upstream, &early).await {
            return RelayEnd::Error("writing early data upstream", e);
        }
        record.up.set(early.len() as u64);
    }
    drop(early);
    let up = pump(client, upstream, &record.up, &last, ("reading client", "writing upstream"));
    let down = pump(upstream, client, &record.down, &last, ("reading upstream", "writing client"));
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => RelayEnd::Done,
            Err((what, e)) => RelayEnd::Error(what, e),
        },
        () = idle_watch(&last, idle) => RelayEnd::Idle,
    }
}

/// Copies `src` to `dst` until EOF, then shuts down `dst`'s write side.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    count: &Cell<u64>,
    last: &Cell<Instant>,
    what: (&'static str, &'static str),
) -> Result<(), (&'static str, io::Error)> {
    loop {
        src.readable().await.map_err(|e| (what.0, e))?;
        let mut buf = PooledBuf::take();
        let n = match src.try_read(&mut buf.0) {
            Ok(0) => {
                // Half-close: the other direction goes on. The peer may be gone already.
                let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((what.0, e)),
        };
        last.set(Instant::now());
        write_all(dst, &buf.0[..n]).await.map_err(|e| (what.1, e))?;
        count.set(count.get() + n as u64);
        last.set(Instant::now());
    }
}

/// Returns once `last` is `idle` old.
async fn idle_watch(last: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Writes all of `data` to `stream`.
pub(crate) async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
