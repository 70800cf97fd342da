//! A chaining SOCKS4a proxy on tokio: it serves SOCKS4/4a clients and forwards every CONNECT through
//! an upstream SOCKS4a proxy, passing host names on unresolved.
//!
//! It shows both state machines together: the [`ServerHandshake`] runs with [`Names::Forward`], so
//! a SOCKS4a name is never resolved here (the rules see the name, no placeholder address); each
//! [`Output::Connect`] target goes straight into [`ClientHandshake::connect_to`] for the upstream.
//! An upstream refusal reaches the client with the upstream's code (`Failure::from(&ConnectError)`
//! gives [`Failure::Rejected`]). Then the two connections are relayed by two tasks that tell the
//! core's [`Relay`] what they did and do what it answers: an EOF is passed on as a half-close, a
//! reset as a reset, and the idle deadline is a timer. BIND is refused (91). Only loopback clients
//! are served.
//!
//! ```sh
//! cargo run -p socks4-tokio -- --listen 127.0.0.1:1080                        # the upstream
//! cargo run -p socks4-core --features std --example chain -- --upstream 127.0.0.1:1080 \
//!     [--listen 127.0.0.1:1082]
//! curl --socks4a 127.0.0.1:1082 http://example.com/   # the upstream resolves example.com
//! ```

use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::SockRef;
use socks4_core::driver::Clock;
use socks4_core::rules::Rules;
use socks4_core::{
    ClientError, ClientHandshake, Command, ConnectError, Failure, Fault, Limits, Names, Output, Relay, RelayEnd,
    RelayOutput, ReplyCode, ServerHandshake, Side, Timeouts,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep_until, timeout_at};

/// A relay with nothing moving either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Each direction of a relay reads at most this much at a time.
const BUF: usize = 16 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (listen, upstream) = parse_args();
    // Loopback clients only. The rules could also name hosts: `allow to *.example.com`.
    let rules = Arc::new(Rules::parse("allow from 127.0.0.0/8\nallow from ::1/128").expect("static rules"));
    let listener = TcpListener::bind(listen).await.expect("binding the listen address");
    // TCP urgent data (`MSG_OOB`) stays in the stream, on the sockets it accepts too: a read
    // returns the urgent byte in its place instead of skipping it.
    SockRef::from(&listener).set_out_of_band_inline(true).expect("SO_OOBINLINE");
    eprintln!("chain: listening on {}, upstream {upstream}", listener.local_addr().expect("listener address"));
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let rules = Arc::clone(&rules);
        tokio::spawn(async move {
            if let Err(e) = serve(client, peer, upstream, &rules).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// One client: the server handshake, the upstream's client handshake for its target, the relay.
async fn serve(mut client: TcpStream, peer: SocketAddr, upstream_addr: SocketAddr, rules: &Rules) -> io::Result<()> {
    let clock = Clock::new();
    let mut hs = ServerHandshake::new(clock.now(), Limits::default(), Timeouts::default()).with_names(Names::Forward);
    let mut buf = vec![0u8; 4096];
    let mut early = Vec::new(); // bytes the client sent after its request
    let mut user_id = Vec::new(); // passed on to the upstream
    let mut upstream = None;
    loop {
        let now = clock.now();
        let reading = hs.wants_input();
        match hs.poll_output() {
            Output::Send(reply) => client.write_all(&reply.to_bytes()).await?,
            Output::Authorize(req) if req.command == Command::Bind => hs.reject(ReplyCode::Rejected)?,
            Output::Authorize(req) => {
                user_id = req.user_id.to_vec();
                hs.authorize(now, rules, peer.ip().to_canonical())?;
            }
            Output::Connect(target) => {
                // The target as the client gave it: an IPv4 address (SOCKS4 upstream) or a host name
                // (SOCKS4a upstream). `connect_to` copies it, which ends the borrow of `hs`.
                let shown = target.to_string();
                let request = match target {
                    // An IPv6 address (`::1` sent as a 4a name is read as one): SOCKS4 cannot
                    // carry it, so it goes upstream as a SOCKS4a name, its text form.
                    socks4_core::Target::Addr(addr) if addr.ip().to_canonical().is_ipv6() => {
                        ClientHandshake::connect_host(&addr.ip().to_string(), addr.port(), &user_id)
                    }
                    target => ClientHandshake::connect_to(target, &user_id),
                };
                let deadline = hs.deadline().map(|d| Instant::from_std(clock.instant(d)));
                let result = match request {
                    Ok(request) => connect_upstream(upstream_addr, request, deadline).await,
                    Err(e) => Err(ConnectError::Encode(e)),
                };
                let now = clock.now();
                match result {
                    Ok(stream) => {
                        let local = stream.local_addr().map_err(|e| Failure::from(&e));
                        hs.handle_connected(now, local)?;
                        upstream = Some(stream);
                    }
                    Err(e) => {
                        eprintln!("{peer}: {shown} via {upstream_addr}: {e}");
                        hs.handle_connected(now, Err(Failure::from(&e)))?;
                    }
                }
            }
            // Only a BIND by name asks to resolve with `Names::Forward`; BIND is refused anyway.
            Output::Resolve { .. } => hs.handle_resolved(now, Err(Failure::Other))?,
            Output::Listen { .. } => hs.handle_listening(now, Err(Failure::Other))?,
            // Every action above is performed inline, so the only waiting is for the request.
            Output::Wait { deadline } if reading => {
                let read = match deadline {
                    Some(d) => timeout_at(Instant::from_std(clock.instant(d)), client.read(&mut buf)).await,
                    None => Ok(client.read(&mut buf).await),
                };
                let now = clock.now();
                match read {
                    Err(_elapsed) => hs.handle_timeout(now),
                    Ok(Ok(0)) => hs.handle_eof(now),
                    Ok(Ok(n)) => {
                        let used = hs.handle_input(now, &buf[..n]);
                        if !hs.wants_input() {
                            early.extend_from_slice(&buf[used..n]);
                        }
                    }
                    Ok(Err(e)) => return Err(e),
                }
            }
            Output::Relay => {
                let Some(upstream) = upstream else { return Err(io::Error::other("relay without an upstream")) };
                let (end, relay) = relay(client, upstream, &early, clock).await;
                let (up, down) = (relay.bytes(Side::Client), relay.bytes(Side::Upstream));
                eprintln!("{peer}: relay {end}, {up} bytes up, {down} down");
                return Ok(());
            }
            Output::Closed(reason) => {
                eprintln!("{peer}: {reason}");
                return Ok(()); // the reply, if any, was written by `Send`; dropping closes
            }
            other => return Err(io::Error::other(format!("unexpected handshake output {other:?}"))),
        }
    }
}

/// Connects to the upstream proxy and runs the client handshake, within the deadline.
async fn connect_upstream(
    upstream: SocketAddr,
    mut hs: ClientHandshake,
    deadline: Option<Instant>,
) -> Result<TcpStream, ConnectError> {
    let handshake = async {
        let mut stream = TcpStream::connect(upstream).await?;
        stream.write_all(hs.request_bytes()).await?;
        let mut reply = [0u8; socks4_core::REPLY_LEN];
        loop {
            // Never read past the reply: what follows it is the destination's data.
            let want = hs.bytes_wanted();
            let n = stream.read(&mut reply[..want]).await?;
            if n == 0 {
                return Err(ClientError::UnexpectedEof.into()); // closed before the whole reply
            }
            if let (_, Some(event)) = hs.handle_input(&reply[..n])? {
                event.granted()?; // a refusal becomes ConnectError::Rejected(code)
                return Ok(stream);
            }
        }
    };
    match deadline {
        Some(deadline) => timeout_at(deadline, handshake).await.unwrap_or(Err(ConnectError::TimedOut)),
        None => handshake.await,
    }
}

/// Relays both ways until the core's [`Relay`] says it is over: both directions ended (each EOF
/// passed on as a half-close), one side failed (the other is reset), or nothing moved for
/// [`IDLE_TIMEOUT`]. The early data goes up first. Returns how it ended and the relay's books.
async fn relay(client: TcpStream, upstream: TcpStream, early: &[u8], clock: Clock) -> (RelayEnd, Relay) {
    let _ = SockRef::from(&upstream).set_out_of_band_inline(true); // as the listener's
    let relay = Mutex::new(Relay::new(clock.now(), IDLE_TIMEOUT));
    let r = Relaying { relay, client: &client, upstream: &upstream, clock };
    // A direction ends with `Ok` at its EOF, which disables its branch (the other goes on), or with
    // `Err` once the relay is over.
    let end = tokio::select! {
        Err(end) = r.pump(Side::Client, early) => end,
        Err(end) = r.pump(Side::Upstream, &[]) => end,
        end = r.idle_timer() => end,
    };
    // The sockets close on return: an aborted one (linger 0) with a reset.
    (end, r.relay.into_inner().expect("relay lock"))
}

/// The relay's books and the two sockets it acts on, shared by the two directions and the timer.
/// (A `Mutex` because `tokio::spawn` wants `Send`; it is never contended, nor held across an
/// `await`.)
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

    /// Gives the relay one input, then does what it asks; `Err` with the end once it is over.
    fn feed(&self, input: impl FnOnce(&mut Relay, Duration)) -> Result<(), RelayEnd> {
        let mut relay = self.relay.lock().expect("relay lock");
        input(&mut relay, self.clock.now());
        loop {
            match relay.poll_output() {
                // The peer may be gone already: the direction is over either way.
                RelayOutput::Shutdown(side) => drop(SockRef::from(self.socket(side)).shutdown(Shutdown::Write)),
                // Closing the socket (when `relay` returns) then sends a reset.
                RelayOutput::Abort(side) => drop(self.socket(side).set_zero_linger()),
                RelayOutput::Done(end) => return Err(end),
                _ => return Ok(()), // `Wait`: the idle timer reads the deadline
            }
        }
    }

    /// A read from or a write to `on` failed: the relay ends (and resets the other side).
    fn fail(&self, on: Side, e: &io::Error) -> RelayEnd {
        self.feed(|r, now| r.handle_error(now, on, Fault::from(e))).err().unwrap_or(RelayEnd::Error(on))
    }

    /// Copies `from` to its peer, `first` first, until `from`'s EOF (`Ok`) or the relay's end.
    async fn pump(&self, from: Side, first: &[u8]) -> Result<(), RelayEnd> {
        let src = self.socket(from);
        self.feed(|r, now| r.handle_read(now, from, first.len()))?;
        self.write_all(from, first).await?;
        let mut buf = vec![0u8; BUF];
        loop {
            src.readable().await.map_err(|e| self.fail(from, &e))?;
            let n = match src.try_read(&mut buf) {
                Ok(0) => return self.feed(|r, now| r.handle_eof(now, from)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(self.fail(from, &e)),
            };
            self.feed(|r, now| r.handle_read(now, from, n))?;
            self.write_all(from, &buf[..n]).await?;
        }
    }

    /// Writes `data`, read from `from`, to its peer.
    async fn write_all(&self, from: Side, mut data: &[u8]) -> Result<(), RelayEnd> {
        let (dst, to) = (self.socket(from.peer()), from.peer());
        while !data.is_empty() {
            dst.writable().await.map_err(|e| self.fail(to, &e))?;
            match dst.try_write(data) {
                Ok(n) => {
                    self.feed(|r, now| r.handle_written(now, from, n))?;
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.fail(to, &e)),
            }
        }
        Ok(())
    }

    /// Ends the relay at its idle deadline, which progress keeps moving (never, without one).
    async fn idle_timer(&self) -> RelayEnd {
        loop {
            let deadline = self.relay.lock().expect("relay lock").deadline();
            let Some(deadline) = deadline else { return std::future::pending().await };
            sleep_until(Instant::from_std(self.clock.instant(deadline))).await;
            if let Err(end) = self.feed(|r, now| r.handle_timeout(now)) {
                return end;
            }
        }
    }
}

/// `--upstream ADDR [--listen ADDR]`
fn parse_args() -> (SocketAddr, SocketAddr) {
    let usage = "usage: chain --upstream HOST:PORT [--listen ADDR (default 127.0.0.1:1082)]";
    let (mut listen, mut upstream) = ("127.0.0.1:1082".to_owned(), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--upstream", Some(v)) => upstream = Some(v),
            _ => exit_with(usage),
        }
    }
    let resolve = |s: &str| match s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        Ok(None) => exit_with(&format!("{s}: no address")),
        Err(e) => exit_with(&format!("{s}: {e}")),
    };
    let upstream = upstream.unwrap_or_else(|| exit_with(usage));
    (resolve(&listen), resolve(&upstream))
}

fn exit_with(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}
