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
    #[cfg(target_os = "linux")]
    if let Some(end) = splice::pump::<R>(&from, &to, count, last).await {
        return end;
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

/// Linux: the zero-copy relay of one direction, socket → pipe → socket with `splice(2)`.
#[cfg(target_os = "linux")]
mod splice {
    use std::cell::{Cell, RefCell};
    use std::io;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::time::Instant;

    use rustix::io::Errno;
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};

    use crate::runtime::Runtime;

    /// The most bytes one splice moves, and the capacity asked of each pipe: a direction never
    /// holds more than this in the proxy.
    const PIPE_LEN: usize = 256 * 1024;
    /// Free pipes a worker keeps for reuse.
    const PIPES_KEPT: usize = 16;

    /// A pipe borrowed from the worker thread's pool; it goes back when dropped empty.
    struct Pipe {
        /// Read and write ends (always `Some` until dropped).
        ends: Option<(OwnedFd, OwnedFd)>,
        /// Bytes in the pipe.
        held: Cell<usize>,
    }

    thread_local! {
        static PIPES: RefCell<Vec<(OwnedFd, OwnedFd)>> = const { RefCell::new(Vec::new()) };
    }

    impl Pipe {
        fn take() -> Option<Pipe> {
            let ends = match PIPES.with(|p| p.borrow_mut().pop()) {
                Some(ends) => ends,
                None => {
                    let ends = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
                    // Fewer, larger splices; the default capacity (64 KiB) works too.
                    let _ = fcntl_setpipe_size(&ends.1, PIPE_LEN);
                    ends
                }
            };
            Some(Pipe { ends: Some(ends), held: Cell::new(0) })
        }

        fn ends(&self) -> io::Result<(BorrowedFd<'_>, BorrowedFd<'_>)> {
            match &self.ends {
                Some((r, w)) => Ok((r.as_fd(), w.as_fd())),
                None => Err(io::Error::other("pipe already returned")),
            }
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            // A pipe still holding bytes (the relay failed) is closed, never reused.
            let Some(ends) = self.ends.take().filter(|_| self.held.get() == 0) else { return };
            // During thread teardown the pool may be gone: the pipe is then simply closed.
            let _ = PIPES.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < PIPES_KEPT {
                    p.push(ends);
                }
            });
        }
    }

    /// Relays `from` → `to` with `splice(2)` until end of file, then half-closes `to`. `None`
    /// when the runtime or the kernel cannot splice these streams, or no pipe can be had (e.g.
    /// out of descriptors), with nothing in flight: the caller copies the rest instead.
    pub(super) async fn pump<R: Runtime>(
        from: &R::Stream,
        to: &R::Stream,
        count: &Cell<u64>,
        last: &Cell<Instant>,
    ) -> Option<io::Result<()>> {
        let (src, dst) = (R::fd(from)?, R::fd(to)?);
        if R::readable(from).is_none() || R::writable(to).is_none() {
            return None;
        }
        let mut moved_any = false;
        loop {
            if let Some(ready) = R::readable(from) {
                if let Err(e) = ready.await {
                    return Some(Err(e));
                }
            }
            // No pipe now (out of descriptors): copy this stretch instead.
            let pipe = Pipe::take()?;
            let (pipe_read, pipe_write) = match pipe.ends() {
                Ok(ends) => ends,
                Err(e) => return Some(Err(e)),
            };
            loop {
                match splice(src, None, pipe_write, None, PIPE_LEN, SpliceFlags::MOVE | SpliceFlags::NONBLOCK) {
                    Ok(0) => {
                        drop(pipe);
                        return Some(R::shutdown_write(to));
                    }
                    Ok(n) => {
                        moved_any = true;
                        pipe.held.set(n);
                        last.set(Instant::now());
                    }
                    // Drained: give the pipe back and wait for more without it.
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if !moved_any => return None,
                    Err(e) => return Some(Err(e.into())),
                }
                while pipe.held.get() > 0 {
                    let held = pipe.held.get();
                    match splice(pipe_read, None, dst, None, held, SpliceFlags::MOVE | SpliceFlags::NONBLOCK) {
                        Ok(0) => return Some(Err(io::ErrorKind::WriteZero.into())),
                        Ok(k) => {
                            pipe.held.set(held - k.min(held));
                            count.set(count.get() + k as u64);
                            last.set(Instant::now());
                        }
                        Err(Errno::AGAIN) => {
                            if let Some(ready) = R::writable(to) {
                                if let Err(e) = ready.await {
                                    return Some(Err(e));
                                }
                            }
                        }
                        Err(Errno::INTR) => {}
                        Err(e) => return Some(Err(e.into())),
                    }
                }
            }
        }
    }
}
