//! The client connector: against the server, and against a raw-socket fake proxy that checks the
//! exact request bytes and answers with scripted bytes.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use socks4_core::{ClientError, ClientEvent, ClientHandshake, ParseError, ReplyCode};
use socks4_smol::client::{self, ConnectError, Target};
use socks4_smol::{Server, ServerHandle};
use socks4_tools::targets::EchoTarget;

const TIMEOUT: Duration = Duration::from_secs(10);

fn server() -> (ServerHandle, SocketAddr) {
    common::init_tracing();
    let handle = Server::bind(common::test_config()).unwrap().spawn().unwrap();
    let addr = handle.local_addrs()[0];
    (handle, addr)
}

async fn echo_roundtrip(stream: &mut smol::net::TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[test]
fn connect_through_server_socks4() {
    let (_server, proxy) = server();
    let echo = EchoTarget::start().unwrap();
    smol::block_on(async {
        let mut s = client::connect(proxy, Target::Addr(echo.addr().into()), b"alice").await.unwrap();
        echo_roundtrip(&mut s, b"hello through socks4").await;
    });
}

#[test]
fn connect_through_server_socks4a() {
    let (_server, proxy) = server();
    let echo = EchoTarget::start().unwrap();
    smol::block_on(async {
        let mut s = client::connect(proxy, Target::Host("localhost", echo.addr().port()), b"").await.unwrap();
        echo_roundtrip(&mut s, b"hello through socks4a").await;
    });
}

#[test]
fn connect_through_server_denied_user() {
    let (_server, proxy) = server();
    let echo = EchoTarget::start().unwrap();
    smol::block_on(async {
        let err = client::connect(proxy, Target::Addr(echo.addr().into()), b"denied").await.unwrap_err();
        assert!(matches!(err, ConnectError::Rejected(ReplyCode::Rejected)), "{err}");
    });
}

#[test]
fn bind_through_server() {
    let (_server, proxy) = server();
    smol::block_on(async {
        let pending = client::bind(proxy, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), b"binder").await.unwrap();
        let listen = pending.listen_addr();
        assert_eq!(listen.ip(), proxy.ip());
        let peer = thread::spawn(move || {
            let mut peer = TcpStream::connect(listen).unwrap();
            peer.set_read_timeout(Some(TIMEOUT)).unwrap();
            peer.write_all(b"from peer").unwrap();
            let mut buf = [0; 11];
            peer.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"from client");
        });
        let (mut stream, peer_addr) = pending.accept().await.unwrap();
        assert_eq!(*peer_addr.ip(), Ipv4Addr::LOCALHOST);
        let mut buf = [0; 9];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"from peer");
        stream.write_all(b"from client").await.unwrap();
        peer.join().unwrap();
    });
}

#[test]
fn generic_handshake_over_any_stream() {
    let (_server, proxy) = server();
    let echo = EchoTarget::start().unwrap();
    smol::block_on(async {
        // `handshake` is generic over futures-io; drive it over an `async_io::Async<std TcpStream>`.
        let mut stream = async_io::Async::<TcpStream>::connect(proxy).await.unwrap();
        let mut hs = ClientHandshake::connect(echo.addr(), b"generic").unwrap();
        let event = client::handshake(&mut stream, &mut hs).await.unwrap();
        assert!(matches!(event, ClientEvent::Granted(_)), "{event:?}");
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    });
}

// ---- the fake proxy -------------------------------------------------------------------------

/// What the fake proxy does after checking the request.
enum Script {
    /// Write these bytes, then wait for the client to close.
    Answer(Vec<u8>),
    /// Write these bytes, then close at once.
    AnswerAndClose(Vec<u8>),
}

/// A one-connection fake proxy: reads exactly `expected.len()` bytes, checks them, runs `script`.
fn fake_proxy(expected: Vec<u8>, script: Script) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = vec![0; expected.len()];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(got, expected, "request bytes");
        match script {
            Script::Answer(bytes) => {
                conn.write_all(&bytes).unwrap();
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest);
            }
            Script::AnswerAndClose(bytes) => conn.write_all(&bytes).unwrap(),
        }
    });
    (addr, thread)
}

const TARGET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 8080);

fn connect_request(user: &[u8]) -> Vec<u8> {
    let mut r = vec![4, 1, 0x1f, 0x90, 10, 1, 2, 3];
    r.extend_from_slice(user);
    r.push(0);
    r
}

#[test]
fn fake_proxy_granted_exact_request() {
    let (proxy, fake) = fake_proxy(connect_request(b"bob"), Script::Answer(vec![0, 90, 0, 0, 0, 0, 0, 0]));
    smol::block_on(async {
        let s = client::connect(proxy, Target::Addr(TARGET.into()), b"bob").await.unwrap();
        drop(s);
    });
    fake.join().unwrap();
}

#[test]
fn fake_proxy_socks4a_exact_request() {
    let mut expected = vec![4, 1, 0, 80, 0, 0, 0, 1, b'u', 0];
    expected.extend_from_slice(b"example.com\0");
    let (proxy, fake) = fake_proxy(expected, Script::Answer(vec![0, 90, 0, 0, 0, 0, 0, 0]));
    smol::block_on(async {
        drop(client::connect(proxy, Target::Host("example.com", 80), b"u").await.unwrap());
    });
    fake.join().unwrap();
}

#[test]
fn fake_proxy_rejected_91() {
    let (proxy, fake) = fake_proxy(connect_request(b""), Script::AnswerAndClose(vec![0, 91, 0, 0, 0, 0, 0, 0]));
    smol::block_on(async {
        let err = client::connect(proxy, Target::Addr(TARGET.into()), b"").await.unwrap_err();
        assert!(matches!(err, ConnectError::Rejected(ReplyCode::Rejected)), "{err}");
    });
    fake.join().unwrap();
}

#[test]
fn fake_proxy_garbage_reply() {
    let (proxy, fake) = fake_proxy(connect_request(b""), Script::Answer(b"HTTP/1.1 400 Bad\r\n".to_vec()));
    smol::block_on(async {
        let err = client::connect(proxy, Target::Addr(TARGET.into()), b"").await.unwrap_err();
        assert!(
            matches!(err, ConnectError::Protocol(ClientError::BadReply(ParseError::BadReplyVersion(b'H')))),
            "{err}"
        );
    });
    fake.join().unwrap();
}

#[test]
fn fake_proxy_reply_and_payload_in_one_write() {
    let mut answer = vec![0, 90, 0x1f, 0x90, 10, 1, 2, 3];
    answer.extend_from_slice(b"payload right after the reply");
    let (proxy, fake) = fake_proxy(connect_request(b"x"), Script::AnswerAndClose(answer));
    smol::block_on(async {
        let mut s = client::connect(proxy, Target::Addr(TARGET.into()), b"x").await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"payload right after the reply");
    });
    fake.join().unwrap();
}

#[test]
fn fake_proxy_closes_mid_reply() {
    let (proxy, fake) = fake_proxy(connect_request(b""), Script::AnswerAndClose(vec![0, 90, 0]));
    smol::block_on(async {
        let err = client::connect(proxy, Target::Addr(TARGET.into()), b"").await.unwrap_err();
        assert!(matches!(err, ConnectError::Protocol(ClientError::UnexpectedEof)), "{err}");
    });
    fake.join().unwrap();
}

#[test]
fn fake_proxy_bind_two_replies_and_payload() {
    let request = vec![4, 2, 0, 21, 192, 0, 2, 9, b'b', 0];
    // First reply: listening on 0.0.0.0:4000 (= the proxy's address); second: the peer, then data.
    let mut answer = vec![0, 90, 0x0f, 0xa0, 0, 0, 0, 0];
    answer.extend_from_slice(&[0, 90, 0x30, 0x39, 192, 0, 2, 9]);
    answer.extend_from_slice(b"peer data");
    let (proxy, fake) = fake_proxy(request, Script::AnswerAndClose(answer));
    smol::block_on(async {
        let pending = client::bind(proxy, SocketAddrV4::new([192, 0, 2, 9].into(), 21), b"b").await.unwrap();
        assert_eq!(pending.listen_addr(), SocketAddr::new(proxy.ip(), 4000));
        let (mut s, peer) = pending.accept().await.unwrap();
        assert_eq!(peer, SocketAddrV4::new([192, 0, 2, 9].into(), 12345));
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"peer data");
    });
    fake.join().unwrap();
}

#[test]
fn bad_user_id_is_an_encode_error() {
    smol::block_on(async {
        let proxy: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let err = client::connect(proxy, Target::Addr(TARGET.into()), b"nul\0inside").await.unwrap_err();
        assert!(matches!(err, ConnectError::Encode(_)), "{err}");
    });
}
