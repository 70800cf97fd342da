//! A protocol sniffer: one listener that looks at a connection's first bytes and serves SOCKS4/4a,
//! answers HTTP with `400 Bad Request` (a body saying this is a SOCKS4 proxy), and closes anything
//! else cleanly. Plain std threads and blocking sockets, one thread per connection.
//!
//! It shows the crate's sniff recipe ([`parse_request`] fails with `BadVersion` at byte 0 or
//! `BadCommand` at byte 1 for anything that is not SOCKS4), and a [`ServerHandshake`] driven with
//! blocking I/O: the bytes read while sniffing are fed to it, deadlines become socket timeouts.
//! The relay is two threads, one per direction, sharing the core's [`Relay`]: they tell it what
//! they read and wrote, and do what it answers (an EOF passed on as a half-close, a reset as a
//! reset); its idle deadline is their sockets' timeout. SOCKS4a names are resolved with the
//! blocking `ToSocketAddrs` (fine on a per-connection thread); BIND is refused (91). Only loopback
//! clients are served.
//!
//! ```sh
//! cargo run -p socks4-core --features std --example sniff -- [127.0.0.1:1083]
//! curl --socks4a 127.0.0.1:1083 http://example.com/   # served
//! curl http://127.0.0.1:1083/                         # 400 Bad Request
//! ```

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use socket2::SockRef;
use socks4_core::driver::{Candidates, Clock};
use socks4_core::rules::Rules;
use socks4_core::{
    Command, Failure, Fault, Limits, Output, ParseError, Relay, RelayEnd, RelayOutput, ReplyCode, ServerHandshake,
    Side, Status, Target, Timeouts, parse_request,
};

/// The body of the answer to an HTTP request.
const HTTP_BODY: &str = "This is a SOCKS4/SOCKS4a proxy, not an HTTP server or HTTP proxy.\n";
/// A relay with nothing moving either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Each direction of a relay reads at most this much at a time.
const BUF: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Socks4,
    Http,
    Other,
}

/// What the first bytes are, or `None` to read more. Decided within 8 bytes.
fn sniff(first: &[u8]) -> Option<Protocol> {
    match parse_request(first, &Limits::default()) {
        Ok(Status::Partial) if first.len() < 2 => None,
        Err(ParseError::BadVersion(_) | ParseError::BadCommand(_)) => {
            // An HTTP request line starts with a method (uppercase letters, at most 7) and a space.
            let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
            match first.get(method) {
                Some(b' ') if method > 0 => Some(Protocol::Http),
                None if method == first.len() && method < 8 => None,
                _ => Some(Protocol::Other),
            }
        }
        // Whole or not, valid or not: a SOCKS4 request. The handshake answers a bad one with 91.
        _ => Some(Protocol::Socks4),
    }
}

fn main() {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:1083".to_owned());
    let listener = TcpListener::bind(&listen).expect("binding the listen address");
    // TCP urgent data (`MSG_OOB`) stays in the stream, on the sockets it accepts too: a read
    // returns the urgent byte in its place instead of skipping it.
    SockRef::from(&listener).set_out_of_band_inline(true).expect("SO_OOBINLINE");
    eprintln!("sniff: listening on {}", listener.local_addr().expect("listener address"));
    let rules = Rules::parse("allow from 127.0.0.0/8\nallow from ::1/128").expect("static rules");
    thread::scope(|scope| {
        for client in listener.incoming() {
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            let rules = &rules;
            scope.spawn(move || {
                let peer = client.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
                if let Err(e) = handle(client, rules) {
                    eprintln!("{peer}: {e}");
                }
            });
        }
    });
}

fn handle(mut client: TcpStream, rules: &Rules) -> io::Result<()> {
    let clock = Clock::new();
    let timeouts = Timeouts::default();
    // Read (not just peek: the bytes go to the handshake) until the first bytes tell the protocol.
    client.set_read_timeout(Some(timeouts.handshake))?;
    let mut first = [0u8; 4096];
    let mut n = 0;
    let protocol = loop {
        if let Some(p) = sniff(&first[..n]) {
            break p;
        }
        match client.read(&mut first[n..]) {
            Ok(0) => return Ok(()), // closed before saying anything useful
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e), // including the timeout
        }
    };
    match protocol {
        Protocol::Socks4 => serve_socks4(client, &first[..n], clock, timeouts, rules),
        Protocol::Http => {
            let head = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close";
            let response = format!("{head}\r\nContent-Length: {}\r\n\r\n{HTTP_BODY}", HTTP_BODY.len());
            client.write_all(response.as_bytes())?;
            close_gently(client)
        }
        Protocol::Other => close_gently(client),
    }
}

/// Sends FIN, then reads and discards what the peer still sends (briefly), so the close does not
/// turn into a reset that could destroy our last bytes in flight.
fn close_gently(mut client: TcpStream) -> io::Result<()> {
    client.shutdown(Shutdown::Write)?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match client.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

/// A SOCKS4 server handshake driven with blocking I/O, starting with the bytes already read.
fn serve_socks4(
    mut client: TcpStream,
    first: &[u8],
    clock: Clock,
    timeouts: Timeouts,
    rules: &Rules,
) -> io::Result<()> {
    let peer = client.peer_addr()?;
    let mut hs = ServerHandshake::new(clock.now(), Limits::default(), timeouts);
    let mut early = Vec::new();
    let used = hs.handle_input(clock.now(), first);
    if !hs.wants_input() {
        early.extend_from_slice(&first[used..]);
    }
    let mut candidates = Candidates::default(); // a name's other addresses
    let mut upstream = None;
    let mut buf = [0u8; 4096];
    loop {
        let now = clock.now();
        let time_left = hs.deadline().map(|d| d.saturating_sub(now)).filter(|left| !left.is_zero());
        let reading = hs.wants_input();
        match hs.poll_output() {
            Output::Send(reply) => client.write_all(&reply.to_bytes())?,
            Output::Resolve { host, port } => {
                candidates = Candidates::from_lookup((host, port).to_socket_addrs());
                hs.handle_resolved(now, candidates.first())?;
            }
            Output::Authorize(req) if req.command == Command::Bind => hs.reject(ReplyCode::Rejected)?,
            Output::Authorize(_) => drop(hs.authorize(now, rules, peer.ip().to_canonical())?),
            Output::Connect(Target::Addr(addr)) => {
                // The connect gets what is left of the handshake's connect deadline.
                let Some(left) = time_left else {
                    hs.handle_timeout(now);
                    continue;
                };
                match TcpStream::connect_timeout(&addr, left) {
                    Ok(stream) => {
                        hs.handle_connected(clock.now(), stream.local_addr().map_err(|e| Failure::from(&e)))?;
                        upstream = Some(stream);
                    }
                    Err(e) => match candidates.next_after(Failure::from(&e)) {
                        Some(next) => hs.retry_connect(clock.now(), next)?,
                        None => hs.handle_connected(clock.now(), Err(Failure::from(&e)))?,
                    },
                }
            }
            Output::Connect(Target::Host(..)) => hs.handle_connected(now, Err(Failure::Other))?, // Names::Forward only
            Output::Listen { .. } => hs.handle_listening(now, Err(Failure::Other))?, // BIND is refused above
            // Everything above is done inline: the only waiting is for the rest of the request.
            Output::Wait { .. } if reading => {
                let Some(left) = time_left else {
                    hs.handle_timeout(now);
                    continue;
                };
                client.set_read_timeout(Some(left))?;
                match client.read(&mut buf) {
                    Ok(0) => hs.handle_eof(clock.now()),
                    Ok(k) => {
                        let used = hs.handle_input(clock.now(), &buf[..k]);
                        if !hs.wants_input() {
                            early.extend_from_slice(&buf[used..k]);
                        }
                    }
                    Err(e) if is_timeout(&e) => {
                        hs.handle_timeout(clock.now());
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Output::Relay => {
                let Some(upstream) = upstream else { return Err(io::Error::other("relay without an upstream")) };
                let (end, relay) = relay(client, upstream, &early, clock);
                let (up, down) = (relay.bytes(Side::Client), relay.bytes(Side::Upstream));
                eprintln!("{peer}: relay {end}, {up} bytes up, {down} down");
                return Ok(());
            }
            Output::Closed(reason) => {
                eprintln!("{peer}: {reason}");
                return close_gently(client);
            }
            other => return Err(io::Error::other(format!("unexpected handshake output {other:?}"))),
        }
    }
}

/// Relays both ways on two threads, one per direction, until the core's [`Relay`] says it is
/// over: both directions ended (each EOF passed on as a half-close), one side failed (the other is
/// reset), or nothing moved for [`IDLE_TIMEOUT`]. The early data goes up first. Returns how it
/// ended and the relay's books.
fn relay(client: TcpStream, upstream: TcpStream, early: &[u8], clock: Clock) -> (RelayEnd, Relay) {
    let _ = SockRef::from(&upstream).set_out_of_band_inline(true); // as the listener's
    let relay = Mutex::new(Relay::new(clock.now(), IDLE_TIMEOUT));
    let r = Relaying { relay, client: &client, upstream: &upstream, clock };
    let (up, down) = thread::scope(|scope| {
        let up = scope.spawn(|| r.pump(Side::Client, early));
        let down = r.pump(Side::Upstream, &[]);
        (up.join().expect("relay thread"), down)
    });
    // A thread stops at its EOF (`Ok`) or at the end of the relay (`Err`), which one of them saw.
    let end = up.err().or(down.err()).unwrap_or(RelayEnd::Closed);
    // The sockets close on return: an aborted one (linger 0) with a reset.
    (end, r.relay.into_inner().expect("relay lock"))
}

/// The relay's books and the two sockets it acts on, shared by the two threads.
struct Relaying<'a> {
    relay: Mutex<Relay>,
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    clock: Clock,
}

impl Relaying<'_> {
    fn socket(&self, side: Side) -> &TcpStream {
        match side {
            Side::Client => self.client,
            Side::Upstream => self.upstream,
        }
    }

    /// Gives the relay one input, then does what it asks: `Ok` with the deadline to wait until
    /// (`None`: no limit), `Err` with the end once the relay is over.
    fn feed(&self, input: impl FnOnce(&mut Relay, Duration)) -> Result<Option<Duration>, RelayEnd> {
        let mut relay = self.relay.lock().expect("relay lock");
        input(&mut relay, self.clock.now());
        loop {
            match relay.poll_output() {
                // The peer may be gone already: the direction is over either way.
                RelayOutput::Shutdown(side) => drop(self.socket(side).shutdown(Shutdown::Write)),
                // Closing the socket (when `relay` returns) then sends a reset.
                RelayOutput::Abort(side) => drop(SockRef::from(self.socket(side)).set_linger(Some(Duration::ZERO))),
                RelayOutput::Wait { deadline } => return Ok(deadline),
                RelayOutput::Done(end) => {
                    // Wakes the other thread if it is blocked reading (one blocked writing to a peer
                    // that reads nothing wakes at the deadline it had). Only the read side: a
                    // shutdown of the write side would send a FIN ahead of an abort's reset.
                    for side in [Side::Client, Side::Upstream] {
                        drop(self.socket(side).shutdown(Shutdown::Read));
                    }
                    return Err(end);
                }
                _ => return Ok(relay.deadline()), // an output newer than this example: ignored
            }
        }
    }

    /// A read from or a write to `on` failed: the relay ends (and resets the other side).
    fn fail(&self, on: Side, e: &io::Error) -> RelayEnd {
        self.feed(|r, now| r.handle_error(now, on, Fault::from(e))).err().unwrap_or(RelayEnd::Error(on))
    }

    /// A socket timeout that ends at `deadline`.
    fn timeout(&self, deadline: Option<Duration>) -> Option<Duration> {
        deadline.map(|d| d.saturating_sub(self.clock.now()).max(Duration::from_millis(1)))
    }

    /// Copies `from` to its peer, `first` first, until `from`'s EOF (`Ok`) or the relay's end.
    /// Each blocking read or write waits at most until the last deadline the relay gave; when it
    /// times out, the relay is told (the other direction may have moved the deadline meanwhile:
    /// then nothing ends).
    fn pump(&self, from: Side, first: &[u8]) -> Result<(), RelayEnd> {
        let mut src = self.socket(from);
        let deadline = self.feed(|r, now| r.handle_read(now, from, first.len()))?;
        let mut deadline = self.write_all(from, first, deadline)?;
        let mut buf = vec![0u8; BUF];
        loop {
            src.set_read_timeout(self.timeout(deadline)).map_err(|e| self.fail(from, &e))?;
            deadline = match src.read(&mut buf) {
                Ok(0) => return self.feed(|r, now| r.handle_eof(now, from)).map(drop),
                Ok(n) => {
                    let deadline = self.feed(|r, now| r.handle_read(now, from, n))?;
                    self.write_all(from, &buf[..n], deadline)?
                }
                Err(e) if is_timeout(&e) => self.feed(|r, now| r.handle_timeout(now))?,
                Err(e) if e.kind() == ErrorKind::Interrupted => deadline,
                Err(e) => return Err(self.fail(from, &e)),
            };
        }
    }

    /// Writes `data`, read from `from`, to its peer; returns the relay's latest deadline.
    fn write_all(
        &self,
        from: Side,
        mut data: &[u8],
        mut deadline: Option<Duration>,
    ) -> Result<Option<Duration>, RelayEnd> {
        let (mut dst, to) = (self.socket(from.peer()), from.peer());
        while !data.is_empty() {
            dst.set_write_timeout(self.timeout(deadline)).map_err(|e| self.fail(to, &e))?;
            deadline = match dst.write(data) {
                Ok(0) => return Err(self.fail(to, &ErrorKind::WriteZero.into())),
                Ok(n) => {
                    data = &data[n..];
                    self.feed(|r, now| r.handle_written(now, from, n))?
                }
                Err(e) if is_timeout(&e) => self.feed(|r, now| r.handle_timeout(now))?,
                Err(e) if e.kind() == ErrorKind::Interrupted => deadline,
                Err(e) => return Err(self.fail(to, &e)),
            };
        }
        Ok(deadline)
    }
}

/// A blocking read or write ran out of time (`WouldBlock` on Unix, `TimedOut` on Windows).
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
