//! The calling thread's pools, for a worker that is one thread (an async runtime's current-thread
//! worker, a std worker): a pipe or buffer borrowed from them goes back when the borrow is
//! dropped, however the borrower ends, so a relay future cancelled mid-chunk cannot leak a pipe or
//! hand a half-full one to another connection.

use std::cell::RefCell;
use std::io;
use std::ops::{Deref, DerefMut};

use crate::pipe::Pipe;
use crate::pool::{BufPool, PipePool};

thread_local! {
    static PIPES: RefCell<PipePool> = const { RefCell::new(PipePool::new()) };
    static BUFS: RefCell<BufPool> = const { RefCell::new(BufPool::new()) };
}

/// A pipe borrowed from the calling thread's [`PipePool`] (the default limits); on drop it goes
/// back if empty, and is closed if it still holds bytes (a transfer stopped half-way: the relay
/// failed or was cancelled) or the pool is full.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use socks4_sys::LocalPipe;
///
/// let pipe = LocalPipe::take()?;
/// assert!(pipe.is_empty());
/// drop(pipe);
/// assert_eq!(LocalPipe::pooled(), 1, "kept for this thread's next chunk");
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct LocalPipe {
    /// `Some` until dropped.
    pipe: Option<Pipe>,
}

impl LocalPipe {
    /// An empty pipe from this thread's pool (or a new one): see [`PipePool::take`].
    pub fn take() -> io::Result<LocalPipe> {
        let pipe = PIPES.with(|p| p.borrow_mut().take())?;
        Ok(LocalPipe { pipe: Some(pipe) })
    }

    /// How many free pipes this thread's pool keeps.
    #[must_use]
    pub fn pooled() -> usize {
        PIPES.with(|p| p.borrow().len())
    }
}

impl Deref for LocalPipe {
    type Target = Pipe;

    fn deref(&self) -> &Pipe {
        self.pipe.as_ref().expect("a LocalPipe holds its pipe until dropped")
    }
}

impl DerefMut for LocalPipe {
    fn deref_mut(&mut self) -> &mut Pipe {
        self.pipe.as_mut().expect("a LocalPipe holds its pipe until dropped")
    }
}

impl Drop for LocalPipe {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            // During thread teardown the pool may be gone: the pipe is then simply closed.
            let _ = PIPES.try_with(|p| p.borrow_mut().put(pipe));
        }
    }
}

/// A copy buffer ([`COPY_BUF_LEN`](crate::sizes::COPY_BUF_LEN) bytes) borrowed from the calling
/// thread's [`BufPool`]; it goes back on drop (freed if the pool is full).
///
/// ```
/// use socks4_sys::{LocalBuf, sizes::COPY_BUF_LEN};
///
/// let mut buf = LocalBuf::take();
/// assert_eq!(buf.len(), COPY_BUF_LEN);
/// buf[0] = 1;
/// ```
#[derive(Debug)]
pub struct LocalBuf {
    buf: Box<[u8]>,
}

impl LocalBuf {
    /// A buffer from this thread's pool (or a new one).
    #[must_use]
    pub fn take() -> LocalBuf {
        LocalBuf { buf: BUFS.with(|b| b.borrow_mut().take()) }
    }

    /// How many free buffers this thread's pool keeps.
    #[must_use]
    pub fn pooled() -> usize {
        BUFS.with(|b| b.borrow().len())
    }
}

impl Deref for LocalBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for LocalBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for LocalBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let _ = BUFS.try_with(|b| b.borrow_mut().put(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizes::{COPY_BUFS_KEPT, PIPES_KEPT};

    // Each test runs on its own thread, so it sees its own pools.

    #[test]
    fn buffers_go_back_on_drop_up_to_the_bound() {
        let bufs: Vec<_> = (0..COPY_BUFS_KEPT + 3).map(|_| LocalBuf::take()).collect();
        assert_eq!(LocalBuf::pooled(), 0);
        drop(bufs);
        assert_eq!(LocalBuf::pooled(), COPY_BUFS_KEPT);
        let _again = LocalBuf::take();
        assert_eq!(LocalBuf::pooled(), COPY_BUFS_KEPT - 1, "a kept buffer is reused");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn pipes_go_back_on_drop_up_to_the_bound() {
        let pipes: Vec<_> = (0..PIPES_KEPT + 3).map(|_| LocalPipe::take().expect("pipe")).collect();
        drop(pipes);
        assert_eq!(LocalPipe::pooled(), PIPES_KEPT);
        let _again = LocalPipe::take().expect("pipe");
        assert_eq!(LocalPipe::pooled(), PIPES_KEPT - 1, "a kept pipe is reused");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_pipe_dropped_holding_bytes_is_closed_not_pooled() {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};

        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        a.write_all(b"stranded").expect("write");
        let mut pipe = LocalPipe::take().expect("pipe");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        b.set_nonblocking(true).expect("nonblocking");
        let n = loop {
            match pipe.fill(&b, 1024) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                other => break other.expect("fill"),
            }
        };
        assert_eq!(n, 8);
        // A relay cancelled here, between the splice in and the splice out:
        drop(pipe);
        assert_eq!(LocalPipe::pooled(), 0, "the half-full pipe was closed");
        assert!(LocalPipe::take().expect("pipe").is_empty());
    }
}
