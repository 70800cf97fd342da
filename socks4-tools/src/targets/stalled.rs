//! A target whose connects stall: its accept queue is full, so a connection to it hangs in
//! SYN_SENT (Linux drops the SYNs) until it is released.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// A listener with a full accept queue; [`accept_released`](Self::accept_released) makes room and
/// takes the connection that arrives.
#[derive(Debug)]
pub struct StalledTarget {
    listener: TcpListener,
    fillers: Vec<TcpStream>,
}

impl StalledTarget {
    /// Listens on 127.0.0.1 with a backlog of 0 and fills the queue.
    pub fn start() -> io::Result<Self> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        socket.listen(0)?;
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr()?;
        let fillers =
            (0..3).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()).collect();
        Ok(Self { listener, fillers })
    }

    /// The address it listens on.
    pub fn addr(&self) -> io::Result<SocketAddrV4> {
        match self.listener.local_addr()? {
            SocketAddr::V4(a) => Ok(a),
            SocketAddr::V6(_) => Err(io::Error::other("bound to IPv4")),
        }
    }

    /// A SOCKS4 CONNECT request to it (empty user id), followed by `early`.
    pub fn request(&self, early: &[u8]) -> io::Result<Vec<u8>> {
        Ok([crate::wire::connect(self.addr()?, b"").as_slice(), early].concat())
    }

    /// Makes room (the fillers close), then waits up to `within` for the connection whose first
    /// bytes are `first` (fillers' closed connections are skipped); it has `within` as read timeout.
    pub fn accept_released(&mut self, first: &[u8], within: Duration) -> io::Result<TcpStream> {
        self.fillers.clear();
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + within;
        loop {
            match self.listener.accept() {
                Ok((c, _)) => {
                    c.set_nonblocking(false)?;
                    c.set_read_timeout(Some(within))?;
                    let mut got = vec![0; first.len()];
                    if (&c).read_exact(&mut got).is_ok() && got == first {
                        return Ok(c);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "the proxy never connected"));
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
