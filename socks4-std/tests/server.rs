//! Server behaviour beyond the shared scenarios: connection and per-client limits, idle timeout,
//! graceful shutdown, config validation, users file, watching the client during the handshake.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socks4_std::Server;
use socks4_tools::targets::{EchoTarget, StalledTarget};

use common::{T, round_trip};

/// Waits (bounded) for the peer to close: EOF or reset.
fn expect_closed(s: &mut TcpStream, within: Duration) {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {}
        other => panic!("expected the proxy to close the connection, got {other:?}"),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connections_over_the_limit_are_closed_and_counted() {
    let mut config = common::test_config(2);
    config.max_connections = 2;
    let (proxy, handle) = common::start_with(config);
    let echo = EchoTarget::start().expect("echo");
    let mut a =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"").expect("first");
    let mut b =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"").expect("second");
    round_trip(&mut a, b"a");
    round_trip(&mut b, b"b");
    let mut c = TcpStream::connect(proxy).expect("tcp connect still works");
    expect_closed(&mut c, T);
    let stats = handle.stats();
    assert_eq!((stats.active, stats.accepted, stats.over_limit), (2, 2, 1), "{stats:?}");
    // The others are unaffected; closing one makes room again.
    round_trip(&mut a, b"still a");
    drop(b);
    wait_until("the closed connection to be released", || handle.stats().active < 2);
    let mut d =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"").expect("room again");
    round_trip(&mut d, b"d");
}

#[test]
fn idle_relays_are_closed() {
    let mut config = common::test_config(1);
    config.timeouts.idle = Duration::from_millis(300);
    let (proxy, _handle) = common::start_with(config);
    let echo = EchoTarget::start().expect("echo");
    let mut s =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"").expect("CONNECT");
    // Traffic keeps it alive past the idle timeout...
    for _ in 0..4 {
        round_trip(&mut s, b"keepalive");
        thread::sleep(Duration::from_millis(100));
    }
    // ...silence ends it.
    expect_closed(&mut s, T);
}

#[test]
fn shutdown_lets_relays_finish_within_the_grace_period_then_closes() {
    let mut config = common::test_config(2);
    config.timeouts.shutdown_grace = Duration::from_secs(2);
    let (proxy, handle) = common::start_with(config);
    let echo = EchoTarget::start().expect("echo");
    let mut s =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"").expect("CONNECT");
    round_trip(&mut s, b"before");
    let started = Instant::now();
    let stopper = thread::spawn(move || handle.shutdown());
    // New connections are refused once the listener is closed.
    wait_until("the listener to close", || TcpStream::connect_timeout(&proxy, T).is_err());
    // The live relay still works during the grace period.
    round_trip(&mut s, b"during the grace period");
    stopper.join().expect("shutdown");
    assert!(started.elapsed() >= Duration::from_millis(1500), "shutdown did not wait for the live relay");
    expect_closed(&mut s, T);
}

#[test]
fn shutdown_is_prompt_when_nothing_is_open() {
    let (_proxy, handle) = common::start_with(common::test_config(2));
    let started = Instant::now();
    handle.shutdown();
    assert!(started.elapsed() < T);
}

#[test]
fn relays_that_end_by_themselves_do_not_hold_up_shutdown() {
    let mut config = common::test_config(1);
    config.timeouts.shutdown_grace = Duration::from_secs(30);
    let (proxy, handle) = common::start_with(config);
    let echo = EchoTarget::start().expect("echo");
    let mut s =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"").expect("CONNECT");
    round_trip(&mut s, b"x");
    let stopper = thread::spawn(move || handle.shutdown());
    thread::sleep(Duration::from_millis(200));
    s.shutdown(Shutdown::Write).expect("half-close");
    expect_closed(&mut s, T);
    stopper.join().expect("shutdown returns once the relay ended, well before the 30 s grace");
}

#[test]
fn an_open_proxy_config_is_refused() {
    let mut config = common::test_config(1);
    config.listen = vec!["0.0.0.0:0".parse().expect("addr")];
    config.rules = socks4_core::rules::Rules::default();
    assert!(Server::bind(config).is_err());
}

#[cfg(target_os = "linux")]
#[test]
fn reuseport_mode_has_every_worker_accept_on_its_own_listener() {
    let mut config = common::test_config(3);
    config.reuseport = true;
    let (proxy, handle) = common::start_with(config);
    let echo = EchoTarget::start().expect("echo");
    let mut conns: Vec<TcpStream> = (0..30)
        .map(|i| {
            socks4_std::connect(
                socks4_std::ProxyAddr::from(proxy).with_timeout(T),
                echo.addr(),
                format!("u{i}").as_bytes(),
            )
            .expect("CONNECT")
        })
        .collect();
    for s in &mut conns {
        round_trip(s, b"via reuseport");
    }
    assert_eq!(handle.stats().active, 30);
    drop(conns);
    handle.shutdown();
}

/// A client that resets while the connect stalls ends the handshake at once, connect attempt and all.
#[test]
fn client_reset_while_connecting_ends_the_attempt() {
    let (proxy, handle) = common::start_with(common::test_config(1)); // connect timeout 10 s
    let target = StalledTarget::start().expect("stalled target");
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.write_all(&target.request(b"").expect("request")).expect("request");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(handle.stats().active, 1, "the connect did not stall");
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("linger");
    drop(s); // reset
    let deadline = Instant::now() + Duration::from_secs(2);
    while handle.stats().active > 0 {
        assert!(Instant::now() < deadline, "the connect attempt outlived its client");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Request, early data and EOF at once while the connect stalls: the half-close is not leaving;
/// the target gets the data, then the EOF, and the client its reply and the answer.
#[test]
fn half_close_while_connecting_is_relayed() {
    let (proxy, _handle) = common::start_with(common::test_config(1));
    let mut target = StalledTarget::start().expect("stalled target");
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(&target.request(b"early").expect("request")).expect("request");
    s.shutdown(Shutdown::Write).expect("half-close");
    thread::sleep(Duration::from_millis(300));
    // Make room: the proxy's retried SYN gets through.
    let mut conn = target.accept_released(b"early", T).expect("the proxy's connection with the early data");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("EOF after the early data");
    assert!(rest.is_empty(), "{rest:?}");
    let mut reply = [0; 8];
    s.read_exact(&mut reply).expect("reply");
    assert_eq!(reply[1], 90);
    conn.write_all(b"bye").expect("answer");
    drop(conn);
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("answer and EOF");
    assert_eq!(got, b"bye");
}
