//! A single-threaded SOCKS4/4a server on `mio`: the whole drive loop of a [`ServerHandshake`] with
//! non-blocking sockets, no async runtime, then the relay driven by the core's [`Relay`].
//!
//! It shows how an embedder feeds the handshake (bytes, EOF, connect results, deadlines), drains
//! [`ServerHandshake::poll_output`] and performs each action, then moves the bytes both ways and
//! tells the [`Relay`] what happened: it answers with what to do (pass an EOF on as a half-close, a
//! reset as a reset) and when the connection is idle. One `mio::Poll` waits for socket events, and
//! its timeout is the earliest deadline of all connections, handshake or relay (no timer wheel).
//!
//! Limits, kept for brevity: SOCKS4a names are resolved with the blocking `ToSocketAddrs` (it stalls
//! every connection while it runs; a real server hands lookups to a thread); BIND is answered with
//! a rejection (91).
//!
//! ```sh
//! cargo run -p socks4-core --features std --example mio_server -- 127.0.0.1:1081 \
//!     [--allow RULE]... [--deny RULE]... [--handshake-timeout SECS] [--idle-timeout SECS]
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
use socket2::SockRef;
use socks4_core::driver::{Candidates, Clock};
use socks4_core::rules::Rules;
use socks4_core::{
    Command, Failure, Fault, Limits, Output, Relay, RelayOutput, ReplyCode, ServerHandshake, Side, Target, Timeouts,
};

const LISTENER: Token = Token(usize::MAX);
/// Each direction of a relay buffers at most this much.
const BUF: usize = 16 * 1024;

/// What the command line sets.
struct Config {
    rules: Rules,
    timeouts: Timeouts,
    /// A relay with nothing moving either way for this long is closed (zero: never).
    idle: Duration,
}

fn main() {
    let (listen, config) = parse_args();
    let clock = Clock::new();
    let mut poll = Poll::new().expect("creating the mio Poll");
    let mut listener = TcpListener::bind(listen).expect("binding the listen address");
    // TCP urgent data (`MSG_OOB`) stays in the stream, on the sockets it accepts too: a read
    // returns the urgent byte in its place instead of skipping it.
    SockRef::from(&listener).set_out_of_band_inline(true).expect("SO_OOBINLINE");
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).expect("registering the listener");
    eprintln!("mio_server: listening on {}", listener.local_addr().expect("listener address"));

    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_id = 0usize;
    loop {
        // Sleep until a socket is ready or the earliest deadline passes.
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
                            let mut conn = Conn::new(id, client, addr, now, config.timeouts);
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
                conn.step(registry, &config, now);
            }
        }

        // Deadlines: a handshake whose deadline has passed times out (91 and close, or a close);
        // a relay whose deadline has passed was idle that long.
        for conn in conns.values_mut() {
            if conn.deadline.is_some_and(|d| d <= now) {
                match &mut conn.stage {
                    Stage::Handshake => conn.hs.handle_timeout(now),
                    Stage::Relay(relay) => relay.handle_timeout(now),
                    Stage::Done => {}
                }
                conn.step(registry, &config, now);
            }
        }
        conns.retain(|_, conn| {
            let done = matches!(conn.stage, Stage::Done);
            if done {
                let _ = registry.deregister(&mut conn.client);
                if let Some(up) = conn.upstream.as_mut() {
                    let _ = registry.deregister(up);
                }
            }
            !done // dropping the sockets closes them (with a reset where the relay aborted one)
        });
    }
}

enum Stage {
    /// Reading the request, resolving, authorizing, connecting.
    Handshake,
    /// Relaying both directions; the relay keeps the books.
    Relay(Relay),
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
    /// The handshake's or the relay's deadline, from the last `Wait`.
    deadline: Option<Duration>,
    /// A SOCKS4a name's other addresses, next one last (for `retry_connect`).
    candidates: Candidates,
    /// Client → upstream. Holds the early data (bytes after the request) before the relay starts.
    up: Buffer,
    /// Upstream → client.
    down: Buffer,
}

impl Conn {
    fn new(id: usize, client: TcpStream, client_addr: SocketAddr, now: Duration, timeouts: Timeouts) -> Self {
        let hs = ServerHandshake::new(now, Limits::default(), timeouts);
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
            up: Buffer::new(),
            down: Buffer::new(),
        }
    }

    /// Does everything that can be done now; an I/O error in the handshake ends the connection
    /// (in the relay, the relay decides).
    fn step(&mut self, registry: &Registry, config: &Config, now: Duration) {
        if matches!(self.stage, Stage::Handshake) {
            if let Err(e) = self.handshake(registry, config, now) {
                eprintln!("{}: {e}", self.client_addr);
                self.stage = Stage::Done;
            }
        }
        if matches!(self.stage, Stage::Relay(_)) {
            self.relay(now);
        }
    }

    fn handshake(&mut self, registry: &Registry, config: &Config, now: Duration) -> io::Result<()> {
        // 1. Feed the request. Read only while the handshake wants input: bytes after the request are
        //    the client's payload, kept (in `up`) or left in the socket until the relay.
        while self.hs.wants_input() {
            match self.client.read(&mut self.up.data) {
                Ok(0) => self.hs.handle_eof(now),
                Ok(n) => {
                    let used = self.hs.handle_input(now, &self.up.data[..n]);
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
                // A reply is 8 bytes, the first the client gets: the empty send buffer of a fresh
                // socket takes it whole, even without blocking.
                Output::Send(reply) => self.client.write_all(&reply.to_bytes())?,
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
                    self.hs.authorize(now, &config.rules, self.client_addr.ip().to_canonical())?;
                }
                Output::Connect(Target::Addr(addr)) => match TcpStream::connect(addr) {
                    // Non-blocking: the result comes as a writable event (step 2).
                    Ok(mut up) => {
                        let _ = SockRef::from(&up).set_out_of_band_inline(true); // as the listener's
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
                    return Ok(());
                }
                Output::Relay => {
                    eprintln!("{}: relaying", self.client_addr);
                    // The early data waiting in `up` was read from the client: it goes up first.
                    let mut relay = Relay::new(now, config.idle);
                    relay.handle_read(now, Side::Client, self.up.end - self.up.start);
                    self.stage = Stage::Relay(relay);
                    return Ok(());
                }
                Output::Closed(reason) => {
                    eprintln!("{}: {reason}", self.client_addr);
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

    /// Moves what can be moved both ways, telling the relay, then does what the relay asks.
    fn relay(&mut self, now: Duration) {
        let (Stage::Relay(relay), Some(upstream)) = (&mut self.stage, &self.upstream) else { return };
        let client = &self.client;
        let socket = |side| match side {
            Side::Client => client,
            Side::Upstream => upstream,
        };
        self.up.pump(relay, now, Side::Client, client, upstream);
        self.down.pump(relay, now, Side::Upstream, upstream, client);
        loop {
            match relay.poll_output() {
                // The peer may be gone already: the direction is over either way.
                RelayOutput::Shutdown(side) => drop(socket(side).shutdown(Shutdown::Write)),
                // Closing the socket (when the connection is dropped) then sends a reset.
                RelayOutput::Abort(side) => drop(SockRef::from(socket(side)).set_linger(Some(Duration::ZERO))),
                RelayOutput::Wait { deadline } => break self.deadline = deadline,
                RelayOutput::Done(end) => {
                    let (up, down) = (relay.bytes(Side::Client), relay.bytes(Side::Upstream));
                    eprintln!("{}: relay {end}, {up} bytes up, {down} down", self.client_addr);
                    break self.stage = Stage::Done;
                }
                // `RelayOutput` is non_exhaustive too.
                other => {
                    eprintln!("{}: unexpected relay output {other:?}", self.client_addr);
                    break self.stage = Stage::Done;
                }
            }
        }
    }
}

/// One direction of a relay: bytes read from one socket and not yet written to the other,
/// `data[start..end]`.
struct Buffer {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new() -> Self {
        Buffer { data: vec![0; BUF].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Moves bytes from `src` (the `from` side) to `dst` until one of them would block, what is
    /// buffered first, and tells the relay what was read and written, the EOF or the error.
    fn pump(&mut self, relay: &mut Relay, now: Duration, from: Side, mut src: &TcpStream, mut dst: &TcpStream) {
        loop {
            if self.start < self.end {
                match dst.write(&self.data[self.start..self.end]) {
                    Ok(0) => return relay.handle_error(now, from.peer(), Fault::Other),
                    Ok(n) => {
                        self.start += n;
                        relay.handle_written(now, from, n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return, // its writable event brings us back
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return relay.handle_error(now, from.peer(), Fault::from(&e)),
                }
                continue;
            }
            if !relay.wants_read(from) {
                return; // after its EOF (the relay passes it on), or the relay is over
            }
            match src.read(&mut self.data) {
                Ok(0) => relay.handle_eof(now, from),
                Ok(n) => {
                    (self.start, self.end) = (0, n);
                    relay.handle_read(now, from, n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return relay.handle_error(now, from, Fault::from(&e)),
            }
        }
    }
}

/// `[LISTEN_ADDR] [--allow RULE]... [--deny RULE]... [--handshake-timeout SECS] [--idle-timeout SECS]`
fn parse_args() -> (SocketAddr, Config) {
    let usage = "usage: mio_server [LISTEN_ADDR] [--allow RULE]... [--deny RULE]... [--handshake-timeout SECS] \
                 [--idle-timeout SECS (default 300)]";
    let mut listen = "127.0.0.1:1081".to_owned();
    let mut rules = String::new();
    let mut timeouts = Timeouts::default();
    let mut idle = Duration::from_secs(300);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| exit_with(&format!("{arg} needs a value\n{usage}")));
        match arg.as_str() {
            "--allow" | "--deny" => rules += &format!("{} {}\n", &arg[2..], value()),
            "--handshake-timeout" => timeouts = timeouts.with_handshake(secs(&arg, &value())),
            "--idle-timeout" => idle = secs(&arg, &value()),
            s if !s.starts_with('-') => listen = s.to_owned(),
            _ => exit_with(usage),
        }
    }
    if rules.is_empty() {
        rules = "allow from 127.0.0.0/8\nallow from ::1/128\n".to_owned(); // loopback clients only
    }
    let rules = Rules::parse(&rules).unwrap_or_else(|e| exit_with(&format!("rules: {e}")));
    let listen = listen.parse().unwrap_or_else(|e| exit_with(&format!("{listen}: {e}")));
    (listen, Config { rules, timeouts, idle })
}

/// A number of seconds, e.g. `2` or `0.5`.
fn secs(arg: &str, value: &str) -> Duration {
    let d = value.parse().map_err(|e| format!("{e}"));
    let d = d.and_then(|s| Duration::try_from_secs_f64(s).map_err(|e| format!("{e}")));
    d.unwrap_or_else(|e| exit_with(&format!("{arg} {value}: {e}")))
}

fn exit_with(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}
