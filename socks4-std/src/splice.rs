//! Zero-copy relay on Linux: bytes go socket → pipe → socket with `splice(2)` and never enter
//! user space.
//!
//! A pipe is only borrowed from the worker's [`Pipes`] while a direction has bytes in flight and
//! goes back as soon as it is empty, so idle connections hold no pipe (and no descriptors beyond
//! their sockets). Elsewhere [`Pipes::take`] never gives one and the relay copies.

#[cfg(target_os = "linux")]
pub(crate) use linux::{Pipe, Pipes, drain, fill};
#[cfg(not(target_os = "linux"))]
pub(crate) use portable::{Pipe, Pipes, drain, fill};

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::net::TcpStream;
    use std::os::fd::OwnedFd;

    use rustix::io::Errno;
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};

    use crate::relay::MAX_PENDING;

    /// Free pipes a worker keeps for reuse; beyond these, returned pipes are closed.
    const PIPES_KEPT: usize = 16;

    /// A pipe pair (non-blocking, close-on-exec) used as the kernel-side buffer of one direction.
    #[derive(Debug)]
    pub(crate) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    /// A worker's pool of empty pipes.
    #[derive(Debug)]
    pub(crate) struct Pipes {
        free: Vec<Pipe>,
        enabled: bool,
    }

    impl Pipes {
        /// A pool; when `enabled` is false it never gives a pipe (the relay copies).
        pub(crate) fn new(enabled: bool) -> Self {
            Self { free: Vec::new(), enabled }
        }

        /// An empty pipe, or `None` when splicing is off or no pipe can be made now (e.g. out of
        /// descriptors): the caller copies instead.
        pub(crate) fn take(&mut self) -> Option<Pipe> {
            if !self.enabled {
                return None;
            }
            if let Some(p) = self.free.pop() {
                return Some(p);
            }
            let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
            // Fewer, larger splices; if the kernel refuses, the default (64 KiB) works too.
            let _ = fcntl_setpipe_size(&write, MAX_PENDING);
            Some(Pipe { read, write })
        }

        /// Gives back a pipe that is empty.
        pub(crate) fn put(&mut self, pipe: Pipe) {
            if self.enabled && self.free.len() < PIPES_KEPT {
                self.free.push(pipe);
            }
        }

        /// The kernel cannot splice these sockets: copy from now on.
        pub(crate) fn disable(&mut self) {
            self.enabled = false;
            self.free.clear();
        }
    }

    /// Moves up to `len` bytes from `src` into the empty `pipe`: `Ok(Some(0))` at end of file,
    /// `Ok(None)` when `src` has nothing now. `ErrorKind::Unsupported` if splicing is impossible.
    pub(crate) fn fill(pipe: &Pipe, src: &TcpStream, len: usize) -> io::Result<Option<usize>> {
        loop {
            match splice(src, None, &pipe.write, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK) {
                Ok(n) => return Ok(Some(n)),
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::INTR) => {}
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    return Err(io::Error::from(io::ErrorKind::Unsupported));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Moves up to `len` bytes (at most what the pipe holds) from `pipe` to `dst`: `Ok(None)`
    /// when `dst` takes nothing now.
    pub(crate) fn drain(pipe: &Pipe, dst: &TcpStream, len: usize) -> io::Result<Option<usize>> {
        loop {
            match splice(&pipe.read, None, dst, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK) {
                // The pipe holds `len` > 0 bytes and we keep its write end: zero would be a bug.
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => return Ok(Some(n)),
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod portable {
    use std::io;
    use std::net::TcpStream;

    /// No pipes here: this type has no values.
    #[derive(Debug)]
    pub(crate) enum Pipe {}

    /// A pool that never gives a pipe: the relay copies.
    #[derive(Debug)]
    pub(crate) struct Pipes;

    impl Pipes {
        pub(crate) fn new(_enabled: bool) -> Self {
            Self
        }

        pub(crate) fn take(&mut self) -> Option<Pipe> {
            None
        }

        pub(crate) fn put(&mut self, pipe: Pipe) {
            match pipe {}
        }

        pub(crate) fn disable(&mut self) {}
    }

    pub(crate) fn fill(pipe: &Pipe, _src: &TcpStream, _len: usize) -> io::Result<Option<usize>> {
        match *pipe {}
    }

    pub(crate) fn drain(pipe: &Pipe, _dst: &TcpStream, _len: usize) -> io::Result<Option<usize>> {
        match *pipe {}
    }
}
