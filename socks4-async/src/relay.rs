//! Relaying bytes both ways between two streams, driving the core's [`Relay`] bookkeeping: early
//! data first, a half-close passed on as a half-close and a reset as a reset, an idle timeout
//! over both directions, byte counts for the log line.
//!
//! A direction waits for readability without a buffer, then borrows one from its worker's pool
//! only while bytes flow, so an idle relayed connection holds none. Which chunks are spliced is
//! socks4-sys's one policy ([`SplicePolicy::DEFAULT`], as in socks4-std; [`SplicePolicy::from_env`]
//! picks another for a benchmark): small chunks (a request, a
//! keystroke) go through the buffer; once a read fills it the direction is streaming, and on Linux
//! its chunks go through a pipe with `splice(2)` ([`crate::splice`]) until one moves less again.
//!
//! With bandwidth caps ([`ConnBandwidth`]) a direction asks for a grant once its source is
//! readable, moves at most that, gives back the rest, and sleeps (without its buffer or pipe) when
//! the caps say so; the other direction and the idle watch go on meanwhile. Without caps it is one
//! `None` check per chunk. On a runtime that cannot wait for readability (async-std) the read
//! itself waits, with its buffer and grant held, and nothing is spliced.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_lite::future;
use socks4_core::{Fault, Relay, RelayEnd, Side};
use socks4_server::bandwidth::{ConnBandwidth, Direction, Grant};

use socks4_sys::sizes::COPY_BUF_LEN;
use socks4_sys::{LocalBuf, Mode, SplicePolicy};

use crate::runtime::{Runtime, write_all};

/// Size of one copy buffer, the same on every runtime and in socks4-std: socks4-sys's 16 KiB
/// ([`COPY_BUF_LEN`]), from the worker thread's pool ([`LocalBuf`], at most
/// [`COPY_BUFS_KEPT`](socks4_sys::sizes::COPY_BUFS_KEPT) kept: 1 MiB).
const BUF_LEN: usize = COPY_BUF_LEN;

/// A pump stops early with the relay's end.
pub(crate) type Stop = RelayEnd;

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
pub(crate) struct Shared<'a, R: Runtime> {
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
                drop(R::socket(self.socket(side)).set_linger(Some(Duration::ZERO)));
            }
        }
    }
}

impl<R: Runtime> Shared<'_, R> {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn socket(&self, side: Side) -> &R::Stream {
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
            |side| drop(R::socket(self.socket(side)).shutdown(std::net::Shutdown::Write)),
            // Closing the stream (when the relay returns) then resets.
            |side| drop(R::socket(self.socket(side)).set_linger(Some(Duration::ZERO))),
        );
        end.map_or(Ok(()), Err)
    }

    /// How many of `wanted` bytes may move from `from` now: all without caps; with caps, once the
    /// caps grant them (sleeping meanwhile: only this direction waits).
    async fn allowance(&self, from: Side, wanted: usize) -> usize {
        let Some(bandwidth) = &self.bandwidth else { return wanted };
        loop {
            match bandwidth.grant(Direction::from(from), Instant::now(), wanted) {
                Grant::Now(n) => return n,
                // Boxed: only a capped relay pays for a timer in its state, while it waits.
                Grant::After(wait) => Box::pin(R::sleep(wait)).await,
            }
        }
    }

    /// Gives back the part of an allowance of `allowed` bytes that `chunk` did not move (none when
    /// the chunk falls through to the copy, which uses the allowance).
    fn charge(&self, from: Side, allowed: usize, chunk: Result<Chunk, Stop>) -> Result<Chunk, Stop> {
        if let Some(bandwidth) = &self.bandwidth {
            let unused = match chunk {
                Ok(Chunk::Moved(n)) => allowed - n.min(allowed),
                Ok(Chunk::NoPipe | Chunk::Copy | Chunk::Unsupported) => 0,
                _ => allowed,
            };
            bandwidth.refund(Direction::from(from), unused);
        }
        chunk
    }

    pub(crate) fn read(&self, from: Side, n: usize) -> Result<(), Stop> {
        self.feed(|r, now| r.handle_read(now, from, n))
    }

    pub(crate) fn written(&self, from: Side, n: usize) -> Result<(), Stop> {
        self.feed(|r, now| r.handle_written(now, from, n))
    }

    pub(crate) fn error(&self, on: Side, e: &io::Error) -> Stop {
        tracing::debug!("relay: {on}: {e}");
        match self.feed(|r, now| r.handle_error(now, on, Fault::from(e))) {
            Err(end) => end,
            Ok(()) => RelayEnd::Error(on),
        }
    }
}

/// Relays `client` ⇄ `upstream` until both directions have ended, one side fails (the other is
/// then reset), or both are idle for `idle`, driving the core's [`Relay`]; the counts go to
/// `counts`. `early` (client bytes that arrived with the request) goes upstream first; it is not
/// charged to the caps (at most one request buffer). `bandwidth`: the connection's caps, if any.
pub(crate) async fn relay<R: Runtime>(
    client: &R::Stream,
    upstream: &R::Stream,
    early: &[u8],
    idle: Duration,
    bandwidth: Option<Box<ConnBandwidth>>,
    counts: &Counts,
) -> RelayEnd {
    let start = Instant::now();
    let relay = RefCell::new(Relay::new(Duration::ZERO, idle));
    let sh = Shared::<R> { relay, client, upstream, start, counts, bandwidth };
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

/// The outcome of moving one chunk.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
pub(crate) enum Chunk {
    /// This many bytes went across.
    Moved(usize),
    /// `src` reached end of file.
    Eof,
    /// `src` had nothing after all (the readiness was stale).
    NotReady,
    /// splice(2) does not work on these sockets: use the buffered copy from now on.
    Unsupported,
    /// No pipe could be had (e.g. out of descriptors): use the buffered copy for this chunk.
    NoPipe,
    /// `src` holds bytes no splice moves (TCP urgent data's mark): copy this chunk, which reads
    /// past the mark, then splice again.
    Copy,
}

/// The relays' splice policy: [`SplicePolicy::from_env`], read once per process.
fn splice_policy() -> SplicePolicy {
    static POLICY: OnceLock<SplicePolicy> = OnceLock::new();
    *POLICY.get_or_init(SplicePolicy::from_env)
}

/// Copies `from` to its peer (after `first`) until end of file, which the relay passes on as a
/// half-close; `Err` once the relay is over.
async fn pump<R: Runtime>(sh: &Shared<'_, R>, from: Side, first: &[u8]) -> Result<(), Stop> {
    let (src, dst) = (sh.socket(from), sh.socket(from.peer()));
    if !first.is_empty() {
        sh.read(from, first.len())?;
        write_all::<R>(dst, first).await.map_err(|e| sh.error(from.peer(), &e))?;
        sh.written(from, first.len())?;
    }
    // What the last chunk moved, for the splice policy; whether splicing works for these streams.
    let policy = splice_policy();
    let mut last_moved = 0;
    // The last splice moved less than it asked (`Pipe::fill_next`).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let mut drained = false;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let mut can_splice = crate::splice::possible::<R>(src, dst);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let can_splice = false;
    loop {
        let can_wait = match R::readable(src) {
            Some(ready) => {
                ready.await.map_err(|e| sh.error(from, &e))?;
                true
            }
            None => false,
        };
        let splicing = can_splice && policy.decide(last_moved, BUF_LEN) == Mode::Splice;
        let wanted = if splicing { socks4_sys::sizes::PIPE_LEN } else { BUF_LEN };
        // Asked only now that `src` is readable: an idle direction holds none of a shared cap.
        let allowed = sh.allowance(from, wanted).await;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if splicing {
            let chunk = crate::splice::chunk(sh, from, allowed, &mut drained).await;
            match sh.charge(from, allowed, chunk)? {
                Chunk::Moved(n) => {
                    last_moved = n;
                    continue;
                }
                Chunk::Eof => break,
                Chunk::NotReady => continue,
                Chunk::Unsupported => can_splice = false,
                Chunk::NoPipe | Chunk::Copy => {}
            }
        }
        let chunk = copy_chunk(sh, from, allowed, can_wait).await;
        match sh.charge(from, allowed, chunk)? {
            Chunk::Eof => break,
            Chunk::Moved(n) => last_moved = n,
            _ => {}
        }
    }
    // The relay shuts down the peer's write side (half-close); the other direction goes on.
    sh.feed(|r, now| r.handle_eof(now, from))
}

/// Moves one chunk of at most `limit` bytes through a pooled buffer: one read, then write it all.
/// `ready`: `src` was found readable, so the read must not wait (a stale readiness is `NotReady`,
/// and the buffer goes back before the next wait).
async fn copy_chunk<R: Runtime>(sh: &Shared<'_, R>, from: Side, limit: usize, ready: bool) -> Result<Chunk, Stop> {
    let (src, dst) = (sh.socket(from), sh.socket(from.peer()));
    let mut buf = LocalBuf::take();
    let len = limit.min(buf.len());
    let read = if ready {
        match future::poll_once(R::read(src, &mut buf[..len])).await {
            Some(read) => read,
            None => return Ok(Chunk::NotReady),
        }
    } else {
        R::read(src, &mut buf[..len]).await
    };
    let n = match read {
        Ok(0) => return Ok(Chunk::Eof),
        Ok(n) => n,
        Err(e) => return Err(sh.error(from, &e)),
    };
    sh.read(from, n)?;
    write_all::<R>(dst, &buf[..n]).await.map_err(|e| sh.error(from.peer(), &e))?;
    sh.written(from, n)?;
    Ok(Chunk::Moved(n))
}
