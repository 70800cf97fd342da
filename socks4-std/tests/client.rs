//! The blocking client connector and BIND helper, against the server and against raw-socket
//! fake proxies.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socks4_core::ReplyCode;
use socks4_std::ConnectError;
use socks4_tools::targets::EchoTarget;

use common::{T, round_trip};

#[test]
fn connect_through_the_server_by_ip_and_by_name() {
    let (proxy, _handle) = common::start_with(common::test_config(1));
    let echo = EchoTarget::start().expect("echo");
    let mut s = socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"alice")
        .expect("CONNECT by IP");
    round_trip(&mut s, b"by ip");
    let mut s =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), ("localhost", echo.addr().port()), b"")
            .expect("CONNECT by name");
    round_trip(&mut s, b"by name");
}

#[test]
fn rejections_are_reported_with_their_code() {
    let (proxy, _handle) = common::start_with(common::test_config(1));
    let echo = EchoTarget::start().expect("echo");
    match socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"denied") {
        Err(ConnectError::Rejected(ReplyCode::Rejected)) => {}
        other => panic!("expected a 91 rejection, got {other:?}"),
    }
    let closed = socks4_tools::targets::closed_port().expect("closed port");
    assert!(matches!(
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), closed, b""),
        Err(ConnectError::Rejected(_))
    ));
    assert!(matches!(
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), ("no-such-host.invalid", 80), b""),
        Err(ConnectError::Rejected(_))
    ));
    assert!(matches!(
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"nul\0inside"),
        Err(ConnectError::Encode(_))
    ));
}

#[test]
fn bind_through_the_server() {
    let (proxy, _handle) = common::start_with(common::test_config(1));
    let pending = socks4_std::bind(
        socks4_std::ProxyAddr::from(proxy).with_timeout(T),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        b"binder",
    )
    .expect("BIND");
    let listen = pending.listen_addr();
    assert_eq!(listen.ip(), proxy.ip());
    let peer = thread::spawn(move || {
        let mut p = TcpStream::connect_timeout(&listen, T).expect("peer connect");
        p.set_read_timeout(Some(T)).expect("timeout");
        p.write_all(b"from peer").expect("peer write");
        let mut buf = [0u8; 11];
        p.read_exact(&mut buf).expect("peer read");
        assert_eq!(&buf, b"from client");
        p.local_addr().expect("peer addr")
    });
    let (mut s, peer_addr) = pending.accept_timeout(T).expect("second reply");
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).expect("client read");
    assert_eq!(&buf, b"from peer");
    s.write_all(b"from client").expect("client write");
    let local = peer.join().expect("peer thread");
    assert_eq!(SocketAddr::V4(peer_addr), local);
}

/// A one-connection fake proxy: checks the request bytes, then runs `respond` on the socket.
fn fake_proxy(expect: Vec<u8>, respond: impl FnOnce(&mut TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut got = vec![0u8; expect.len()];
        s.read_exact(&mut got).expect("read request");
        assert_eq!(got, expect, "request bytes");
        respond(&mut s);
    });
    addr
}

#[test]
fn fake_proxy_split_reply_and_payload_in_the_same_write() {
    let expect = b"\x04\x01\x1f\x90\x00\x00\x00\x01bob\0example.com\0".to_vec();
    let proxy = fake_proxy(expect, |s| {
        s.write_all(&[0, 90, 0x1f]).expect("write");
        thread::sleep(Duration::from_millis(50));
        // The rest of the reply and payload at once: the client must not swallow the payload.
        s.write_all(&[0x90, 10, 0, 0, 1, b'h', b'e', b'l', b'l', b'o']).expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("read ping");
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").expect("write");
    });
    let mut s = socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), ("example.com", 8080), b"bob")
        .expect("CONNECT");
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).expect("payload");
    assert_eq!(&buf, b"hello");
    s.write_all(b"ping").expect("ping");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("pong");
    assert_eq!(&buf, b"pong");
}

#[test]
fn fake_proxy_rejection_bad_reply_and_early_close() {
    let req = b"\x04\x01\x00\x50\x0a\x00\x00\x01\0".to_vec();
    let target = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);

    let proxy = fake_proxy(req.clone(), |s| s.write_all(&[0, 93, 0, 0, 0, 0, 0, 0]).expect("write"));
    assert!(matches!(
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), target, b""),
        Err(ConnectError::Rejected(ReplyCode::IdentMismatch))
    ));

    let proxy = fake_proxy(req.clone(), |s| s.write_all(&[4, 90, 0, 0, 0, 0, 0, 0]).expect("write"));
    assert!(matches!(
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), target, b""),
        Err(ConnectError::Protocol(_))
    ));

    let proxy = fake_proxy(req, |s| {
        s.write_all(&[0, 90, 0]).expect("write");
        let _ = s.shutdown(Shutdown::Both);
    });
    assert!(matches!(
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), target, b""),
        Err(ConnectError::Protocol(_))
    ));
}

#[test]
fn fake_proxy_that_never_replies_times_out() {
    let req = b"\x04\x01\x00\x50\x0a\x00\x00\x01\0".to_vec();
    let proxy = fake_proxy(req, |_s| thread::sleep(Duration::from_secs(5)));
    let started = Instant::now();
    let r = socks4_std::connect(
        socks4_std::ProxyAddr::from(proxy).with_timeout(Duration::from_millis(300)),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
        b"",
    );
    assert!(matches!(r, Err(ConnectError::TimedOut)), "got {r:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "the timeout was not honoured");
}

#[test]
fn fake_proxy_bind_two_replies() {
    let req = b"\x04\x02\x00\x15\x7f\x00\x00\x01ftp\0".to_vec();
    let proxy = fake_proxy(req, |s| {
        // First reply with an unspecified address: the client uses the proxy's.
        s.write_all(&[0, 90, 0x30, 0x39, 0, 0, 0, 0]).expect("first");
        thread::sleep(Duration::from_millis(50));
        s.write_all(&[0, 90, 0x04, 0xd2, 127, 0, 0, 1, b'x']).expect("second");
    });
    let pending = socks4_std::bind(
        socks4_std::ProxyAddr::from(proxy).with_timeout(T),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 21),
        b"ftp",
    )
    .expect("BIND");
    assert_eq!(pending.listen_addr(), SocketAddr::new(proxy.ip(), 12345));
    let (mut s, peer) = pending.accept_timeout(T).expect("second reply");
    assert_eq!(peer, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1234));
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut buf = [0u8; 1];
    s.read_exact(&mut buf).expect("payload");
    assert_eq!(&buf, b"x");
}
