//! One direction of a relay: read from a source socket, write to a destination socket, with a
//! bounded pending buffer and back-pressure. What it moved is reported in a [`Progress`], which
//! the connection feeds to the core's `Relay` (counts, half-close, reset, idle deadline).
//!
//! Whether a chunk is spliced or copied is the worker's [`SplicePolicy`] (from `socks4-sys`, the
//! one decision the async driver takes too), asked before each read with what the direction's
//! last read moved. Spliced bytes go socket → pipe → socket ([`socks4_sys::Pipe`]) through a pipe
//! borrowed from the worker's [`PipePool`] while they are in flight. Copied ones (or when no pipe
//! can be had) are read into the worker's shared scratch buffer and written straight on; only
//! what the destination does not take at once is copied into the direction's own pending buffer,
//! which is freed as soon as it drains. While anything is pending (in the pipe or the buffer) the source
//! is not read, so a direction never holds more than [`MAX_PENDING`] bytes and an idle relay holds
//! neither a buffer nor a pipe.
//!
//! With bandwidth caps ([`Caps`]) each read or splice asks for a grant first and moves at most
//! that; when the caps say wait, the pump stops and reports the wait ([`Progress::wait`]): the
//! connection then stops watching the source until the wait has passed, while the other direction
//! and the idle deadline go on.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use socks4_server::bandwidth::{ConnBandwidth, Direction, Grant};

use socks4_sys::{Mode, Pipe, PipePool, SplicePolicy};

/// The most bytes one direction of one connection ever holds in the proxy: the capacity asked of
/// a splice pipe and the most one splice moves (copying reads at most the worker's
/// [`COPY_BUF_LEN`](socks4_sys::sizes::COPY_BUF_LEN) buffer at a time). A connection holds at
/// most twice this, and nothing while idle.
pub const MAX_PENDING: usize = socks4_sys::sizes::MAX_PENDING;

/// A worker's splicing: its policy and its pool of empty pipes.
#[derive(Debug)]
pub(crate) struct Pipes {
    pool: PipePool,
    policy: SplicePolicy,
}

impl Pipes {
    /// The splicing of a worker that follows `policy`.
    pub(crate) fn new(policy: SplicePolicy) -> Self {
        Self { pool: PipePool::new(), policy }
    }

    /// A pipe for the next chunk of a direction whose last read moved `last` bytes, if the policy
    /// says splice and a pipe can be had (else the chunk is copied).
    fn take(&mut self, last: u32, buffer_len: usize) -> Option<Pipe> {
        match self.policy.decide(last as usize, buffer_len) {
            Mode::Splice => self.pool.take().ok(),
            Mode::Copy => None,
        }
    }

    /// The kernel cannot splice these sockets: this worker copies from now on.
    fn disable(&mut self) {
        self.policy = SplicePolicy::Never;
        self.pool.clear();
    }
}

/// Reads per wake-up before yielding to other connections (the source stays armed).
const READS_PER_PUMP: usize = 16;

/// The state of one direction.
#[derive(Debug, Default)]
pub(crate) struct Dir {
    /// Bytes read but not yet written (`pending[off..]`), empty (unallocated) when drained.
    pending: Vec<u8>,
    off: usize,
    /// The pipe holding bytes spliced from the source and not yet on to the destination (`None`
    /// when there are none: the pipe went back to the worker's pool).
    piped: Option<Pipe>,
    /// What the last read or splice from the source moved (for the splice policy).
    last: u32,
    /// The source reached EOF.
    eof: bool,
    /// Leading pending bytes that are not relayed data (the handshake's replies, at most 16):
    /// written, but not reported. One byte, so that it packs with `eof`.
    unreported: u8,
}

/// What a pump did, to report to the relay even when it then failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Bytes read from the source.
    pub(crate) read: usize,
    /// Bytes written to the destination.
    pub(crate) written: usize,
    /// The source reached EOF.
    pub(crate) eof: bool,
    /// The bandwidth caps stopped the pump: read no more before this has passed.
    pub(crate) wait: Option<Duration>,
}

/// One direction's bandwidth caps for a pump: the connection's buckets, the direction, the time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps<'a> {
    pub(crate) bandwidth: &'a ConnBandwidth,
    pub(crate) direction: Direction,
    pub(crate) now: Instant,
}

/// How many of `wanted` bytes may be read now (all of them without caps), or how long to wait.
fn grant(caps: Option<Caps<'_>>, wanted: usize) -> Result<usize, Duration> {
    let Some(c) = caps else { return Ok(wanted) };
    match c.bandwidth.grant(c.direction, c.now, wanted) {
        Grant::Now(n) => Ok(n),
        Grant::After(wait) => Err(wait),
    }
}

/// Gives back the part of a [`grant`] that was not read.
fn refund(caps: Option<Caps<'_>>, unused: usize) {
    if let Some(c) = caps {
        c.bandwidth.refund(c.direction, unused);
    }
}

/// Which socket failed.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the destination failed.
    Write(io::Error),
}

impl Dir {
    /// A direction that starts with relayed bytes pending (the client's early data; report them
    /// as read).
    pub(crate) fn with_pending(initial: Vec<u8>) -> Self {
        Self { pending: initial, ..Self::default() }
    }

    /// A direction that starts with bytes that are not relayed data pending (the handshake's
    /// replies not yet written, at most 16 bytes): they go first and are never reported.
    pub(crate) fn with_unreported(initial: Vec<u8>) -> Self {
        Self { unreported: u8::try_from(initial.len()).unwrap_or(u8::MAX), pending: initial, ..Self::default() }
    }

    /// Whether the source should be watched for readability.
    pub(crate) fn wants_read(&self) -> bool {
        !self.eof && !self.has_pending()
    }

    /// Whether the destination should be watched for writability.
    pub(crate) fn wants_write(&self) -> bool {
        self.has_pending()
    }

    fn has_pending(&self) -> bool {
        self.off < self.pending.len() || self.piped.is_some()
    }

    /// Moves bytes from `src` to `dst` until one of them would block, EOF, a fair share, or the
    /// `caps` say wait, splicing through a pipe from `pipes` when one can be had, else copying via
    /// `scratch`; adds what it did to `progress` (also when it fails).
    pub(crate) fn pump(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        scratch: &mut [u8],
        pipes: &mut Pipes,
        caps: Option<Caps<'_>>,
        progress: &mut Progress,
    ) -> Result<(), PumpError> {
        let mut reads = 0;
        // After a splice stopped at urgent data: one copy read, which passes the mark.
        let mut copy_next = false;
        // The last splice moved less than it asked (`Pipe::fill_next`).
        let mut drained = false;
        loop {
            if self.off < self.pending.len() {
                match write_some(dst, &self.pending[self.off..]) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        let skipped = n.min(usize::from(self.unreported));
                        // `skipped` <= `unreported`, a `u8`.
                        self.unreported -= skipped as u8;
                        progress.written += n - skipped;
                        self.off += n;
                        if self.off < self.pending.len() {
                            continue;
                        }
                        self.pending = Vec::new();
                        self.off = 0;
                    }
                    Err(e) => return Err(PumpError::Write(e)),
                }
            }
            if let Some(pipe) = &mut self.piped {
                match pipe.drain(dst) {
                    Ok(n) => {
                        progress.written += n;
                        if !pipe.is_empty() {
                            continue;
                        }
                        if let Some(pipe) = self.piped.take() {
                            pipes.pool.put(pipe);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(PumpError::Write(e)),
                }
            }
            if self.eof {
                // The relay passes the EOF on (shuts `dst` down) once everything is written.
                return Ok(());
            }
            if reads == READS_PER_PUMP {
                return Ok(());
            }
            reads += 1;
            let pipe = if std::mem::take(&mut copy_next) { None } else { pipes.take(self.last, scratch.len()) };
            let wanted = pipe.as_ref().map_or(MAX_PENDING.min(scratch.len()), Pipe::capacity);
            let allowed = match grant(caps, wanted) {
                Ok(n) => n,
                Err(wait) => {
                    if let Some(pipe) = pipe {
                        pipes.pool.put(pipe);
                    }
                    progress.wait = Some(wait);
                    return Ok(());
                }
            };
            if let Some(mut pipe) = pipe {
                let filled = pipe.fill_next(src, allowed, &mut drained);
                refund(caps, allowed - filled.as_ref().map_or(0, |&n| n));
                match filled {
                    Ok(0) => {
                        pipes.pool.put(pipe);
                        self.eof = true;
                        progress.eof = true;
                    }
                    Ok(n) => {
                        progress.read += n;
                        self.last = u32::try_from(n).unwrap_or(u32::MAX);
                        self.piped = Some(pipe);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        pipes.pool.put(pipe);
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        // These sockets cannot be spliced: copy from now on (this read too).
                        pipes.disable();
                        reads -= 1;
                    }
                    Err(e) if socks4_sys::at_urgent_mark(&e) => {
                        // Urgent data's mark, which no splice passes: the next read copies.
                        pipes.pool.put(pipe);
                        copy_next = true;
                        reads -= 1;
                    }
                    Err(e) => return Err(PumpError::Read(e)),
                }
                continue;
            }
            let chunk = &mut scratch[..allowed.min(MAX_PENDING)];
            let read = (&*src).read(chunk);
            refund(caps, allowed - read.as_ref().map_or(0, |&n| n));
            let n = match read {
                Ok(0) => {
                    self.eof = true;
                    progress.eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpError::Read(e)),
            };
            progress.read += n;
            self.last = u32::try_from(n).unwrap_or(u32::MAX);
            let written = write_some(dst, &chunk[..n]).map_err(PumpError::Write)?;
            progress.written += written;
            if written < n {
                self.pending = chunk[written..n].to_vec();
                self.off = 0;
                return Ok(());
            }
        }
    }
}

/// Writes what the socket takes now: `Ok(0)` when it would block.
fn write_some(dst: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        match (&*dst).write(buf) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
