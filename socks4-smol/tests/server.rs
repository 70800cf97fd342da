//! Server behaviour beyond the shared scenarios: connection and per-client limits, users file,
//! watching the client while the handshake waits, graceful shutdown, idle timeout, config refusal
//! (library and binary).
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use socks4_server::ServerConfig;
use socks4_smol::{Server, ServerHandle};
use socks4_tools::targets::{EchoTarget, StalledTarget};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a server with a config, on one runtime or another.
type Spawn = fn(ServerConfig) -> ServerHandle;

fn on_smol(config: ServerConfig) -> ServerHandle {
    Server::bind(config).unwrap().spawn().unwrap()
}

/// The pool on async-io's one reactor (`spawn` runs it on a reactor per worker, `SmolLocal`).
fn on_async_io(config: ServerConfig) -> ServerHandle {
    Server::bind(config).unwrap().spawn_on::<socks4_smol::Smol>().unwrap()
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
        mod async_io_runtime {
            $( #[test] fn $case() { super::$case(super::on_async_io) } )*
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
    per_client_limit_closes_extra_at_once,
    users_file_checks_tokens_and_rules_see_names,
    client_reset_while_connecting_ends_the_attempt,
    half_close_while_connecting_is_relayed,
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
    assert!(handle.stats().over_limit >= 1);

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

/// Did the server close without sending anything?
fn closed_silently(s: &mut TcpStream) -> bool {
    let mut buf = [0; 8];
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
    }
}

/// Waits (bounded) until the server serves no connection.
fn until_idle(handle: &ServerHandle, within: Duration) -> bool {
    let end = Instant::now() + within;
    while handle.stats().active > 0 {
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

fn per_client_limit_closes_extra_at_once(spawn: Spawn) {
    common::init_tracing();
    let mut config = common::test_config();
    config.client_limits.max_per_client = 1;
    let handle = spawn(config);
    let proxy = handle.local_addrs()[0];
    let echo = EchoTarget::start().unwrap();
    let first = open(proxy, echo.addr());
    let mut extra = TcpStream::connect(proxy).unwrap();
    extra.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(closed_silently(&mut extra), "a second connection from the same client was served");
    drop(first);
    // Its slot is released with the connection (bounded retries while the relay ends).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let _ = s.write_all(&[4, 1, 0, 7, 127, 0, 0, 1, 0]);
        let mut reply = [0; 8];
        if s.read_exact(&mut reply).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not released within {TIMEOUT:?}");
        thread::sleep(Duration::from_millis(50));
    }
    handle.shutdown();
}

/// Sends a CONNECT to `target` with `user` and returns the reply code.
fn connect_as(proxy: SocketAddr, target: SocketAddrV4, user: &[u8]) -> u8 {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = vec![4, 1];
    req.extend_from_slice(&target.port().to_be_bytes());
    req.extend_from_slice(&target.ip().octets());
    req.extend_from_slice(user);
    req.push(0);
    s.write_all(&req).unwrap();
    let mut reply = [0; 8];
    s.read_exact(&mut reply).unwrap();
    reply[1]
}

fn users_file_checks_tokens_and_rules_see_names(spawn: Spawn) {
    common::init_tracing();
    let dir =
        std::env::temp_dir().join(format!("socks4-smol-users-{}-{:?}", std::process::id(), thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users");
    let hash = socks4_server::users::hash_token;
    let file = format!("alice:{}\ncarol:{}\n", hash(b"alice-token").unwrap(), hash(b"carol-token").unwrap());
    std::fs::write(&path, file).unwrap();
    let mut config = common::test_config();
    config.users = Some(path);
    config.rules = socks4_core::rules::Rules::parse("deny user carol\nallow").unwrap();
    let handle = spawn(config);
    let proxy = handle.local_addrs()[0];
    let echo = EchoTarget::start().unwrap();
    assert_eq!(connect_as(proxy, echo.addr(), b"alice:alice-token"), 90);
    assert_eq!(connect_as(proxy, echo.addr(), b"alice:alice-token"), 90, "cached");
    assert_eq!(connect_as(proxy, echo.addr(), b"alice:wrong"), 93);
    assert_eq!(connect_as(proxy, echo.addr(), b"mallory:alice-token"), 93);
    assert_eq!(connect_as(proxy, echo.addr(), b"alice"), 93, "no token");
    assert_eq!(connect_as(proxy, echo.addr(), b"carol:carol-token"), 91, "rules see the name");
    handle.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

fn client_reset_while_connecting_ends_the_attempt(spawn: Spawn) {
    common::init_tracing();
    let handle = spawn(common::test_config()); // connect timeout 10 s
    let proxy = handle.local_addrs()[0];
    let target = StalledTarget::start().unwrap();
    let s = TcpStream::connect(proxy).unwrap();
    (&s).write_all(&target.request(b"").unwrap()).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(handle.stats().active, 1, "the connect did not stall");
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s); // reset
    assert!(until_idle(&handle, Duration::from_secs(2)), "the connect attempt outlived its client");
    drop(target);
    handle.shutdown();
}

fn half_close_while_connecting_is_relayed(spawn: Spawn) {
    // Request, early data and end of file at once, while the connect stalls: the half-close is
    // not leaving, and the target gets the data, then the end of file.
    common::init_tracing();
    let handle = spawn(common::test_config());
    let proxy = handle.local_addrs()[0];
    let mut target = StalledTarget::start().unwrap();
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(&target.request(b"early").unwrap()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    thread::sleep(Duration::from_millis(300));
    // Make room: the proxy's retried SYN gets through.
    let mut conn = target.accept_released(b"early", TIMEOUT).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let mut reply = [0; 8];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 90);
    conn.write_all(b"bye").unwrap();
    drop(conn);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    handle.shutdown();
}
