//! Outgoing TCP sockets: a non-blocking socket made in one call and a connect started on it
//! without waiting, the two steps every driver (async or `polling`) takes before it waits for
//! writability. socks4-server's egress binds the socket to a source between them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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
