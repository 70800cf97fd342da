//! Relaying bytes both ways between two streams, driving the core's [`Relay`] bookkeeping: early
//! data first, a half-close passed on as a half-close and a reset as a reset, an idle timeout
//! over both directions, byte counts for the log line.
//!
//! With bandwidth caps ([`ConnBandwidth`]) a direction asks for a grant once its source is
//! readable, reads or splices at most that, gives back the rest, and sleeps (without its buffer or
//! pipe) when the caps say so; the other direction and the idle watch go on meanwhile. Without
//! caps it is one `None` check per read. On a runtime that cannot wait for readability
//! (async-std) the grant is asked before the read, so an idle direction may hold one buffer's
//! worth of its user's or client's shared cap until data comes.

use std::cell::{Cell, RefCell};
use std::io;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use socks4_core::{Fault, Relay, RelayEnd, Side};
use socks4_server::bandwidth::{ConnBandwidth, Direction, Grant};

use crate::runtime::Runtime;

/// Bytes read per call. A direction borrows a buffer from its worker's pool while bytes flow.
const BUF_LEN: usize = 32 * 1024;

/// A pump stops early with the relay's end.
type Stop = RelayEnd;

/// Byte counts of one relay for the log line, set when the relay ends or is dropped (shutdown).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Client → destination.
    pub(crate) up: Cell<u64>,
    /// Destination → client.
    pub(crate) down: Cell<u64>,
}

/// What the two pumps and the idle watch share: the core's bookkeeping, the two streams, the
/// clock, and where the counts go when the relay ends or is dropped.
struct Shared<'a, R: Runtime> {
    relay: RefCell<Relay>,
    client: &'a R::Stream,
    upstream: &'a R::Stream,
    start: Instant,
    counts: &'a Counts,
    /// The bandwidth caps' buckets of this connection; `None` without caps.
    bandwidth: Option<Box<ConnBandwidth>>,
}

impl<R: Runtime> Drop for Shared<'_, R> {
    fn drop(&mut self) {
        let relay = self.relay.get_mut();
        self.counts.up.set(relay.bytes(Side::Client));
        self.counts.down.set(relay.bytes(Side::Upstream));
        if relay.end().is_none() {
            // Cut before its end (the shutdown grace ran out): both sides see a reset, never a
            // clean end of file, so a cut transfer cannot pass for a complete one.
            for side in [Side::Client, Side::Upstream] {
                drop(R::set_abortive(self.socket(side)));
            }
        }
    }
}

impl<R: Runtime> Shared<'_, R> {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn socket(&self, side: Side) -> &R::Stream {
        match side {
            Side::Client => self.client,
            Side::Upstream => self.upstream,
        }
    }

    /// Feeds the relay one input, then performs what it asks; `Err` once it is done.
    fn feed(&self, input: impl FnOnce(&mut Relay, Duration)) -> Result<(), Stop> {
        let mut relay = self.relay.borrow_mut();
        input(&mut relay, self.now());
        let end = relay.settle(
            // The peer may be gone already: the direction is over either way.
            |side| drop(R::shutdown_write(self.socket(side))),
            // Closing the stream (its last handle drops when the relay returns) then resets.
            |side| drop(R::set_abortive(self.socket(side))),
        );
        end.map_or(Ok(()), Err)
    }

    /// How many of `wanted` bytes may move from `from` now (all of them without caps), or how
    /// long to wait before asking again.
    fn grant(&self, from: Side, wanted: usize) -> Result<usize, Duration> {
        let Some(bandwidth) = &self.bandwidth else { return Ok(wanted) };
        match bandwidth.grant(Direction::from(from), Instant::now(), wanted) {
            Grant::Now(n) => Ok(n),
            Grant::After(wait) => Err(wait),
        }
    }

    /// Gives back the part of a [`grant`](Self::grant) that did not move.
    fn refund(&self, from: Side, unused: usize) {
        if let Some(bandwidth) = &self.bandwidth {
            bandwidth.refund(Direction::from(from), unused);
        }
    }

    fn read(&self, from: Side, n: usize) -> Result<(), Stop> {
        self.feed(|r, now| r.handle_read(now, from, n))
    }

    fn written(&self, from: Side, n: usize) -> Result<(), Stop> {
        self.feed(|r, now| r.handle_written(now, from, n))
    }

    fn eof(&self, from: Side) -> Result<(), Stop> {
        self.feed(|r, now| r.handle_eof(now, from))
    }

    fn error(&self, on: Side, e: &io::Error) -> Stop {
        tracing::debug!("relay: {on}: {e}");
        match self.feed(|r, now| r.handle_error(now, on, Fault::from(e))) {
            Err(end) => end,
            Ok(()) => RelayEnd::Error(on),
        }
    }
}

/// Waits `wait` (a cap's), if any. Boxed: only a capped relay pays for a timer in its state.
async fn pause<R: Runtime>(wait: Option<Duration>) {
    if let Some(wait) = wait {
        Box::pin(R::sleep(wait)).await;
    }
}

/// Relays `client` ⇄ `upstream` until both directions have ended, one side fails (the other is
/// then reset), or both are idle for `idle`, driving the core's [`Relay`]; the counts go to
/// `counts`. `early` (client bytes that arrived with the request) goes upstream first; it is not
/// charged to the caps (at most one request buffer). `bandwidth`: the connection's caps, if any.
pub(crate) async fn relay<R: Runtime>(
    client: R::Stream,
    upstream: R::Stream,
    early: &[u8],
    idle: Duration,
    bandwidth: Option<Box<ConnBandwidth>>,
    counts: &Counts,
) -> RelayEnd {
    let start = Instant::now();
    let relay = RefCell::new(Relay::new(Duration::ZERO, idle));
    let sh = Shared::<R> { relay, client: &client, upstream: &upstream, start, counts, bandwidth };
    let up = pump(&sh, Side::Client, early);
    let down = pump(&sh, Side::Upstream, &[]);
    let both = async {
        match future::try_zip(up, down).await {
            // Both directions ended: the relay says so (`Closed`).
            Ok(_) => sh.feed(|_, _| {}).err().unwrap_or(RelayEnd::Closed),
            Err(end) => end,
        }
    };
    let watchdog = async {
        loop {
            let Some(deadline) = sh.relay.borrow().deadline() else {
                return future::pending().await;
            };
            R::sleep(deadline.saturating_sub(sh.now())).await;
            if let Err(end) = sh.feed(|r, now| r.handle_timeout(now)) {
                return end;
            }
        }
    };
    future::or(both, watchdog).await
}

/// Copies `from` to its peer (after `first`) until end of file, which the relay passes on as a
/// half-close; `Err` once the relay is over.
///
/// The buffer is borrowed from the worker's [`BufPool`] only while bytes flow: on a runtime that
/// can wait for readability ([`Runtime::readable`]), an idle direction holds no buffer at all.
async fn pump<R: Runtime>(sh: &Shared<'_, R>, from: Side, first: &[u8]) -> Result<(), Stop> {
    let (mut src, mut dst) = (sh.socket(from).clone(), sh.socket(from.peer()).clone());
    if !first.is_empty() {
        sh.read(from, first.len())?;
        dst.write_all(first).await.map_err(|e| sh.error(from.peer(), &e))?;
        sh.written(from, first.len())?;
    }
    #[cfg(target_os = "linux")]
    if let Some(end) = splice::pump(sh, from).await {
        return end;
    }
    // A cap's wait before the next read, if one was asked for.
    let mut wait = None;
    loop {
        pause::<R>(wait.take()).await;
        let can_wait = match R::readable(&src) {
            Some(ready) => {
                ready.await.map_err(|e| sh.error(from, &e))?;
                true
            }
            None => false,
        };
        let mut buf = BufPool::take();
        loop {
            let allowed = match sh.grant(from, buf.len()) {
                Ok(n) => n,
                // Capped: wait without the buffer.
                Err(d) => {
                    wait = Some(d);
                    break;
                }
            };
            let read = if can_wait {
                match future::poll_once(src.read(&mut buf[..allowed])).await {
                    Some(read) => read,
                    // Drained: give the buffer back and wait for more without it.
                    None => {
                        sh.refund(from, allowed);
                        break;
                    }
                }
            } else {
                src.read(&mut buf[..allowed]).await
            };
            sh.refund(from, allowed - read.as_ref().map_or(0, |&n| n));
            let n = read.map_err(|e| sh.error(from, &e))?;
            if n == 0 {
                drop(buf);
                dst.flush().await.map_err(|e| sh.error(from.peer(), &e))?;
                return sh.eof(from);
            }
            sh.read(from, n)?;
            dst.write_all(&buf[..n]).await.map_err(|e| sh.error(from.peer(), &e))?;
            sh.written(from, n)?;
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

    use rustix::io::Errno;
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    use socks4_core::Side;

    use super::{Shared, Stop, pause};
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

    /// Relays `from` → its peer with `splice(2)` until end of file (which the relay passes on).
    /// `None` when the runtime or the kernel cannot splice these streams, or no pipe can be had
    /// (e.g. out of descriptors), with nothing in flight: the caller copies the rest instead.
    pub(super) async fn pump<R: Runtime>(sh: &Shared<'_, R>, side: Side) -> Option<Result<(), Stop>> {
        let (from, to) = (sh.socket(side), sh.socket(side.peer()));
        let (src, dst) = (R::fd(from)?, R::fd(to)?);
        if R::readable(from).is_none() || R::writable(to).is_none() {
            return None;
        }
        let mut moved_any = false;
        // A cap's wait before the next splice, if one was asked for.
        let mut wait = None;
        loop {
            pause::<R>(wait.take()).await;
            if let Some(ready) = R::readable(from) {
                if let Err(e) = ready.await {
                    return Some(Err(sh.error(side, &e)));
                }
            }
            // No pipe now (out of descriptors): copy this stretch instead.
            let pipe = Pipe::take()?;
            let (pipe_read, pipe_write) = match pipe.ends() {
                Ok(ends) => ends,
                Err(e) => return Some(Err(sh.error(side, &e))),
            };
            loop {
                // The pipe is empty here: a capped direction waits without it.
                let allowed = match sh.grant(side, PIPE_LEN) {
                    Ok(n) => n,
                    Err(d) => {
                        wait = Some(d);
                        break;
                    }
                };
                let spliced = splice(src, None, pipe_write, None, allowed, SpliceFlags::MOVE | SpliceFlags::NONBLOCK);
                sh.refund(side, allowed - spliced.unwrap_or(0));
                match spliced {
                    Ok(0) => {
                        drop(pipe);
                        return Some(sh.eof(side));
                    }
                    Ok(n) => {
                        moved_any = true;
                        pipe.held.set(n);
                        if let Err(end) = sh.read(side, n) {
                            return Some(Err(end));
                        }
                    }
                    // Drained: give the pipe back and wait for more without it.
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if !moved_any => return None,
                    Err(e) => return Some(Err(sh.error(side, &e.into()))),
                }
                while pipe.held.get() > 0 {
                    let held = pipe.held.get();
                    match splice(pipe_read, None, dst, None, held, SpliceFlags::MOVE | SpliceFlags::NONBLOCK) {
                        Ok(0) => return Some(Err(sh.error(side.peer(), &io::ErrorKind::WriteZero.into()))),
                        Ok(k) => {
                            pipe.held.set(held - k.min(held));
                            if let Err(end) = sh.written(side, k) {
                                return Some(Err(end));
                            }
                        }
                        Err(Errno::AGAIN) => {
                            if let Some(ready) = R::writable(to) {
                                if let Err(e) = ready.await {
                                    return Some(Err(sh.error(side.peer(), &e)));
                                }
                            }
                        }
                        Err(Errno::INTR) => {}
                        Err(e) => return Some(Err(sh.error(side.peer(), &e.into()))),
                    }
                }
            }
        }
    }
}
