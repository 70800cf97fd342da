//! TCP sockets: a non-blocking socket made in one call and a connect started on it without
//! waiting, the two steps every driver (async or `polling`) takes before it waits for
//! writability (socks4-server's egress binds the socket to a source between them), and the one
//! option every relayed socket gets ([`urgent_inline`]).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// A new TCP socket of `domain`, non-blocking from the start (one syscall on Linux), not bound.
///
/// ```
/// let socket = socks4_sys::socket::nonblocking(socket2::Domain::IPV4)?;
/// assert!(socket.nonblocking()?);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// The system's, from `socket(2)` (out of descriptors, `EMFILE`).
pub fn nonblocking(domain: Domain) -> io::Result<Socket> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP));
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

/// Starts a non-blocking connect of `socket` to `addr`: `Ok` when it completed or is under way
/// (then wait until the socket is writable and read `take_error`).
///
/// ```
/// use socks4_sys::socket::{connect_started, nonblocking};
/// let target = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let socket = nonblocking(socket2::Domain::IPV4)?;
/// connect_started(&socket, target.local_addr()?)?;
/// let (_, _peer) = target.accept()?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// The connect's failure when it fails at once (refused on loopback, unreachable network).
pub fn connect_started(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => Ok(()),
        Err(e) if is_in_progress(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a non-blocking connect's error only says it is under way (`EINPROGRESS`, or
/// `WouldBlock` where the system reports that).
pub fn is_in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

/// Keeps TCP urgent data (`MSG_OOB`, telnet's and FTP's "Synch" on an abort) in the stream
/// (`SO_OOBINLINE`), for a socket a relay reads: a read then returns the urgent byte in its place
/// instead of skipping it, so the relay passes every byte on (the urgency itself is not: a proxy
/// cannot send it on through a plain write). Set it before the socket is read.
///
/// ```
/// let socket = socks4_sys::socket::nonblocking(socket2::Domain::IPV4)?;
/// socks4_sys::socket::urgent_inline(&socket2::SockRef::from(&socket))?;
/// assert!(socket.out_of_band_inline()?);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// The system's, from `setsockopt(2)` (not a socket).
pub fn urgent_inline(socket: &SockRef<'_>) -> io::Result<()> {
    socket.set_out_of_band_inline(true)
}
