//! A chaining SOCKS4a proxy on tokio: it serves SOCKS4/4a clients and forwards every CONNECT through
//! an upstream SOCKS4a proxy, passing host names on unresolved.
//!
//! It shows both state machines together: the [`ServerHandshake`] runs with [`Names::Forward`], so
//! a SOCKS4a name is never resolved here (the rules see the name, no placeholder address); each
//! [`Output::Connect`] target goes straight into [`ClientHandshake::connect_to`] for the upstream.
//! An upstream refusal reaches the client with the upstream's code (`Failure::from(&ConnectError)`
//! gives [`Failure::Rejected`]). Then the two connections are relayed, half-close included.
//! BIND is refused (91). Only loopback clients are served.
//!
//! ```sh
//! cargo run -p socks4-tokio -- --listen 127.0.0.1:1080                        # the upstream
//! cargo run -p socks4-core --features std --example chain -- --upstream 127.0.0.1:1080 \
//!     [--listen 127.0.0.1:1082]
//! curl --socks4a 127.0.0.1:1082 http://example.com/   # the upstream resolves example.com
//! ```

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use socks4_core::driver::Clock;
use socks4_core::rules::Rules;
use socks4_core::{
    ClientError, ClientHandshake, Command, ConnectError, Failure, Limits, Names, Output, ReplyCode, ServerHandshake,
    Timeouts,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (listen, upstream) = parse_args();
    // Loopback clients only. The rules could also name hosts: `allow to *.example.com`.
    let rules = Arc::new(Rules::parse("allow from 127.0.0.0/8\nallow from ::1/128").expect("static rules"));
    let listener = TcpListener::bind(listen).await.expect("binding the listen address");
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
                let request = ClientHandshake::connect_to(target, &user_id);
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
                let (up, down) = relay(client, upstream, &early).await?;
                eprintln!("{peer}: done, {up} bytes up, {down} down");
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

/// Relays both ways until both directions have ended: the early data first, and each EOF passed on
/// as a half-close (`shutdown(Write)`). Returns the bytes sent up and down.
async fn relay(mut client: TcpStream, mut upstream: TcpStream, early: &[u8]) -> io::Result<(u64, u64)> {
    upstream.write_all(early).await?;
    let (mut client_rd, mut client_wr) = client.split();
    let (mut upstream_rd, mut upstream_wr) = upstream.split();
    let up = async {
        let n = tokio::io::copy(&mut client_rd, &mut upstream_wr).await?;
        upstream_wr.shutdown().await?;
        Ok::<_, io::Error>(n)
    };
    let down = async {
        let n = tokio::io::copy(&mut upstream_rd, &mut client_wr).await?;
        client_wr.shutdown().await?;
        Ok::<_, io::Error>(n)
    };
    let (up, down) = tokio::try_join!(up, down)?;
    Ok((up + early.len() as u64, down))
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
