//! A single-threaded SOCKS4/4a server on `mio`: the whole drive loop of a [`ServerHandshake`] with
//! non-blocking sockets, no async runtime.
//!
//! It shows how an embedder feeds the handshake (bytes, EOF, connect results, deadlines), drains
//! [`ServerHandshake::poll_output`] and performs each action, then relays both directions with
//! half-close. One `mio::Poll` waits for socket events, and its timeout is the earliest handshake
//! deadline of all connections (no timer wheel needed).
//!
//! Limits, kept for brevity: SOCKS4a names are resolved with the blocking `ToSocketAddrs` (it stalls
//! every connection while it runs; a real server hands lookups to a thread); BIND is answered with
//! a rejection (91); a relay has no idle timeout.
//!
//! ```sh
//! cargo run -p socks4-core --features std --example mio_server -- 127.0.0.1:1081 \
//!     [--allow RULE]... [--deny RULE]... [--handshake-timeout SECS]
//! curl --socks4a 127.0.0.1:1081 http://example.com/
//! ```
//!
//! Without `--allow`/`--deny` only loopback clients are served. Rules are the core's text form
//! without the action word, e.g. `--allow 'from 10.0.0.0/8 port 443'` or `--deny any`.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use socks4_core::driver::{Candidates, Clock};
use socks4_core::rules::Rules;
use socks4_core::{Command, Failure, Limits, Output, ReplyCode, ServerHandshake, Target, Timeouts};

const LISTENER: Token = Token(usize::MAX);
/// Each direction of a relay buffers at most this much.
const BUF: usize = 16 * 1024;

fn main() {
    let (listen, rules, timeouts) = parse_args();
    let clock = Clock::new();
    let mut poll = Poll::new().expect("creating the mio Poll");
    let mut listener = TcpListener::bind(listen).expect("binding the listen address");
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).expect("registering the listener");
    eprintln!("mio_server: listening on {}", listener.local_addr().expect("listener address"));

    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_id = 0usize;
    loop {
        // Sleep until a socket is ready or the earliest handshake deadline passes.
        let now = clock.now();
        let timeout = conns.values().filter_map(|c| c.deadline).min().map(|d| d.saturating_sub(now));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            panic!("poll failed: {e}");
        }
        let now = clock.now();
        let registry = poll.registry();

        for event in events.iter() {
            if event.token() == LISTENER {
                // Edge-triggered: accept until the queue is empty.
                loop {
                    match listener.accept() {
                        Ok((client, addr)) => {
                            let id = next_id;
                            next_id += 1;
                            let mut conn = Conn::new(id, client, addr, now, timeouts);
                            let interest = Interest::READABLE | Interest::WRITABLE;
                            match registry.register(&mut conn.client, Token(id * 2), interest) {
                                Ok(()) => drop(conns.insert(id, conn)),
                                Err(e) => eprintln!("{addr}: register: {e}"),
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
            } else if let Some(conn) = conns.get_mut(&(event.token().0 / 2)) {
                // Client (even token) or upstream (odd): either way, make all the progress we can.
                conn.step(registry, &rules, now);
            }
        }

        // Deadlines: a handshake whose deadline has passed times out (91 and close, or a close).
        for conn in conns.values_mut() {
            if conn.deadline.is_some_and(|d| d <= now) {
                conn.hs.handle_timeout(now);
                conn.step(registry, &rules, now);
            }
        }
        conns.retain(|_, conn| {
            if conn.stage == Stage::Done {
                let _ = registry.deregister(&mut conn.client);
                if let Some(up) = conn.upstream.as_mut() {
                    let _ = registry.deregister(up);
                }
            }
            conn.stage != Stage::Done
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reading the request, resolving, authorizing, connecting.
    Handshake,
    /// Relaying both directions.
    Relay,
    /// Finished: drop the sockets.
    Done,
}

/// One client connection and, once connecting, its upstream.
struct Conn {
    id: usize,
    client: TcpStream,
    client_addr: SocketAddr,
    upstream: Option<TcpStream>,
    hs: ServerHandshake,
    stage: Stage,
    /// The handshake's deadline, from the last `Output::Wait`.
    deadline: Option<Duration>,
    /// A SOCKS4a name's other addresses, next one last (for `retry_connect`).
    candidates: Candidates,
    /// Client → upstream. Holds the early data (bytes after the request) before the relay starts.
    up: Pipe,
    /// Upstream → client. Holds the reply first.
    down: Pipe,
}

impl Conn {
    fn new(id: usize, client: TcpStream, client_addr: SocketAddr, now: Duration, timeouts: Timeouts) -> Self {
        let hs = ServerHandshake::new(now, Limits::default(), timeouts);
        let (up, down) = (Pipe::new(), Pipe::new());
        let deadline = hs.deadline();
        Conn {
            id,
            client,
            client_addr,
            upstream: None,
            hs,
            stage: Stage::Handshake,
            deadline,
            candidates: Candidates::default(),
            up,
            down,
        }
    }

    /// Does everything that can be done now; any I/O error ends the connection.
    fn step(&mut self, registry: &Registry, rules: &Rules, now: Duration) {
        let result = match self.stage {
            Stage::Handshake => self.handshake(registry, rules, now),
            Stage::Relay => self.relay(),
            Stage::Done => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("{}: {e}", self.client_addr);
            self.stage = Stage::Done;
        }
    }

    fn handshake(&mut self, registry: &Registry, rules: &Rules, now: Duration) -> io::Result<()> {
        // 1. Feed the request. Read only while the handshake wants input: bytes after the request are
        //    the client's payload, kept (in `up`) or left in the socket until the relay.
        while self.hs.wants_input() {
            match self.client.read(&mut self.up.buf) {
                Ok(0) => self.hs.handle_eof(now),
                Ok(n) => {
                    let used = self.hs.handle_input(now, &self.up.buf[..n]);
                    (self.up.start, self.up.end) = (used, n); // empty unless the request completed
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // 2. A connect in progress: writable (or an error) means it finished.
        if let Some(up) = self.upstream.as_ref() {
            let result = match up.take_error() {
                Ok(Some(e)) | Err(e) => Some(Err(e)),
                Ok(None) => match up.peer_addr() {
                    Ok(_) => Some(up.local_addr()),
                    Err(e) if e.kind() == ErrorKind::NotConnected => None, // still connecting
                    Err(e) => Some(Err(e)),
                },
            };
            match result {
                Some(Ok(local)) => self.hs.handle_connected(now, Ok(local))?,
                Some(Err(e)) => self.connect_failed(registry, now, Failure::from(&e))?,
                None => {}
            }
        }
        // 3. Drain the handshake's outputs until it waits, relays or closes.
        loop {
            match self.hs.poll_output() {
                Output::Send(reply) => self.down.push(&reply.to_bytes()),
                Output::Resolve { host, port } => {
                    // Blocking lookup (see the top of the file). Answer with the first usable address
                    // and keep the others for `retry_connect`.
                    self.candidates = Candidates::from_lookup((host, port).to_socket_addrs());
                    self.hs.handle_resolved(now, self.candidates.first())?;
                }
                Output::Authorize(req) if req.command == Command::Bind => {
                    // This example does not implement BIND: refuse it (reply 91).
                    self.hs.reject(ReplyCode::Rejected)?;
                }
                Output::Authorize(_) => {
                    self.hs.authorize(now, rules, self.client_addr.ip().to_canonical())?;
                }
                Output::Connect(Target::Addr(addr)) => match TcpStream::connect(addr) {
                    // Non-blocking: the result comes as a writable event (step 2).
                    Ok(mut up) => {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        registry.register(&mut up, Token(self.id * 2 + 1), interest)?;
                        self.upstream = Some(up);
                    }
                    Err(e) => self.connect_failed(registry, now, Failure::from(&e))?,
                },
                // Only with `Names::Forward`, which this server does not use.
                Output::Connect(Target::Host(..)) => self.hs.handle_connected(now, Err(Failure::Other))?,
                // Not reached: BIND is refused at `Authorize`.
                Output::Listen { .. } => self.hs.handle_listening(now, Err(Failure::Other))?,
                Output::Wait { deadline } => {
                    self.deadline = deadline;
                    return self.down.flush(&mut self.client);
                }
                Output::Relay => {
                    eprintln!("{}: relaying", self.client_addr);
                    self.stage = Stage::Relay;
                    self.deadline = None;
                    return self.relay();
                }
                Output::Closed(reason) => {
                    eprintln!("{}: {reason}", self.client_addr);
                    // The reply (8 bytes, if any) fits the empty send buffer of a fresh socket: one
                    // attempt, then close.
                    let _ = self.down.flush(&mut self.client);
                    self.stage = Stage::Done;
                    return Ok(());
                }
                // `Output` is non_exhaustive: a newer core may ask for something we cannot do.
                other => return Err(io::Error::other(format!("unexpected handshake output {other:?}"))),
            }
        }
    }

    /// A connect failed: try the name's next address (unless the time is up), or report it (→ 91).
    fn connect_failed(&mut self, registry: &Registry, now: Duration, failure: Failure) -> io::Result<()> {
        if let Some(mut up) = self.upstream.take() {
            registry.deregister(&mut up)?;
        }
        match self.candidates.next_after(failure) {
            Some(next) => self.hs.retry_connect(now, next)?,
            None => self.hs.handle_connected(now, Err(failure))?,
        }
        Ok(())
    }

    fn relay(&mut self) -> io::Result<()> {
        let Some(upstream) = self.upstream.as_mut() else {
            return Err(io::Error::other("relay without an upstream"));
        };
        self.up.pump(&mut self.client, upstream)?;
        self.down.pump(upstream, &mut self.client)?;
        if self.up.shut && self.down.shut {
            eprintln!("{}: done, {} bytes up, {} down", self.client_addr, self.up.total, self.down.total);
            self.stage = Stage::Done;
        }
        Ok(())
    }
}

/// One direction of a relay: bytes read from one socket and not yet written to the other.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source sent EOF.
    eof: bool,
    /// EOF was passed on: `shutdown(Write)` on the destination.
    shut: bool,
    total: u64,
}

impl Pipe {
    fn new() -> Self {
        Pipe { buf: vec![0; BUF].into_boxed_slice(), start: 0, end: 0, eof: false, shut: false, total: 0 }
    }

    /// Queues bytes (a reply) behind what is buffered.
    fn push(&mut self, bytes: &[u8]) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        let end = (self.end + bytes.len()).min(self.buf.len());
        self.buf[self.end..end].copy_from_slice(&bytes[..end - self.end]);
        self.end = end;
    }

    /// Writes what is buffered; `Ok` also when the destination would block.
    fn flush(&mut self, dst: &mut TcpStream) -> io::Result<()> {
        while self.start < self.end {
            match dst.write(&self.buf[self.start..self.end]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.start += n;
                    self.total += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves bytes from `src` to `dst` until one of them would block, buffered bytes (early data,
    /// the reply) first; passes an EOF on as `shutdown(Write)` once everything before it is written.
    fn pump(&mut self, src: &mut TcpStream, dst: &mut TcpStream) -> io::Result<()> {
        loop {
            self.flush(dst)?;
            if self.start < self.end {
                return Ok(()); // `dst` is full: its writable event brings us back
            }
            if self.eof {
                if !self.shut {
                    dst.shutdown(Shutdown::Write)?;
                    self.shut = true;
                }
                return Ok(());
            }
            match src.read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => (self.start, self.end) = (0, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `[LISTEN_ADDR] [--allow RULE]... [--deny RULE]... [--handshake-timeout SECS]`
fn parse_args() -> (SocketAddr, Rules, Timeouts) {
    let usage = "usage: mio_server [LISTEN_ADDR] [--allow RULE]... [--deny RULE]... [--handshake-timeout SECS]";
    let mut listen = "127.0.0.1:1081".to_owned();
    let mut rules = String::new();
    let mut timeouts = Timeouts::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| exit_with(&format!("{arg} needs a value\n{usage}")));
        match arg.as_str() {
            "--allow" | "--deny" => rules += &format!("{} {}\n", &arg[2..], value()),
            "--handshake-timeout" => {
                let secs = value();
                let d = secs
                    .parse()
                    .map_err(|e| format!("{e}"))
                    .and_then(|s| Duration::try_from_secs_f64(s).map_err(|e| format!("{e}")));
                let d = d.unwrap_or_else(|e| exit_with(&format!("--handshake-timeout {secs}: {e}")));
                timeouts = timeouts.with_handshake(d);
            }
            s if !s.starts_with('-') => listen = s.to_owned(),
            _ => exit_with(usage),
        }
    }
    if rules.is_empty() {
        rules = "allow from 127.0.0.0/8\nallow from ::1/128\n".to_owned(); // loopback clients only
    }
    let rules = Rules::parse(&rules).unwrap_or_else(|e| exit_with(&format!("rules: {e}")));
    let listen = listen.parse().unwrap_or_else(|e| exit_with(&format!("{listen}: {e}")));
    (listen, rules, timeouts)
}

fn exit_with(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}
