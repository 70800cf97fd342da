//! The relay between the client and the destination (or BIND peer), driving the core's [`Relay`]
//! bookkeeping: early bytes first, both directions at once, a half-close passed on as a
//! half-close and a reset as a reset, idle timeout.
//!
//! Buffers are taken from a per-thread pool only while bytes are in flight, so an idle relayed
//! connection holds no buffer.
//!
//! With bandwidth caps ([`ConnBandwidth`]) a direction asks for a grant once its source is
//! readable, moves at most that, gives back the rest, and sleeps when the caps say so; the other
//! direction and the idle watch go on meanwhile. Without caps it is one `None` check per chunk.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use socket2::SockRef;
use socks4_core::{Fault, Relay, RelayEnd, Side};
use socks4_server::bandwidth::{Bandwidth, ConnBandwidth, Direction, Grant};
use tokio::net::TcpStream;

use crate::conn::Record;

/// Size of one relay buffer.
const BUF_SIZE: usize = 16 * 1024;
/// The most one splice moves (what a pipe is asked to hold).
const MAX_SPLICE: usize = 256 * 1024;
/// A spliced chunk smaller than this sends the direction back to the buffered copy.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SMALL_CHUNK: usize = 4 * 1024;
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

/// What the relay shares between its two pumps and its idle watch: the core's bookkeeping, the
/// two sockets, the clock, and the connection's record, which gets the counts when the relay ends
/// or is dropped (at shutdown).
struct Shared<'a> {
    relay: RefCell<Relay>,
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    start: Instant,
    record: &'a Record,
    /// The bandwidth caps' buckets of this connection; `None` without caps.
    bandwidth: Option<Box<ConnBandwidth>>,
}

impl Drop for Shared<'_> {
    fn drop(&mut self) {
        let relay = self.relay.get_mut();
        self.record.up.set(relay.bytes(Side::Client));
        self.record.down.set(relay.bytes(Side::Upstream));
        if relay.end().is_none() {
            // Cut before its end (the shutdown grace ran out): both sides see a reset, never a
            // clean end of file, so a cut transfer cannot pass for a complete one.
            for side in [Side::Client, Side::Upstream] {
                drop(SockRef::from(self.socket(side)).set_linger(Some(Duration::ZERO)));
            }
        }
    }
}

/// A pump stops early with the relay's end.
type Stop = RelayEnd;

impl Shared<'_> {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn socket(&self, side: Side) -> &TcpStream {
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
            |side| drop(SockRef::from(self.socket(side)).shutdown(Shutdown::Write)),
            // Closing the socket (when the relay returns) then sends a reset.
            |side| drop(SockRef::from(self.socket(side)).set_linger(Some(Duration::ZERO))),
        );
        end.map_or(Ok(()), Err)
    }

    /// How many of `wanted` bytes may move from `from` now: all without caps; with caps, once the
    /// caps grant them (sleeping meanwhile: only this direction waits).
    async fn allowance(&self, from: Side, wanted: usize) -> usize {
        match &self.bandwidth {
            None => wanted,
            // Boxed: the wait's state (a timer) is paid for by capped relays only, while they
            // wait, not held in every relay's future.
            Some(bandwidth) => match bandwidth.grant(Direction::from(from), Instant::now(), wanted) {
                Grant::Now(n) => n,
                Grant::After(_) => Box::pin(granted(bandwidth, from, wanted)).await,
            },
        }
    }

    /// Gives back the part of an [`allowance`](Self::allowance) of `allowed` bytes that `chunk`
    /// did not move (none when the chunk falls through to the copy, which uses the allowance).
    fn charge(&self, from: Side, allowed: usize, chunk: Result<Chunk, Stop>) -> Result<Chunk, Stop> {
        if let Some(bandwidth) = &self.bandwidth {
            let unused = match chunk {
                Ok(Chunk::Moved(n)) => allowed - n,
                Ok(Chunk::NoPipe | Chunk::Unsupported) => 0,
                _ => allowed,
            };
            bandwidth.refund(Direction::from(from), unused);
        }
        chunk
    }

    fn read(&self, from: Side, n: usize) -> Result<(), Stop> {
        self.feed(|r, now| r.handle_read(now, from, n))
    }

    fn written(&self, from: Side, n: usize) -> Result<(), Stop> {
        self.feed(|r, now| r.handle_written(now, from, n))
    }

    fn error(&self, on: Side, e: &io::Error) -> Stop {
        tracing::debug!("relay: {on}: {e}");
        match self.feed(|r, now| r.handle_error(now, on, Fault::from(e))) {
            Err(end) => end,
            Ok(()) => RelayEnd::Error(on),
        }
    }
}

/// Waits until the caps grant some of `wanted` bytes read from `from`; how many.
async fn granted(bandwidth: &ConnBandwidth, from: Side, wanted: usize) -> usize {
    loop {
        match bandwidth.grant(Direction::from(from), Instant::now(), wanted) {
            Grant::Now(n) => return n,
            Grant::After(wait) => tokio::time::sleep(wait).await,
        }
    }
}

/// Relays until both directions end, one side fails (the other is then reset), or the connection
/// is idle for `idle`, driving the core's [`Relay`]; the counts go to `record`. `early` (client
/// bytes that came with the request) goes upstream first; it is not charged to the caps (at most
/// one request buffer). `bandwidth`: the connection's caps, if any.
pub(crate) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    early: Vec<u8>,
    idle: Duration,
    bandwidth: Option<&Bandwidth>,
    record: &Record,
) -> RelayEnd {
    let start = record.start;
    let bandwidth = bandwidth.map(|b| record.bandwidth(b));
    let relay = RefCell::new(Relay::new(start.elapsed(), idle));
    let sh = Shared { relay, client, upstream, start, record, bandwidth };
    if !early.is_empty() {
        let sent = match sh.read(Side::Client, early.len()) {
            Ok(()) => match write_all(upstream, &early).await {
                Ok(()) => sh.written(Side::Client, early.len()),
                Err(e) => Err(sh.error(Side::Upstream, &e)),
            },
            Err(end) => Err(end),
        };
        if let Err(end) = sent {
            return end;
        }
    }
    drop(early);
    let up = pump(&sh, Side::Client);
    let down = pump(&sh, Side::Upstream);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            // Both directions ended: the relay says so (`Closed`).
            Ok(_) => sh.feed(|_, _| {}).err().unwrap_or(RelayEnd::Closed),
            Err(end) => end,
        },
        end = idle_watch(&sh) => end,
    }
}

/// Copies `from` to its peer until EOF (the relay then shuts down the peer's write side), or until
/// the relay ends (`Err`).
///
/// On Linux the bytes go through a pipe borrowed from the worker's pool with splice(2), so they are
/// never copied to user space; the pipe is borrowed only while a chunk is in flight. Where no pipe
/// can be had (or splice is refused) the chunk goes through a pooled buffer instead.
async fn pump(sh: &Shared<'_>, from: Side) -> Result<(), Stop> {
    let (src, dst) = (sh.socket(from), sh.socket(from.peer()));
    // Small chunks (a request, a keystroke) go through a buffer: fewer system calls than a
    // splice in and out. Once a read fills the whole buffer the direction is streaming, and its
    // chunks go through a pipe until one turns out small again.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let (mut streaming, mut can_splice) = (false, true);
    loop {
        src.readable().await.map_err(|e| sh.error(from, &e))?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let splicing = streaming && can_splice;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let splicing = false;
        // Asked only now that `src` is readable: an idle direction holds none of a shared cap.
        let allowed = sh.allowance(from, if splicing { MAX_SPLICE } else { BUF_SIZE }).await;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if splicing {
            let chunk = zero_copy::chunk(sh, src, dst, from, allowed).await;
            match sh.charge(from, allowed, chunk)? {
                Chunk::Moved(n) => {
                    streaming = n >= SMALL_CHUNK;
                    continue;
                }
                Chunk::Eof => break,
                Chunk::NotReady => continue,
                Chunk::Unsupported => can_splice = false,
                Chunk::NoPipe => {}
            }
        }
        let chunk = copy_chunk(sh, src, dst, from, allowed).await;
        match sh.charge(from, allowed, chunk)? {
            Chunk::Eof => break,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Chunk::Moved(n) => streaming = n == BUF_SIZE,
            _ => {}
        }
    }
    // The relay shuts down the peer's write side (half-close); the other direction goes on.
    sh.feed(|r, now| r.handle_eof(now, from))
}

/// The outcome of moving one chunk.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
enum Chunk {
    /// This many bytes went across.
    Moved(usize),
    /// `src` reached EOF.
    Eof,
    /// `src` had nothing after all (readiness was stale).
    NotReady,
    /// splice(2) does not work on these sockets: use the buffered copy from now on.
    Unsupported,
    /// No pipe could be had (e.g. EMFILE): use the buffered copy for this chunk.
    NoPipe,
}

/// Moves one chunk of at most `limit` bytes through a pooled buffer: one read, then write it all.
async fn copy_chunk(
    sh: &Shared<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    limit: usize,
) -> Result<Chunk, Stop> {
    let mut buf = PooledBuf::take();
    let len = limit.min(buf.0.len());
    let n = match src.try_read(&mut buf.0[..len]) {
        Ok(0) => return Ok(Chunk::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Chunk::NotReady),
        Err(e) => return Err(sh.error(from, &e)),
    };
    sh.read(from, n)?;
    write_all(dst, &buf.0[..n]).await.map_err(|e| sh.error(from.peer(), &e))?;
    sh.written(from, n)?;
    Ok(Chunk::Moved(n))
}

/// splice(2) through pipes from a per-worker pool.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod zero_copy {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::OwnedFd;

    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    use socks4_core::Side;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Chunk, Shared, Stop};

    /// Capacity asked for each pipe (the kernel may round it or refuse; 64 KiB is the default).
    const PIPE_SIZE: usize = super::MAX_SPLICE;
    /// Most idle pipes a worker keeps (2 descriptors each).
    const POOL_MAX: usize = 16;

    /// A pipe: read end, write end.
    struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// What the pipe holds at most.
        capacity: usize,
    }

    thread_local! {
        static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    /// A pipe borrowed from the worker's pool. Returned on drop if empty; closed if it still
    /// holds bytes (the relay failed or was cancelled mid-chunk).
    struct Lease {
        pipe: Option<Pipe>,
        /// Bytes in the pipe.
        pending: usize,
    }

    impl Lease {
        fn take() -> io::Result<Lease> {
            let pipe = match PIPES.with(|p| p.borrow_mut().pop()) {
                Some(pipe) => pipe,
                None => {
                    let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
                    let capacity = fcntl_setpipe_size(&write, PIPE_SIZE).unwrap_or(64 * 1024);
                    Pipe { read, write, capacity }
                }
            };
            Ok(Lease { pipe: Some(pipe), pending: 0 })
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            if self.pending != 0 {
                return;
            }
            if let Some(pipe) = self.pipe.take() {
                PIPES.with(|p| {
                    let mut p = p.borrow_mut();
                    if p.len() < POOL_MAX {
                        p.push(pipe);
                    }
                });
            }
        }
    }

    /// Moves one chunk `src` → pipe → `dst`: splices in what `src` has (up to `limit` and the
    /// pipe's capacity), then splices the pipe out to `dst` until it is empty. `src` is not read
    /// again before the pipe is empty, which is the back-pressure.
    pub(super) async fn chunk(
        sh: &Shared<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        from: Side,
        limit: usize,
    ) -> Result<Chunk, Stop> {
        let Ok(mut lease) = Lease::take() else {
            return Ok(Chunk::NoPipe);
        };
        let Some(pipe) = lease.pipe.as_ref() else {
            return Ok(Chunk::NoPipe);
        };
        let (pipe_r, pipe_w, capacity) = (&pipe.read, &pipe.write, pipe.capacity.min(limit));
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        // The pipe is empty, so EAGAIN can only mean that `src` has nothing: the readiness may be
        // cleared.
        let n = match src.try_io(Interest::READABLE, || Ok(splice(src, None, pipe_w, None, capacity, flags)?)) {
            Ok(0) => return Ok(Chunk::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Chunk::NotReady),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                return Ok(Chunk::Unsupported);
            }
            Err(e) => return Err(sh.error(from, &e)),
        };
        lease.pending = n;
        sh.read(from, n)?;
        while lease.pending > 0 {
            dst.writable().await.map_err(|e| sh.error(from.peer(), &e))?;
            // The pipe holds bytes, so EAGAIN can only mean that `dst` is full.
            match dst.try_io(Interest::WRITABLE, || Ok(splice(pipe_r, None, dst, None, lease.pending, flags)?)) {
                Ok(0) => return Err(sh.error(from.peer(), &io::ErrorKind::WriteZero.into())),
                Ok(m) => {
                    lease.pending -= m;
                    sh.written(from, m)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(sh.error(from.peer(), &e)),
            }
        }
        Ok(Chunk::Moved(n))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn pooled() -> usize {
            PIPES.with(|p| p.borrow().len())
        }

        #[test]
        fn only_empty_pipes_go_back_to_the_pool() {
            let before = pooled();
            let lease = Lease::take().expect("pipe");
            drop(lease);
            assert_eq!(pooled(), before + 1, "an empty pipe is kept for reuse");
            let mut lease = Lease::take().expect("pipe");
            assert_eq!(pooled(), before, "the pooled pipe is reused");
            lease.pending = 1;
            drop(lease);
            assert_eq!(pooled(), before, "a pipe still holding bytes is closed, not pooled");
        }

        #[test]
        fn the_pool_is_bounded() {
            let leases: Vec<Lease> = (0..POOL_MAX + 4).map(|_| Lease::take().expect("pipe")).collect();
            drop(leases);
            assert_eq!(pooled(), POOL_MAX);
        }
    }
}
/// Returns once the relay's idle deadline has passed (never without an idle timeout).
async fn idle_watch(sh: &Shared<'_>) -> RelayEnd {
    loop {
        let Some(deadline) = sh.relay.borrow().deadline() else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until((sh.start + deadline).into()).await;
        if let Err(end) = sh.feed(|r, now| r.handle_timeout(now)) {
            return end;
        }
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
