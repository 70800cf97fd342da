//! Linux: the relay's zero-copy chunk, socket → pipe → socket with `splice(2)`, through pipes
//! borrowed from a small per-worker pool. The only system calls of the driver are here (a
//! runtime-free syscall crate can take this module's place).

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use socks4_core::Side;

use crate::relay::{Chunk, Shared, Stop};
use crate::runtime::{Interest, Runtime};

/// Capacity asked for each pipe (the kernel may round it or refuse; 64 KiB is the default): the
/// most one direction holds in the proxy.
pub(crate) const PIPE_SIZE: usize = 256 * 1024;
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

/// A pipe borrowed from the worker's pool. Returned on drop if empty; closed if it still holds
/// bytes (the relay failed or was cancelled mid-chunk).
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
            // During thread teardown the pool may be gone: the pipe is then simply closed.
            let _ = PIPES.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(pipe);
                }
            });
        }
    }
}

/// Whether `src` → `dst` can be spliced on this runtime (descriptors and readiness waits).
pub(crate) fn possible<R: Runtime>(src: &R::Stream, dst: &R::Stream) -> bool {
    R::fd(src).is_some() && R::fd(dst).is_some() && R::readable(src).is_some() && R::writable(dst).is_some()
}

/// Moves one chunk `src` → pipe → `dst`: splices in what `src` has (up to `limit` and the pipe's
/// capacity), then splices the pipe out to `dst` until it is empty. `src` is not read again before
/// the pipe is empty, which is the back-pressure. Called once `src` was readable.
pub(crate) async fn chunk<R: Runtime>(sh: &Shared<'_, R>, from: Side, limit: usize) -> Result<Chunk, Stop> {
    let (src, dst) = (sh.socket(from), sh.socket(from.peer()));
    let (Some(src_fd), Some(dst_fd)) = (R::fd(src), R::fd(dst)) else { return Ok(Chunk::Unsupported) };
    let Ok(mut lease) = Lease::take() else { return Ok(Chunk::NoPipe) };
    let Some(pipe) = lease.pipe.as_ref() else { return Ok(Chunk::NoPipe) };
    let (pipe_r, pipe_w, capacity) = (&pipe.read, &pipe.write, pipe.capacity.min(limit));
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    // The pipe is empty, so EAGAIN can only mean that `src` has nothing: its readiness is cleared.
    let n = match R::try_io(src, Interest::Readable, || Ok(splice(src_fd, None, pipe_w, None, capacity, flags)?)) {
        Ok(0) => return Ok(Chunk::Eof),
        Ok(n) => n,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
            return Ok(Chunk::NotReady);
        }
        Err(e) if is_unsupported(&e) => return Ok(Chunk::Unsupported),
        Err(e) => return Err(sh.error(from, &e)),
    };
    lease.pending = n;
    sh.read(from, n)?;
    while lease.pending > 0 {
        if let Some(ready) = R::writable(dst) {
            ready.await.map_err(|e| sh.error(from.peer(), &e))?;
        }
        // The pipe holds bytes, so EAGAIN can only mean that `dst` is full.
        match R::try_io(dst, Interest::Writable, || Ok(splice(pipe_r, None, dst_fd, None, lease.pending, flags)?)) {
            Ok(0) => return Err(sh.error(from.peer(), &io::ErrorKind::WriteZero.into())),
            Ok(m) => {
                lease.pending -= m.min(lease.pending);
                sh.written(from, m)?;
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(sh.error(from.peer(), &e)),
        }
    }
    Ok(Chunk::Moved(n))
}

/// splice(2) refused for these descriptors (not a socket the kernel splices, an old kernel).
fn is_unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP].iter().any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
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
