//! A worker's free pipes and copy buffers, bounded, so that a busy worker reuses them instead of
//! making one per chunk and an idle one keeps only a few.
//!
//! Both are plain values with no lock: a worker keeps one of each (a std worker in its loop, an
//! async worker in a `thread_local!`, which the `const` constructors allow) and a relay direction
//! borrows from it only while it has bytes in flight.

use std::io;

use crate::pipe::Pipe;
use crate::sizes::{COPY_BUF_LEN, COPY_BUFS_KEPT, PIPE_LEN, PIPES_KEPT};

/// A worker's free pipes: [`take`](Self::take) one for a chunk, [`put`](Self::put) it back.
///
/// Only an empty pipe is kept: a pipe still holding bytes (a transfer stopped half-way because
/// its destination failed, or the relay was cancelled mid-chunk) is closed on `put`, so those
/// bytes can never reach another connection. At most [`keep`](Self::with_limits) pipes are kept;
/// the rest are closed.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use socks4_sys::PipePool;
///
/// let mut pool = PipePool::new();
/// let pipe = pool.take()?;
/// assert!(pipe.is_empty());
/// pool.put(pipe);
/// assert_eq!(pool.len(), 1, "kept for the next chunk");
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    keep: usize,
    capacity: usize,
}

impl PipePool {
    /// An empty pool keeping up to [`PIPES_KEPT`] pipes of [`PIPE_LEN`] bytes.
    #[must_use]
    pub const fn new() -> Self {
        Self::with_limits(PIPES_KEPT, PIPE_LEN)
    }

    /// An empty pool keeping up to `keep` free pipes, making new ones of `capacity` bytes.
    #[must_use]
    pub const fn with_limits(keep: usize, capacity: usize) -> Self {
        Self { free: Vec::new(), keep, capacity }
    }

    /// An empty pipe: a kept one, else a new one. Fails where there is no `splice(2)`
    /// ([`io::ErrorKind::Unsupported`]) or when no pipe can be made now (e.g. `EMFILE`): the
    /// caller copies this chunk instead.
    pub fn take(&mut self) -> io::Result<Pipe> {
        match self.free.pop() {
            Some(pipe) => Ok(pipe),
            None => Pipe::with_capacity(self.capacity),
        }
    }

    /// Gives a pipe back: kept if it is empty and the pool has room, else closed. Returns whether
    /// it was kept.
    pub fn put(&mut self, pipe: Pipe) -> bool {
        if pipe.is_empty() && self.free.len() < self.keep {
            self.free.push(pipe);
            true
        } else {
            false
        }
    }

    /// How many free pipes are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no free pipe is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Closes every kept pipe.
    pub fn clear(&mut self) {
        self.free.clear();
    }
}

impl Default for PipePool {
    fn default() -> Self {
        Self::new()
    }
}

/// A worker's free copy buffers, all of one length: [`take`](Self::take) one for a chunk,
/// [`put`](Self::put) it back. At most `keep` are kept; the rest are freed.
///
/// ```
/// use socks4_sys::{BufPool, sizes::COPY_BUF_LEN};
///
/// let mut pool = BufPool::new();
/// let buf = pool.take();
/// assert_eq!(buf.len(), COPY_BUF_LEN);
/// pool.put(buf);
/// assert_eq!(pool.len(), 1);
/// ```
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Box<[u8]>>,
    keep: usize,
    len: usize,
}

impl BufPool {
    /// An empty pool keeping up to [`COPY_BUFS_KEPT`] buffers of [`COPY_BUF_LEN`] bytes.
    #[must_use]
    pub const fn new() -> Self {
        Self::with_limits(COPY_BUFS_KEPT, COPY_BUF_LEN)
    }

    /// An empty pool keeping up to `keep` free buffers of `len` bytes.
    #[must_use]
    pub const fn with_limits(keep: usize, len: usize) -> Self {
        Self { free: Vec::new(), keep, len }
    }

    /// A buffer of the pool's length: a kept one (holding whatever it last held), else a new,
    /// zeroed one.
    pub fn take(&mut self) -> Box<[u8]> {
        self.free.pop().unwrap_or_else(|| vec![0; self.len].into_boxed_slice())
    }

    /// Gives a buffer back: kept if it has the pool's length and the pool has room, else freed.
    /// Returns whether it was kept.
    pub fn put(&mut self, buf: Box<[u8]>) -> bool {
        if buf.len() == self.len && self.free.len() < self.keep {
            self.free.push(buf);
            true
        } else {
            false
        }
    }

    /// How many free buffers are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no free buffer is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// The length of its buffers.
    #[must_use]
    pub fn buf_len(&self) -> usize {
        self.len
    }
}

impl Default for BufPool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_bounded_and_of_one_length() {
        let mut pool = BufPool::with_limits(2, 8);
        let bufs: Vec<_> = (0..4).map(|_| pool.take()).collect();
        assert!(bufs.iter().all(|b| b.len() == 8));
        let kept = bufs.into_iter().map(|b| pool.put(b)).filter(|&k| k).count();
        assert_eq!((kept, pool.len()), (2, 2));
        assert!(!pool.put(vec![0; 9].into_boxed_slice()), "a buffer of another length is freed");
        let mut pool = BufPool::with_limits(2, 8);
        assert!(!pool.put(vec![0; 7].into_boxed_slice()));
        assert!(pool.is_empty());
    }
}
