//! A protocol sniffer: one listener that looks at a connection's first bytes and serves SOCKS4/4a,
//! answers HTTP with `400 Bad Request` (a body saying this is a SOCKS4 proxy), and closes anything
//! else cleanly. Plain std threads and blocking sockets, one thread per connection.
//!
//! It shows the crate's sniff recipe ([`parse_request`] fails with `BadVersion` at byte 0 or
//! `BadCommand` at byte 1 for anything that is not SOCKS4), and a [`ServerHandshake`] driven with
//! blocking I/O: the bytes read while sniffing are fed to it, deadlines become socket timeouts.
//! SOCKS4a names are resolved with the blocking `ToSocketAddrs` (fine on a per-connection thread);
//! BIND is refused (91). Only loopback clients are served.
//!
//! ```sh
//! cargo run -p socks4-core --features std --example sniff -- [127.0.0.1:1083]
//! curl --socks4a 127.0.0.1:1083 http://example.com/   # served
//! curl http://127.0.0.1:1083/                         # 400 Bad Request
//! ```

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::Duration;

use socks4_core::driver::{Candidates, Clock};
use socks4_core::rules::Rules;
use socks4_core::{
    Command, Failure, Limits, Output, ParseError, ReplyCode, ServerHandshake, Status, Target, Timeouts, parse_request,
};

/// The body of the answer to an HTTP request.
const HTTP_BODY: &str = "This is a SOCKS4/SOCKS4a proxy, not an HTTP server or HTTP proxy.\n";

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
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        hs.handle_timeout(clock.now());
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Output::Relay => {
                let Some(upstream) = upstream else { return Err(io::Error::other("relay without an upstream")) };
                client.set_read_timeout(None)?;
                let (up, down) = relay(client, upstream, &early)?;
                eprintln!("{peer}: done, {up} bytes up, {down} down");
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

/// Relays both ways on two threads until both directions have ended: the early data first, each
/// EOF passed on with `shutdown(Write)`. An error in one direction shuts both sockets, which ends
/// the other. Returns the bytes sent up and down.
fn relay(client: TcpStream, upstream: TcpStream, early: &[u8]) -> io::Result<(u64, u64)> {
    (&upstream).write_all(early)?;
    let copy = |from: &TcpStream, to: &TcpStream| {
        let result = io::copy(&mut &*from, &mut &*to).and_then(|n| to.shutdown(Shutdown::Write).map(|()| n));
        if result.is_err() {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
        result
    };
    let (up, down) = thread::scope(|scope| {
        let up = scope.spawn(|| copy(&client, &upstream));
        let down = copy(&upstream, &client);
        (up.join().unwrap_or_else(|_| Err(io::Error::other("relay thread panicked"))), down)
    });
    Ok((up? + early.len() as u64, down?))
}
