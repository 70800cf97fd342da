//! The proxy's side of one client connection: replies (whole, split or partial), the page served
//! through the fake tunnel, and watching what the client does afterwards.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::request::{self, Request};
use super::show;
use crate::scenarios::Failure;
use crate::targets::reset;

/// How long the checker waits for the client's request through the tunnel.
pub const TUNNEL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes read as the client's HTTP request.
const MAX_HTTP_REQUEST: usize = 64 * 1024;

/// An 8-byte reply: `VN CD DSTPORT DSTIP`.
pub fn reply(vn: u8, code: u8, addr: SocketAddrV4) -> [u8; 8] {
    let [p0, p1] = addr.port().to_be_bytes();
    let [a, b, c, d] = addr.ip().octets();
    [vn, code, p0, p1, a, b, c, d]
}

/// A granted reply with zeros for the address (the protocol lets CONNECT's reply carry zeros).
pub fn granted() -> [u8; 8] {
    reply(0, 90, SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0))
}

/// An HTTP/1.0 response carrying `body`; with a `Content-Length` unless `length` is false (then
/// the end of the body is the end of the stream).
pub fn page(body: &[u8], length: bool) -> Vec<u8> {
    let mut out = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n".to_vec();
    if length {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What the client did after the checker's last step, until it closed or the wait ended.
#[derive(Debug, Clone, Default)]
pub struct After {
    /// Bytes it sent.
    pub bytes: Vec<u8>,
    /// Whether it closed (EOF or reset) within the wait.
    pub closed: bool,
}

/// One accepted client connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Bytes received past the request, not yet consumed.
    pending: Vec<u8>,
}

impl Conn {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Self {
        Conn { stream, pending: Vec::new() }
    }

    /// Reads the request (see [`request::read`]); bytes after it stay pending for the tunnel.
    pub fn request(&mut self, first_byte: Duration) -> Result<Request, Failure> {
        let req = request::read(&mut self.stream, first_byte)?;
        self.pending = req.trailing.clone();
        Ok(req)
    }

    /// Sends `bytes` in one write.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream.set_write_timeout(Some(TUNNEL_TIMEOUT))?;
        self.stream.write_all(bytes).map_err(|e| Failure::new(format!("sending to the client: {e}")))
    }

    /// Sends `bytes` one byte per segment, `gap` apart (`TCP_NODELAY` is set on accept).
    pub fn send_bytewise(&mut self, bytes: &[u8], gap: Duration) -> Result<(), Failure> {
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                thread::sleep(gap);
            }
            self.send(std::slice::from_ref(b)).map_err(|e| {
                Failure::new(format!(
                    "the client closed after {i} of the {} bytes sent one at a time ({e})",
                    bytes.len()
                ))
            })?;
        }
        Ok(())
    }

    /// Reads the client's HTTP request through the tunnel (up to its blank line) and checks it
    /// asks for `path`.
    pub fn http_request(&mut self, path: &str) -> Result<Vec<u8>, Failure> {
        let deadline = Instant::now() + TUNNEL_TIMEOUT;
        let mut buf = std::mem::take(&mut self.pending);
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if buf.len() > MAX_HTTP_REQUEST {
                return Err(Failure::new(format!("no end of an HTTP request in {} bytes", buf.len())));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::new(format!(
                    "the client sent no complete HTTP request through the tunnel within {TUNNEL_TIMEOUT:?}: got {}",
                    show(&buf)
                )));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Failure::new(format!(
                        "the client closed the tunnel without a complete HTTP request: got {}",
                        show(&buf)
                    )));
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(Failure::new(format!("reading the client's HTTP request: {e}"))),
            }
        }
        let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap_or(buf.len());
        let line = &buf[..line_end];
        if !line.windows(path.len()).any(|w| w == path.as_bytes()) {
            return Err(Failure::new(format!("the client's HTTP request {} does not ask for {path}", show(line))));
        }
        Ok(buf)
    }

    /// Collects what the client sends until it closes or `wait` passes.
    pub fn watch(&mut self, wait: Duration) -> After {
        let deadline = Instant::now() + wait;
        let mut after = After { bytes: std::mem::take(&mut self.pending), closed: false };
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return after;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    after.closed = true;
                    return after;
                }
                Ok(n) => {
                    if after.bytes.len() < MAX_HTTP_REQUEST {
                        after.bytes.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return after,
                Err(_) => {
                    after.closed = true;
                    return after;
                }
            }
        }
    }

    /// Ends the tunnel cleanly: FIN, then (so no unread byte turns the close into a reset that
    /// could destroy what the client has not read yet) reads until the client closes, up to `wait`.
    pub fn close_after(mut self, wait: Duration) -> After {
        let _ = self.stream.shutdown(Shutdown::Write);
        self.watch(wait)
    }

    /// Closes abortively (a TCP reset).
    pub fn reset(self) {
        reset(self.stream);
    }

    /// Closes at once.
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
