//! Accepting a connection as a non-blocking socket in one system call.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Accepts one pending connection from `listener` as a non-blocking, close-on-exec socket, with
/// its peer's address.
///
/// On Linux and Android this is one `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`; elsewhere `accept`
/// (which the standard library makes close-on-exec) and then `set_nonblocking`. On a non-blocking
/// listener with nothing pending it fails with [`io::ErrorKind::WouldBlock`]; other errors are the
/// kernel's (sort them with `socks4_server::accept`: per-connection errors are retried at once,
/// resource errors such as `EMFILE` call for a pause).
///
/// ```
/// use std::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let client = TcpStream::connect(listener.local_addr()?)?;
/// let (stream, peer) = socks4_sys::accept_nonblocking(&listener)?;
/// assert_eq!(peer, client.local_addr()?);
/// // Non-blocking: nothing was sent, so a read would block.
/// assert_eq!(std::io::Read::read(&mut &stream, &mut [0; 1]).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    imp::accept_nonblocking(listener)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::io;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use rustix::net::{SocketFlags, acceptfrom_with};

    pub(super) fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
        let (fd, addr) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
        let stream = TcpStream::from(fd);
        let addr = match addr.map(SocketAddr::try_from) {
            Some(Ok(addr)) => addr,
            // Not an IP address (cannot happen on a TCP listener): ask the socket.
            _ => stream.peer_addr()?,
        };
        Ok((stream, addr))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::io;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    pub(super) fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = listener.accept()?;
        stream.set_nonblocking(true)?;
        Ok((stream, addr))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn accepts_a_non_blocking_socket_with_its_peer_address() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut stream, peer) = accept_nonblocking(&listener).expect("accept");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        assert_eq!(stream.read(&mut [0; 8]).expect_err("nothing sent yet").kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"hi").expect("write");
        let mut buf = [0; 2];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let n = loop {
            match stream.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("read: {e}"),
            }
        };
        assert_eq!(&buf[..n], &b"hi"[..n]);
    }

    #[test]
    fn accepts_ipv6_peers() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else { return }; // no IPv6 here
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_stream, peer) = accept_nonblocking(&listener).expect("accept");
        assert_eq!(peer, client.local_addr().expect("client addr"));
    }

    #[test]
    fn would_block_on_a_non_blocking_listener_with_nothing_pending() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let e = accept_nonblocking(&listener).expect_err("nothing pending");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn the_accepted_socket_is_close_on_exec() {
        use std::os::fd::AsFd;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (stream, _) = accept_nonblocking(&listener).expect("accept");
        let flags = rustix::io::fcntl_getfd(stream.as_fd()).expect("getfd");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
}
