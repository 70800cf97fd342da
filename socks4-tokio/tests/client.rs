//! The client connector, against the real server and against a raw-socket fake proxy.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socks4_core::ReplyCode;
use socks4_tokio::{ConnectError, connect};
use socks4_tools::targets::EchoTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo_async(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

// ---- against the server ---------------------------------------------------------------------

#[tokio::test]
async fn connect_socks4_through_the_server() {
    let (proxy, _server) = common::start_with(common::test_config());
    let target = EchoTarget::start().unwrap();
    let mut s = connect(proxy, target.addr(), b"alice").await.unwrap();
    echo_async(&mut s, b"hello over socks4").await;
}

#[tokio::test]
async fn connect_socks4a_through_the_server() {
    let (proxy, _server) = common::start_with(common::test_config());
    let target = EchoTarget::start().unwrap();
    let mut s = connect(proxy, ("localhost", target.addr().port()), b"alice").await.unwrap();
    echo_async(&mut s, b"hello over socks4a").await;
}

#[tokio::test]
async fn connect_denied_by_the_server_rules() {
    let (proxy, _server) = common::start_with(common::test_config());
    let target = EchoTarget::start().unwrap();
    match connect(proxy, target.addr(), b"denied").await {
        Err(ConnectError::Rejected(ReplyCode::Rejected)) => {}
        other => panic!("expected a 91 rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn bind_end_to_end_through_the_server() {
    let (proxy, _server) = common::start_with(common::test_config());
    let bind = socks4_tokio::bind(proxy, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 20), b"ftp").await.unwrap();
    let listen = bind.listen_addr();
    assert_ne!(listen.port(), 0);
    let peer = thread::spawn(move || {
        let mut p = TcpStream::connect(listen).unwrap();
        p.write_all(b"from the peer").unwrap();
        let mut buf = [0u8; 15];
        p.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"from the client");
        p.local_addr().unwrap()
    });
    let (mut s, peer_addr) = bind.accept().await.unwrap();
    let mut buf = [0u8; 13];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"from the peer");
    s.write_all(b"from the client").await.unwrap();
    let local = tokio::task::spawn_blocking(move || peer.join().unwrap()).await.unwrap();
    assert_eq!(SocketAddr::V4(peer_addr), local);
}

// ---- against a fake proxy -------------------------------------------------------------------

/// A one-connection fake proxy: checks the request bytes, then writes each answer in turn (a
/// short pause between them) and closes.
fn fake_proxy(expected: &'static [u8], answers: Vec<Vec<u8>>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; expected.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, expected, "request bytes");
        for a in answers {
            s.write_all(&a).unwrap();
            thread::sleep(Duration::from_millis(50));
        }
        // Linger a little so the client reads everything before the close.
        thread::sleep(Duration::from_millis(100));
    });
    (addr, handle)
}

const REQ_4: &[u8] = b"\x04\x01\x00\x50\xc0\x00\x02\x01alice\0";
const REQ_4A: &[u8] = b"\x04\x01\x01\xbb\x00\x00\x00\x01bob\0example.com\0";
const GRANTED: [u8; 8] = [0, 90, 0, 0, 0, 0, 0, 0];

fn target_4() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80)
}

#[tokio::test]
async fn fake_granted_socks4() {
    let (proxy, fake) = fake_proxy(REQ_4, vec![GRANTED.to_vec()]);
    let s = connect(proxy, target_4(), b"alice").await.unwrap();
    drop(s);
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_granted_socks4a() {
    let (proxy, fake) = fake_proxy(REQ_4A, vec![GRANTED.to_vec()]);
    connect(proxy, ("example.com", 443), b"bob").await.unwrap();
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_rejected_91() {
    let (proxy, fake) = fake_proxy(REQ_4, vec![vec![0, 91, 0, 0, 0, 0, 0, 0]]);
    match connect(proxy, target_4(), b"alice").await {
        Err(ConnectError::Rejected(ReplyCode::Rejected)) => {}
        other => panic!("expected Rejected(91), got {other:?}"),
    }
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_garbage_reply() {
    let (proxy, fake) = fake_proxy(REQ_4, vec![b"HTTP/1.0".to_vec()]);
    match connect(proxy, target_4(), b"alice").await {
        Err(ConnectError::Protocol(socks4_core::ClientError::BadReply(_))) => {}
        other => panic!("expected a bad reply error, got {other:?}"),
    }
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_payload_right_after_the_reply_is_delivered() {
    let mut answer = GRANTED.to_vec();
    answer.extend_from_slice(b"payload right behind the reply");
    let (proxy, fake) = fake_proxy(REQ_4, vec![answer]);
    let mut s = connect(proxy, target_4(), b"alice").await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"payload right behind the reply");
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_close_mid_reply() {
    let (proxy, fake) = fake_proxy(REQ_4, vec![vec![0, 90, 0]]);
    match connect(proxy, target_4(), b"alice").await {
        Err(ConnectError::Protocol(socks4_core::ClientError::UnexpectedEof)) => {}
        other => panic!("expected an unexpected-EOF error, got {other:?}"),
    }
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_close_before_any_reply() {
    let (proxy, fake) = fake_proxy(REQ_4, vec![]);
    match connect(proxy, target_4(), b"alice").await {
        Err(ConnectError::Protocol(socks4_core::ClientError::UnexpectedEof)) => {}
        other => panic!("expected an unexpected-EOF error, got {other:?}"),
    }
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_bind_two_replies_then_payload() {
    const REQ_BIND: &[u8] = b"\x04\x02\x00\x14\x7f\x00\x00\x01\0";
    // First reply: 0.0.0.0:4242 ("use the proxy's address"); second: the peer, then payload.
    let first = vec![0, 90, 0x10, 0x92, 0, 0, 0, 0];
    let mut second = vec![0, 90, 0x30, 0x39, 127, 0, 0, 1];
    second.extend_from_slice(b"peer data");
    let (proxy, fake) = fake_proxy(REQ_BIND, vec![first, second]);
    let bind = socks4_tokio::bind(proxy, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 20), b"").await.unwrap();
    assert_eq!(bind.listen_addr(), SocketAddr::new(proxy.ip(), 4242));
    let (mut s, peer) = bind.accept().await.unwrap();
    assert_eq!(peer, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 12345));
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"peer data");
    fake.join().unwrap();
}

#[tokio::test]
async fn fake_bind_second_reply_rejected() {
    const REQ_BIND: &[u8] = b"\x04\x02\x00\x14\x7f\x00\x00\x02\0";
    let (proxy, fake) =
        fake_proxy(REQ_BIND, vec![vec![0, 90, 0x10, 0x92, 127, 0, 0, 1], vec![0, 91, 0, 0, 0, 0, 0, 0]]);
    let bind = socks4_tokio::bind(proxy, SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 20), b"").await.unwrap();
    assert_eq!(bind.listen_addr(), "127.0.0.1:4242".parse().unwrap());
    match bind.accept().await {
        Err(ConnectError::Rejected(ReplyCode::Rejected)) => {}
        other => panic!("expected Rejected(91), got {other:?}"),
    }
    fake.join().unwrap();
}

#[tokio::test]
async fn bad_user_id_is_refused_before_connecting() {
    match connect("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap(), target_4(), b"nul\0inside").await {
        Err(ConnectError::Encode(_)) => {}
        other => panic!("expected a request encoding error, got {other:?}"),
    }
}
