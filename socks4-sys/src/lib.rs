//! The system calls socks4's servers share, with no async runtime: the layer under both the async
//! connection driver (tokio, smol, async-std) and the std-threads server, as `quinn-udp` is under
//! quinn.
//!
//! - [`accept_nonblocking`]: one `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` on Linux, a portable
//!   fallback elsewhere;
//! - [`Pipe`]: a non-blocking pipe, sized, as the kernel-side buffer of one relay direction, with
//!   [`Pipe::fill`] (socket → pipe) and [`Pipe::drain`] (pipe → socket) by `splice(2)`
//!   (`SPLICE_F_MOVE | SPLICE_F_NONBLOCK`); it counts the bytes it holds;
//! - [`PipePool`] and [`BufPool`]: a worker's bounded free pipes (only empty ones are reused) and
//!   copy buffers; [`LocalPipe`] and [`LocalBuf`] borrow from the calling thread's pools and give
//!   back on drop (what a single-threaded async worker uses: a cancelled relay returns its pipe,
//!   or closes it if it holds bytes);
//! - [`SplicePolicy`]: the one decision, before each chunk, whether a direction copies or splices;
//! - [`sizes`]: every buffer size and pool bound, in one place;
//! - [`socket`]: an outgoing TCP socket, non-blocking in one call, and a connect started on it.
//!
//! Readiness is the caller's business: every call here is non-blocking and reports
//! [`WouldBlock`](std::io::ErrorKind::WouldBlock) like the standard library does, so a `polling`
//! loop calls them when told a socket is ready and an async runtime wraps them in its own
//! readiness call (tokio's `try_io`, async-io's `read_with`).
//!
//! One direction of a relay, the shape every caller follows (a blocking sketch; a real relay
//! waits for readiness where this would see `WouldBlock`):
//!
//! ```no_run
//! use std::io::{self, Read, Write};
//! use std::net::TcpStream;
//! use socks4_sys::{Mode, PipePool, SplicePolicy, sizes::COPY_BUF_LEN};
//!
//! fn relay_one_way(src: &TcpStream, mut dst: &TcpStream, policy: SplicePolicy) -> io::Result<()> {
//!     let (mut pipes, mut buf) = (PipePool::new(), vec![0; COPY_BUF_LEN]);
//!     let mut last = 0;
//!     loop {
//!         if policy.decide(last, buf.len()) == Mode::Splice {
//!             if let Ok(mut pipe) = pipes.take() {
//!                 last = pipe.fill(src, usize::MAX)?;
//!                 while !pipe.is_empty() {
//!                     pipe.drain(dst)?;
//!                 }
//!                 pipes.put(pipe);
//!                 if last == 0 { return Ok(()); }
//!                 continue;
//!             }
//!         }
//!         last = (&*src).read(&mut buf)?;
//!         if last == 0 { return Ok(()); }
//!         dst.write_all(&buf[..last])?;
//!     }
//! }
//! ```

#![forbid(unsafe_code)]

mod accept;
mod local;
mod pipe;
mod policy;
mod pool;
pub mod sizes;
pub mod socket;

pub use accept::accept_nonblocking;
pub use local::{LocalBuf, LocalPipe};
pub use pipe::{Descriptor, Pipe, SPLICE_SUPPORTED, at_urgent_mark};
pub use policy::{Mode, PolicyError, SPLICE_POLICY_ENV, SplicePolicy};
pub use pool::{BufPool, PipePool};
