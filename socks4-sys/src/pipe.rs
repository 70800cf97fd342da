//! A pipe as the kernel-side buffer of one relay direction: socket → pipe → socket with
//! `splice(2)` (`SPLICE_F_MOVE | SPLICE_F_NONBLOCK`), so relayed bytes never enter user space.
//!
//! The pipe counts the bytes it holds ([`Pipe::held`]), from what each splice returned, so a
//! caller (and [`PipePool::put`](crate::PipePool::put)) always knows whether it is empty. It is
//! only filled when empty: a direction reads no more from its source until what it holds is
//! written, which is the relay's back-pressure, and it makes [`io::ErrorKind::WouldBlock`] from
//! [`Pipe::fill`] mean "the source has nothing now", never "the pipe is full", so an async caller
//! may clear the source's readiness on it.

use std::io;

#[cfg(any(unix, target_os = "wasi"))]
pub use std::os::fd::AsFd as Descriptor;
#[cfg(windows)]
pub use std::os::windows::io::AsSocket as Descriptor;

/// Whether this platform can splice (Linux and Android). Elsewhere [`Pipe::new`] fails with
/// [`io::ErrorKind::Unsupported`] and every [`SplicePolicy`](crate::SplicePolicy) copies.
pub const SPLICE_SUPPORTED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// A pipe (non-blocking, close-on-exec, both ends owned) holding the bytes of one relay direction
/// between a splice in from its source and a splice out to its destination.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
///
/// // Two real TCP pairs on loopback: a → b, then the pipe moves b's bytes on to c → d.
/// let pair = || -> std::io::Result<(TcpStream, TcpStream)> {
///     let l = TcpListener::bind("127.0.0.1:0")?;
///     let a = TcpStream::connect(l.local_addr()?)?;
///     Ok((a, l.accept()?.0))
/// };
/// let ((mut a, b), (c, mut d)) = (pair()?, pair()?);
/// a.write_all(b"hello")?;
/// a.shutdown(std::net::Shutdown::Write)?;
///
/// let mut pipe = socks4_sys::Pipe::new()?;
/// b.set_nonblocking(false)?; // a blocking source: the splice waits for the bytes
/// assert_eq!(pipe.fill(&b, 1024)?, 5);
/// assert_eq!(pipe.held(), 5);
/// assert_eq!(pipe.drain(&c)?, 5);
/// assert!(pipe.is_empty());
/// assert_eq!(pipe.fill(&b, 1024)?, 0, "end of file");
///
/// let mut got = [0; 5];
/// d.read_exact(&mut got)?;
/// assert_eq!(&got, b"hello");
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Pipe {
    inner: imp::Pipe,
}

impl Pipe {
    /// A new, empty pipe of [`PIPE_LEN`](crate::sizes::PIPE_LEN) bytes (or what the kernel
    /// grants). Fails with [`io::ErrorKind::Unsupported`] where there is no `splice(2)`, or with
    /// the kernel's error (e.g. `EMFILE`): the caller then copies.
    pub fn new() -> io::Result<Pipe> {
        Self::with_capacity(crate::sizes::PIPE_LEN)
    }

    /// A new, empty pipe, asking the kernel for `capacity` bytes (`F_SETPIPE_SZ`). If it refuses
    /// (the user's pipe pages are over `/proc/sys/fs/pipe-user-pages-soft`, or `capacity` is over
    /// `/proc/sys/fs/pipe-max-size`) the pipe keeps its default size: see [`capacity`](Self::capacity).
    pub fn with_capacity(capacity: usize) -> io::Result<Pipe> {
        imp::Pipe::new(capacity).map(|inner| Pipe { inner })
    }

    /// The most bytes the pipe holds, and so the most one [`fill`](Self::fill) moves.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// The bytes filled in and not yet drained.
    #[must_use]
    pub fn held(&self) -> usize {
        self.inner.held()
    }

    /// Whether the pipe holds nothing (only then may it be filled, or reused).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held() == 0
    }

    /// Splices up to `max` bytes (at most the [`capacity`](Self::capacity)) from the socket `src`
    /// into the pipe, which must be empty.
    ///
    /// Like [`std::io::Read::read`]: `Ok(0)` at end of file, `Ok(n)` bytes now held,
    /// [`WouldBlock`](io::ErrorKind::WouldBlock) when `src` has nothing now (the pipe being empty,
    /// it cannot mean anything else), [`Unsupported`](io::ErrorKind::Unsupported) when the kernel
    /// cannot splice from `src` (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`: copy instead, nothing was
    /// moved), [`InvalidInput`](io::ErrorKind::InvalidInput) if the pipe is not empty, else the
    /// read error, or an error for which [`at_urgent_mark`] is true: `src` holds bytes that no
    /// splice moves (TCP urgent data, whose mark stops every splice until a `recv` reads past
    /// it), so copy them with one read (with `SO_OOBINLINE` set, the urgent byte too) and splice
    /// again; nothing was moved. `EINTR` is retried. A splice that moves nothing costs one
    /// `MSG_PEEK` more, to tell the mark; a relay calls [`fill_next`](Self::fill_next), which
    /// spends that peek in place of a splice.
    pub fn fill<S: Descriptor + ?Sized>(&mut self, src: &S, max: usize) -> io::Result<usize> {
        self.must_be_empty()?;
        self.inner.fill(src, max)
    }

    /// [`fill`](Self::fill) for a relay direction, which keeps `drained` (false at first) from
    /// one call to the next: after a fill that moved less than it asked, which drained `src`
    /// (unless it stopped at urgent data's mark), one `MSG_PEEK` comes first, and
    /// [`WouldBlock`](io::ErrorKind::WouldBlock) without a splice when `src` has nothing: the
    /// system call a splice would have spent to say so. Sets `drained` for the next call.
    ///
    /// # Errors
    /// As [`fill`](Self::fill).
    pub fn fill_next<S: Descriptor + ?Sized>(&mut self, src: &S, max: usize, drained: &mut bool) -> io::Result<usize> {
        self.must_be_empty()?;
        let asked = max.min(self.capacity());
        let filled = match std::mem::take(drained) {
            true => self.inner.refill(src, max),
            false => self.inner.fill(src, max),
        };
        if let Ok(n) = filled {
            *drained = n < asked;
        }
        filled
    }

    /// [`InvalidInput`](io::ErrorKind::InvalidInput) unless the pipe is empty (only then is it
    /// filled).
    fn must_be_empty(&self) -> io::Result<()> {
        match self.is_empty() {
            true => Ok(()),
            false => Err(io::Error::new(io::ErrorKind::InvalidInput, "fill: the pipe is not empty")),
        }
    }

    /// Splices what the pipe holds (as much as `dst` takes now) out to the socket `dst`.
    ///
    /// Like [`std::io::Write::write`]: `Ok(n)` bytes written (`Ok(0)` only when the pipe was
    /// empty: no system call then), [`WouldBlock`](io::ErrorKind::WouldBlock) when `dst` takes
    /// nothing now, else the write error (the pipe then still holds its bytes: close it, do not
    /// reuse it). `EINTR` is retried.
    pub fn drain<S: Descriptor + ?Sized>(&mut self, dst: &S) -> io::Result<usize> {
        if self.is_empty() {
            return Ok(0);
        }
        self.inner.drain(dst)
    }
}

/// The error of a [`Pipe::fill`] that found `src` holding bytes no splice moves: see
/// [`at_urgent_mark`].
#[derive(Debug)]
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
struct UrgentMark;

impl std::fmt::Display for UrgentMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("splice stopped at TCP urgent data: read it with a copy")
    }
}

impl std::error::Error for UrgentMark {}

impl From<UrgentMark> for io::Error {
    fn from(mark: UrgentMark) -> io::Error {
        io::Error::other(mark)
    }
}

/// Whether `e`, from [`Pipe::fill`], says that the source holds bytes at TCP urgent data's mark,
/// which no splice moves: read them with a copy (one `read` passes the mark), then splice again.
#[must_use]
pub fn at_urgent_mark(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<UrgentMark>())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};

    use rustix::io::Errno;
    use rustix::net::{RecvFlags, recv};
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice};

    /// The kernel's default pipe size, assumed if it cannot even be asked.
    const DEFAULT_CAPACITY: usize = 64 * 1024;
    const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

    /// Sizes as `u32` (a pipe holds at most `/proc/sys/fs/pipe-max-size`, under 4 GiB): with the
    /// two descriptors the pipe is 16 bytes, and an `Option<Pipe>` too (a descriptor is never -1),
    /// which a relay keeps per direction of every connection.
    #[derive(Debug)]
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: u32,
        held: u32,
    }

    impl Pipe {
        pub(super) fn new(capacity: usize) -> io::Result<Pipe> {
            let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            let asked = capacity.min(u32::MAX as usize);
            let capacity =
                fcntl_setpipe_size(&write, asked).or_else(|_| fcntl_getpipe_size(&write)).unwrap_or(DEFAULT_CAPACITY);
            let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
            Ok(Pipe { read, write, capacity, held: 0 })
        }

        pub(super) fn capacity(&self) -> usize {
            self.capacity as usize
        }

        pub(super) fn held(&self) -> usize {
            self.held as usize
        }

        pub(super) fn fill<S: AsFd + ?Sized>(&mut self, src: &S, max: usize) -> io::Result<usize> {
            let len = max.min(self.capacity());
            loop {
                match splice(src.as_fd(), None, &self.write, None, len, FLAGS) {
                    // A peek that finds an error takes it (`SO_ERROR` is read once): it is the
                    // answer then, or a reset would pass on as an end of file.
                    Ok(0) => {
                        return match peek(src)? {
                            Peek::Bytes => Err(super::UrgentMark.into()),
                            Peek::Nothing | Peek::End => Ok(0),
                        };
                    }
                    Ok(n) => {
                        // At most `len` <= `capacity`, a `u32`.
                        self.held = u32::try_from(n).unwrap_or(self.capacity);
                        return Ok(n);
                    }
                    Err(Errno::INTR) => {}
                    Err(Errno::AGAIN) => match peek(src)? {
                        Peek::Bytes => return Err(super::UrgentMark.into()),
                        Peek::Nothing => return Err(io::ErrorKind::WouldBlock.into()),
                        Peek::End => {} // a FIN came meanwhile: the splice says 0 now
                    },
                    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        return Err(io::Error::from(io::ErrorKind::Unsupported));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }

        pub(super) fn refill<S: AsFd + ?Sized>(&mut self, src: &S, max: usize) -> io::Result<usize> {
            match peek(src)? {
                Peek::Nothing => Err(io::ErrorKind::WouldBlock.into()),
                Peek::Bytes | Peek::End => self.fill(src, max),
            }
        }

        pub(super) fn drain<S: AsFd + ?Sized>(&mut self, dst: &S) -> io::Result<usize> {
            loop {
                match splice(&self.read, None, dst.as_fd(), None, self.held(), FLAGS) {
                    // The pipe holds bytes and we own its write end: zero cannot happen.
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => {
                        self.held -= u32::try_from(n).unwrap_or(u32::MAX).min(self.held);
                        return Ok(n);
                    }
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// What one non-blocking `MSG_PEEK` of a byte finds in a socket.
    #[derive(Debug)]
    enum Peek {
        Bytes,
        Nothing,
        End,
    }

    /// Peeks at `src`: a splice that moved nothing although `src` holds bytes stopped at TCP
    /// urgent data's mark (the kernel's `tcp_read_sock` stops there and returns `EAGAIN`, or 0
    /// once a FIN came, for as long as the mark is unread; `recv` passes it). `Err`: the socket's
    /// error, which this peek took, so the caller must return it.
    fn peek<S: AsFd + ?Sized>(src: &S) -> Result<Peek, Errno> {
        loop {
            match recv(src.as_fd(), &mut [0u8; 1][..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Ok(Peek::End),
                Ok(_) => return Ok(Peek::Bytes),
                Err(Errno::AGAIN) => return Ok(Peek::Nothing),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::io;

    /// No pipes here: this type has no values.
    #[derive(Debug)]
    pub(super) enum Pipe {}

    impl Pipe {
        pub(super) fn new(_capacity: usize) -> io::Result<Pipe> {
            Err(io::Error::new(io::ErrorKind::Unsupported, "no splice(2) on this platform"))
        }

        pub(super) fn capacity(&self) -> usize {
            match *self {}
        }

        pub(super) fn held(&self) -> usize {
            match *self {}
        }

        pub(super) fn fill<S: super::Descriptor + ?Sized>(&mut self, _src: &S, _max: usize) -> io::Result<usize> {
            match *self {}
        }

        pub(super) fn drain<S: super::Descriptor + ?Sized>(&mut self, _dst: &S) -> io::Result<usize> {
            match *self {}
        }

        pub(super) fn refill<S: super::Descriptor + ?Sized>(&mut self, _src: &S, _max: usize) -> io::Result<usize> {
            match *self {}
        }
    }
}
