//! Asking a client's identd (RFC 1413) for the handshake's [`Output::Ident`](socks4_core::Output::Ident),
//! once for all adapters: [`IdentAnswer`] is the exchange (the query to write, the answer read
//! into it), which the servers perform on their event loops with a non-blocking socket (the
//! async driver and socks4-std's poller), so that a client who leaves closes its identd
//! connection at once and a slow identd holds a socket, never a thread. [`ask_blocking`] is the
//! same exchange on a blocking socket, for programs of one's own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socks4_core::Failure;
use socks4_core::Status;
use socks4_core::ident::{self, IdentReply, Query};

/// identd's answer, owned: the reply line and the query it answers.
#[derive(Clone)]
pub struct IdentAnswer {
    buf: Box<[u8; ident::MAX_REPLY_LEN]>,
    len: usize,
    query: Query,
}

impl std::fmt::Debug for IdentAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentAnswer").field("reply", &String::from_utf8_lossy(&self.buf[..self.len])).finish()
    }
}

impl IdentAnswer {
    /// The exchange about the connection `client` → `local` (our accepted socket's peer and local
    /// addresses): write [`query`](Self::query) to [`identd`], then read into
    /// [`unread`](Self::unread) and [`fill`](Self::fill) until [`wants_more`](Self::wants_more) is
    /// false (or identd closes), then take [`reply`](Self::reply).
    ///
    /// ```
    /// use socks4_server::ident::IdentAnswer;
    ///
    /// let (client, local) = ("127.0.0.1:40000".parse().unwrap(), "127.0.0.1:1080".parse().unwrap());
    /// let mut answer = IdentAnswer::new(client, local);
    /// assert_eq!(answer.query(), b"40000, 1080\r\n");
    /// let line = b"40000, 1080 : USERID : UNIX : alice\r\n";
    /// answer.unread()[..line.len()].copy_from_slice(line);
    /// answer.fill(line.len());
    /// assert!(!answer.wants_more());
    /// assert!(answer.reply().is_ok());
    /// ```
    pub fn new(client: SocketAddr, local: SocketAddr) -> Self {
        Self { buf: Box::new([0; ident::MAX_REPLY_LEN]), len: 0, query: Query::new(client.port(), local.port()) }
    }

    /// The query line to write.
    pub fn query(&self) -> &[u8] {
        self.query.as_bytes()
    }

    /// Room for the next bytes of the answer (empty once [`ident::MAX_REPLY_LEN`] bytes came).
    pub fn unread(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// `n` more bytes of the answer were read into [`unread`](Self::unread) (at most its length).
    pub fn fill(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Whether the answer's line is still unfinished and there is room for more of it.
    pub fn wants_more(&self) -> bool {
        self.len < self.buf.len() && matches!(self.reply(), Err(Failure::BadAnswer))
    }

    /// The parsed reply for [`ServerHandshake::handle_ident`](socks4_core::ServerHandshake::handle_ident):
    /// a malformed or unfinished line is [`Failure::BadAnswer`] (reply 92).
    ///
    /// # Errors
    ///
    /// [`Failure::BadAnswer`] when the line is malformed, about other ports, or unfinished.
    pub fn reply(&self) -> Result<IdentReply<'_>, Failure> {
        match ident::parse_reply(&self.buf[..self.len], &self.query) {
            Ok(Status::Complete((reply, _))) => Ok(reply),
            Ok(Status::Partial) => Err(Failure::BadAnswer),
            Err(e) => Err(e.into()),
        }
    }
}

/// The identd to ask about `client`: port 113 of its address.
pub fn identd(client: SocketAddr) -> SocketAddr {
    SocketAddr::new(client.ip(), ident::PORT)
}

/// Asks the identd of `client`'s host who owns the connection `client` → `local` (our accepted
/// socket's peer and local addresses), within `timeout` for the whole exchange. Reads at most
/// [`ident::MAX_REPLY_LEN`] bytes, stopping at the end of the first line. Blocking.
///
/// The connection to identd is not bound to `local`'s address: routing picks the source, which on
/// a host with one address per network is the address the client reached.
///
/// # Errors
///
/// [`Failure::TimedOut`] when the exchange outlasts `timeout`, the connect's [`Failure`] when
/// identd cannot be reached (refused, unreachable), [`Failure::BadAnswer`] when it closes before
/// the end of its line.
pub fn ask_blocking(client: SocketAddr, local: SocketAddr, timeout: Duration) -> Result<IdentAnswer, Failure> {
    ask_blocking_at(identd(client), client, local, timeout)
}

fn ask_blocking_at(
    identd: SocketAddr,
    client: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
) -> Result<IdentAnswer, Failure> {
    let end = Instant::now() + timeout;
    let left = || end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or(Failure::TimedOut);
    let mut stream = TcpStream::connect_timeout(&identd, left()?).map_err(|e| Failure::from(&e))?;
    stream.set_write_timeout(Some(left()?)).map_err(|e| Failure::from(&e))?;
    let mut answer = IdentAnswer::new(client, local);
    stream.write_all(answer.query()).map_err(|e| Failure::from(&e))?;
    while answer.wants_more() {
        stream.set_read_timeout(Some(left()?)).map_err(|e| Failure::from(&e))?;
        match stream.read(answer.unread()) {
            Ok(0) => break,
            Ok(n) => answer.fill(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => return Err(Failure::TimedOut),
            Err(e) => return Err(Failure::from(&e)),
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A one-shot fake identd on 127.0.0.1:113 needs root; these tests ask a stand-in on another
    /// port through `ask_at`, the same code with the port as a parameter.
    fn ask_at(port: u16, client: SocketAddr, local: SocketAddr) -> Result<IdentAnswer, Failure> {
        ask_blocking_at(SocketAddr::new(client.ip(), port), client, local, Duration::from_secs(2))
    }

    fn identd(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut q = [0u8; 64];
                let _ = s.read(&mut q);
                let _ = s.write_all(reply);
            }
        });
        port
    }

    #[test]
    fn user_error_and_garbage() {
        let (client, local): (SocketAddr, SocketAddr) =
            ("127.0.0.1:40000".parse().unwrap(), "127.0.0.1:1080".parse().unwrap());
        let a = ask_at(identd(b"40000, 1080 : USERID : UNIX : alice\r\n"), client, local).unwrap();
        assert_eq!(a.reply(), Ok(IdentReply::User { os: "UNIX", charset: None, user: b"alice" }));
        let e = ask_at(identd(b"40000, 1080 : ERROR : NO-USER\r\n"), client, local).unwrap();
        assert!(matches!(e.reply(), Ok(IdentReply::Error { .. })));
        let g = ask_at(identd(b"HTTP/1.0 400 nope\r\n"), client, local).unwrap();
        assert!(g.reply().is_err());
        let cut = ask_at(identd(b"40000, 1080 : USERID"), client, local).unwrap();
        assert_eq!(cut.reply(), Err(Failure::BadAnswer));
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(matches!(ask_at(closed, client, local), Err(Failure::Refused | Failure::Other)));
    }
}
