//! One direction of a relay: read from a source socket, write to a destination socket, with a
//! bounded pending buffer and back-pressure.
//!
//! Bytes are read into the worker's shared scratch buffer and written straight on; only what
//! the destination does not take at once is copied into the direction's own pending buffer,
//! which is freed as soon as it drains. While anything is pending the source is not read, so a
//! direction never holds more than [`MAX_PENDING`] bytes and an idle relay holds none.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

/// The most bytes one direction of one connection ever buffers in the proxy (and the size of
/// each read). A connection buffers at most twice this, and nothing while idle.
pub const MAX_PENDING: usize = 32 * 1024;

/// Reads per wake-up before yielding to other connections (the source stays armed).
const READS_PER_PUMP: usize = 16;

/// The state of one direction.
#[derive(Debug, Default)]
pub(crate) struct Dir {
    /// Bytes read but not yet written (`pending[off..]`), empty (unallocated) when drained.
    pending: Vec<u8>,
    off: usize,
    /// The source reached EOF.
    eof: bool,
    /// The destination was shut down for writing (EOF propagated): this direction is done.
    shut: bool,
    /// Bytes read from the source (including early data handed over at the start).
    pub(crate) bytes: u64,
}

/// What a pump did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Some bytes moved.
    pub(crate) moved: bool,
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
    /// A direction that starts with `initial` pending (a reply, or the client's early data).
    pub(crate) fn with_pending(initial: Vec<u8>) -> Self {
        Self { pending: initial, ..Self::default() }
    }

    /// Whether the source should be watched for readability.
    pub(crate) fn wants_read(&self) -> bool {
        !self.eof && !self.has_pending()
    }

    /// Whether the destination should be watched for writability.
    pub(crate) fn wants_write(&self) -> bool {
        self.has_pending()
    }

    /// Whether the direction is finished (EOF seen, everything written, destination shut down).
    pub(crate) fn is_done(&self) -> bool {
        self.shut
    }

    /// Bytes currently buffered.
    pub(crate) fn buffered(&self) -> usize {
        self.pending.len() - self.off
    }

    fn has_pending(&self) -> bool {
        self.off < self.pending.len()
    }

    /// Moves bytes from `src` to `dst` until one of them would block (or after a fair share).
    pub(crate) fn pump(&mut self, src: &TcpStream, dst: &TcpStream, scratch: &mut [u8]) -> Result<Progress, PumpError> {
        let mut progress = Progress::default();
        let mut reads = 0;
        loop {
            if self.has_pending() {
                match write_some(dst, &self.pending[self.off..]) {
                    Ok(0) => return Ok(progress),
                    Ok(n) => {
                        progress.moved = true;
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
            if self.eof {
                if !self.shut {
                    // The peer may already be gone; the direction is over either way.
                    let _ = dst.shutdown(Shutdown::Write);
                    self.shut = true;
                }
                return Ok(progress);
            }
            if reads == READS_PER_PUMP {
                return Ok(progress);
            }
            reads += 1;
            let len = MAX_PENDING.min(scratch.len());
            let chunk = &mut scratch[..len];
            let n = match (&*src).read(chunk) {
                Ok(0) => {
                    self.eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progress),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpError::Read(e)),
            };
            progress.moved = true;
            self.bytes += n as u64;
            let written = write_some(dst, &chunk[..n]).map_err(PumpError::Write)?;
            if written < n {
                self.pending = chunk[written..n].to_vec();
                self.off = 0;
                return Ok(progress);
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
