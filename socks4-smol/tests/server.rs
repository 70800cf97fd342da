//! Server behaviour beyond the shared scenarios: connection limit, graceful shutdown, idle
//! timeout, config refusal (library and binary).
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use socks4_server::ServerConfig;
use socks4_smol::{Server, ServerHandle};
use socks4_tools::targets::EchoTarget;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a server with a config, on one runtime or another.
type Spawn = fn(ServerConfig) -> ServerHandle;

fn on_smol(config: ServerConfig) -> ServerHandle {
    Server::bind(config).unwrap().spawn().unwrap()
}

#[cfg(feature = "async-std")]
fn on_async_std(config: ServerConfig) -> ServerHandle {
    Server::bind(config).unwrap().spawn_on::<socks4_smol::AsyncStd>().unwrap()
}

/// One `#[test]` per case and runtime.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod smol_runtime {
            $( #[test] fn $case() { super::$case(super::on_smol) } )*
        }
        #[cfg(feature = "async-std")]
        mod async_std_runtime {
            $( #[test] fn $case() { super::$case(super::on_async_std) } )*
        }
    };
}

cases!(
    max_connections_closes_extra_and_keeps_accepting,
    graceful_shutdown_finishes_a_live_transfer,
    shutdown_grace_expiry_closes_stuck_connections,
    idle_relay_is_closed,
    bind_listens_on_the_address_the_client_reached,
);

/// Opens a CONNECT through `proxy` to `target` with std sockets; panics unless granted.
fn open(proxy: SocketAddr, target: SocketAddrV4) -> TcpStream {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = vec![4, 1];
    req.extend_from_slice(&target.port().to_be_bytes());
    req.extend_from_slice(&target.ip().octets());
    req.push(0);
    s.write_all(&req).unwrap();
    let mut reply = [0; 8];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 90, "reply {reply:?}");
    s
}

/// Did the peer close (EOF or reset) within the read timeout?
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
    }
}

fn max_connections_closes_extra_and_keeps_accepting(spawn: Spawn) {
    common::init_tracing();
    let mut config = common::test_config();
    config.max_connections = 2;
    let handle = spawn(config);
    let proxy = handle.local_addrs()[0];
    let echo = EchoTarget::start().unwrap();
    let a = open(proxy, echo.addr());
    let mut b = open(proxy, echo.addr());

    let mut extra = TcpStream::connect(proxy).unwrap();
    extra.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = extra.write_all(&[4, 1, 0, 7, 127, 0, 0, 1, 0]);
    assert!(closed(&mut extra), "the connection over the limit was not closed");
    assert!(handle.refused_connections() >= 1);

    // The two live ones still work.
    b.write_all(b"still here").unwrap();
    let mut buf = [0; 10];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    // Free a slot: the server accepts again (bounded retries while the slot is released).
    drop(a);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(&[4, 1, 0, 7, 127, 0, 0, 1, 0]).unwrap();
        let mut reply = [0; 8];
        if s.read_exact(&mut reply).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed within {TIMEOUT:?}");
        thread::sleep(Duration::from_millis(50));
    }
    drop(b);
    handle.shutdown();
}

fn graceful_shutdown_finishes_a_live_transfer(spawn: Spawn) {
    common::init_tracing();
    let mut config = common::test_config();
    config.timeouts.shutdown_grace = Duration::from_secs(10);
    let handle = spawn(config);
    let proxy = handle.local_addrs()[0];

    // A target that sends its data only after the shutdown began, then closes.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = match target.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let target_thread = thread::spawn(move || {
        let (mut conn, _) = target.accept().unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut first = [0; 5];
        conn.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"start");
        go_rx.recv_timeout(TIMEOUT).unwrap();
        let payload = vec![7u8; 1 << 20];
        conn.write_all(&payload).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        rest
    });

    let mut client = open(proxy, target_addr);
    client.write_all(b"start").unwrap();
    thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    let shutdown = thread::spawn(move || handle.shutdown());
    // New connections are refused once the listener is closed (bounded wait).
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect(proxy).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        thread::sleep(Duration::from_millis(20));
    }
    go_tx.send(()).unwrap();

    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 1 << 20, "the live transfer was cut");
    client.write_all(b"bye").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(target_thread.join().unwrap(), b"bye");
    shutdown.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(9), "shutdown waited for the whole grace period");
}

fn shutdown_grace_expiry_closes_stuck_connections(spawn: Spawn) {
    common::init_tracing();
    let mut config = common::test_config();
    config.timeouts.shutdown_grace = Duration::from_millis(300);
    let handle = spawn(config);
    let proxy = handle.local_addrs()[0];
    let echo = EchoTarget::start().unwrap();
    let mut client = open(proxy, echo.addr());
    handle.shutdown();
    assert!(closed(&mut client), "a relay outlived the grace period");
}

fn idle_relay_is_closed(spawn: Spawn) {
    common::init_tracing();
    let mut config = common::test_config();
    config.timeouts.idle = Duration::from_millis(300);
    let handle = spawn(config);
    let proxy = handle.local_addrs()[0];
    let echo = EchoTarget::start().unwrap();
    let mut client = open(proxy, echo.addr());
    let started = Instant::now();
    assert!(closed(&mut client), "the idle relay was not closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
    handle.shutdown();
}

#[test]
fn library_refuses_open_proxy() {
    let mut config = ServerConfig::default();
    config.listen = vec!["0.0.0.0:0".parse().unwrap()];
    let err = Server::bind(config).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("open proxy"), "{err}");
}

#[test]
fn binary_refuses_non_loopback_without_rules() {
    let out = Command::new(env!("CARGO_BIN_EXE_socks4-smol")).args(["--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open proxy") && stderr.contains("0.0.0.0:0"), "stderr: {stderr}");
}

fn bind_listens_on_the_address_the_client_reached(spawn: Spawn) {
    // The BIND listener uses the client connection's local address, here 127.0.0.1.
    common::init_tracing();
    let handle = spawn(common::test_config());
    let proxy = handle.local_addrs()[0];
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(&[4, 2, 0, 21, 127, 0, 0, 1, 0]).unwrap();
    let mut reply = [0; 8];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 90);
    assert_eq!(Ipv4Addr::new(reply[4], reply[5], reply[6], reply[7]), Ipv4Addr::LOCALHOST);
    drop(s);
    handle.shutdown();
}

#[test]
fn reuseport_gives_each_worker_a_listener() {
    common::init_tracing();
    let mut config = common::test_config();
    (config.reuseport, config.workers) = (true, Some(2));
    let handle = on_smol(config);
    let proxy = handle.local_addrs()[0];
    let echo = EchoTarget::start().unwrap();
    for _ in 0..8 {
        let mut s = open(proxy, echo.addr());
        s.write_all(b"hi").unwrap();
        let mut buf = [0; 2];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }
    handle.shutdown();
}

/// `--listen [::ffff:127.0.0.1]:0` listens on 127.0.0.1 (as on every adapter), and an upstream
/// reset is logged in the same words as on every adapter, with the same counts.
#[test]
fn mapped_listen_address_and_reset_log_words() {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_socks4-smol"));
    if let Err(f) = socks4_tools::binary::mapped_listen_and_reset_words(binary) {
        panic!("{f}");
    }
}

/// Ident (RFC 1413) against Debian's oidentd: a confirmed user id gets 90, another 93, a host
/// without identd 92 (skipped without oidentd unless `SOCKS4_REQUIRE_IDENTD` is set, as in CI).
#[test]
fn ident_rules_against_oidentd() {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_socks4-smol"));
    match socks4_tools::binary::ident_rules(binary) {
        Ok(socks4_tools::scenarios::Outcome::Skip(why)) => println!("SKIP ident_rules_against_oidentd: {why}"),
        Ok(socks4_tools::scenarios::Outcome::Pass) => {}
        Err(f) => panic!("{f}"),
    }
}
