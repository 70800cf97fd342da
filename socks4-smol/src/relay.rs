//! Relaying bytes both ways between two streams: early data first, half-close propagated, an idle
//! timeout over both directions, byte counts for the log line.

use std::cell::{Cell, RefCell};
use std::io;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;

/// Bytes read per call. A direction borrows a buffer from its worker's pool while bytes flow.
const BUF_LEN: usize = 32 * 1024;

/// Byte counts of one relay, readable while it runs (for a log line written on cancellation).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Client → destination.
    pub(crate) up: Cell<u64>,
    /// Destination → client.
    pub(crate) down: Cell<u64>,
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both directions reached end of file.
    Done,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// A read, write or shutdown failed.
    Error(io::Error),
}

/// Relays `client` ⇄ `dest` until both directions have ended, one fails, or both are idle for
/// `idle`. `early` (client bytes that arrived with the request) goes to `dest` first.
pub(crate) async fn relay<R: Runtime>(
    client: R::Stream,
    dest: R::Stream,
    early: &[u8],
    idle: Duration,
    counts: &Counts,
) -> RelayEnd {
    let last = Cell::new(Instant::now());
    let up = pump::<R>(client.clone(), dest.clone(), early, &counts.up, &last);
    let down = pump::<R>(dest, client, &[], &counts.down, &last);
    let both = async {
        match future::try_zip(up, down).await {
            Ok(_) => RelayEnd::Done,
            Err(e) => RelayEnd::Error(e),
        }
    };
    let watchdog = async {
        loop {
            let since = last.get().elapsed();
            if since >= idle {
                return RelayEnd::Idle;
            }
            R::sleep(idle - since).await;
        }
    };
    future::or(both, watchdog).await
}

/// Copies `from` → `to` (after `first`) until end of file, then half-closes `to`.
///
/// The buffer is borrowed from the worker's [`BufPool`] only while bytes flow: on a runtime that
/// can wait for readability ([`Runtime::readable`]), an idle direction holds no buffer at all.
async fn pump<R: Runtime>(
    mut from: R::Stream,
    mut to: R::Stream,
    first: &[u8],
    count: &Cell<u64>,
    last: &Cell<Instant>,
) -> io::Result<()> {
    if !first.is_empty() {
        to.write_all(first).await?;
        count.set(count.get() + first.len() as u64);
        last.set(Instant::now());
    }
    loop {
        let can_wait = match R::readable(&from) {
            Some(ready) => {
                ready.await?;
                true
            }
            None => false,
        };
        let mut buf = BufPool::take();
        loop {
            let n = if can_wait {
                match future::poll_once(from.read(&mut buf[..])).await {
                    Some(n) => n?,
                    // Drained: give the buffer back and wait for more without it.
                    None => break,
                }
            } else {
                from.read(&mut buf[..]).await?
            };
            if n == 0 {
                drop(buf);
                to.flush().await?;
                return R::shutdown_write(&to);
            }
            last.set(Instant::now());
            to.write_all(&buf[..n]).await?;
            count.set(count.get() + n as u64);
            last.set(Instant::now());
        }
    }
}

/// A relay buffer borrowed from the worker thread's pool; it goes back when dropped.
struct PooledBuf(Box<[u8]>);

/// Each worker thread's free relay buffers: an idle connection holds none, and a busy worker
/// reuses them instead of allocating per read. At most [`POOL_KEEP`] are kept.
struct BufPool;

/// Free buffers a worker keeps for reuse (the rest are freed).
const POOL_KEEP: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

impl BufPool {
    fn take() -> PooledBuf {
        let buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUF_LEN].into_boxed_slice());
        PooledBuf(buf)
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // During thread teardown the pool may be gone: the buffer is then simply freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_KEEP {
                p.push(buf);
            }
        });
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}
