//! The hyper connector (feature `hyper`): hyper-util's legacy `Client` on
//! [`socks4_tokio::hyper::SocksConnector`], through our server in-process, to a one-request HTTP
//! server, everything on 127.0.0.1.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::TokioExecutor;
use socks4_core::ReplyCode;
use socks4_core::rules::Rules;
use socks4_tokio::hyper::{ConnectorError, SocksConnector};
use socks4_tokio::{ConnectError, ProxyAddr};
use socks4_tools::targets::{closed_port, http_once};

/// A GET of `url` with hyper-util's client on `connector`, bounded so a hang fails the test.
async fn get<C: Connect + Clone + Send + Sync + 'static>(
    connector: C,
    url: String,
) -> Result<Vec<u8>, hyper_util::client::legacy::Error> {
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let fetch = async {
        let response = client.get(url.parse().unwrap()).await?;
        assert!(response.status().is_success(), "{response:?}");
        Ok(response.into_body().collect().await.unwrap().to_bytes().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch).await.expect("the GET hung")
}

/// The connector's own error inside hyper-util's connect error.
fn connector_error(e: &hyper_util::client::legacy::Error) -> &ConnectorError {
    assert!(e.is_connect(), "not a connect error: {e:?}");
    e.source().and_then(|s| s.downcast_ref::<ConnectorError>()).unwrap_or_else(|| panic!("no ConnectorError in {e:?}"))
}

#[tokio::test]
async fn socks4_with_a_literal_address_returns_the_body() {
    let (proxy, _server) = common::start_with(common::test_config());
    let page = http_once("through socks4").unwrap();
    let body = get(SocksConnector::new(proxy), format!("http://{page}/index.html")).await.unwrap();
    assert_eq!(body, b"through socks4");
}

#[tokio::test]
async fn socks4_resolves_a_name_here_and_sends_its_ipv4_address() {
    let (proxy, _server) = common::start_with(common::test_config());
    let page = http_once("localhost, resolved here").unwrap();
    let url = format!("http://localhost:{}/", page.port());
    assert_eq!(get(SocksConnector::new(proxy), url).await.unwrap(), b"localhost, resolved here");
}

#[tokio::test]
async fn socks4a_sends_the_name_for_the_proxy_to_resolve() {
    // `to localhost` matches a SOCKS4a host name only: a request by address is refused (91).
    let mut config = common::test_config();
    config.rules = Rules::parse("allow to localhost").unwrap();
    let (proxy, _server) = common::start_with(config);
    let page = http_once("localhost, resolved by the proxy").unwrap();
    let url = format!("http://localhost:{}/", page.port());
    let body = get(SocksConnector::socks4a(proxy), url.clone()).await.unwrap();
    assert_eq!(body, b"localhost, resolved by the proxy");

    let err = get(SocksConnector::new(proxy), url).await.unwrap_err();
    assert_eq!(connector_error(&err).reply_code(), Some(ReplyCode::Rejected), "{err:?}");
}

#[tokio::test]
async fn a_users_file_refuses_a_wrong_token_with_93_and_lets_the_right_one() {
    let token = "hyper-test-token";
    let file = common::users_file("hyper-users", "alice", token);
    let mut config = common::test_config();
    config.users = Some(file.clone());
    config.rules = Rules::parse("allow any").unwrap();
    let (proxy, _server) = common::start_with(config);

    let page = http_once("for alice").unwrap();
    let wrong = SocksConnector::socks4a(proxy).user_id("alice:not-the-token");
    let err = get(wrong, format!("http://{page}/")).await.unwrap_err();
    let e = connector_error(&err);
    assert_eq!(e.reply_code(), Some(ReplyCode::IdentMismatch), "{e:?}");
    assert!(e.to_string().contains("93"), "{e}");

    let right = SocksConnector::socks4a(proxy).user_id(format!("alice:{token}"));
    assert_eq!(get(right, format!("http://{page}/")).await.unwrap(), b"for alice");

    // The same user from a proxy URL's user part (NAME:TOKEN, a `-` percent-escaped), and reached
    // through hyper-util's own HttpConnector as the inner connector.
    let page = http_once("for alice, by URL").unwrap();
    let url = SocksConnector::from_url(&format!("socks4a://alice:hyper%2Dtest-token@{proxy}")).unwrap();
    assert_eq!(url.user_id_bytes(), format!("alice:{token}").as_bytes());
    let over_http = url.with_connector(hyper_util::client::legacy::connect::HttpConnector::new());
    assert_eq!(get(over_http, format!("http://{page}/")).await.unwrap(), b"for alice, by URL");
    let wrong = SocksConnector::from_url(&format!("socks4a://alice:nope@{proxy}")).unwrap();
    let err = get(wrong, format!("http://{page}/")).await.unwrap_err();
    assert_eq!(connector_error(&err).reply_code(), Some(ReplyCode::IdentMismatch), "{err:?}");
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_proxy_that_is_not_listening_is_an_io_error_not_a_hang() {
    let proxy = SocketAddr::V4(closed_port().unwrap());
    let started = Instant::now();
    let err = get(SocksConnector::new(proxy), "http://127.0.0.1:9/".into()).await.unwrap_err();
    match connector_error(&err) {
        ConnectorError::Proxy(ConnectError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_proxy_that_never_replies_ends_at_the_time_limit() {
    // Accepted by the kernel (the backlog), never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = ProxyAddr::new(silent.local_addr().unwrap()).with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = get(SocksConnector::new(proxy), "http://127.0.0.1:9/".into()).await.unwrap_err();
    assert!(matches!(connector_error(&err), ConnectorError::Proxy(ConnectError::TimedOut)), "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_uri_with_no_default_port_is_a_bad_uri() {
    let (proxy, _server) = common::start_with(common::test_config());
    let err = get(SocksConnector::new(proxy), "ftp://127.0.0.1/".into()).await.unwrap_err();
    assert!(matches!(connector_error(&err), ConnectorError::BadUri { .. }), "{err:?}");
}

#[tokio::test]
async fn a_response_that_comes_with_the_reply_is_read_after_the_request() {
    // A fake proxy: the grant and a whole HTTP response in one write, before the request; hyper's
    // client would take bytes on a connection it has sent nothing on as an error.
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = [0u8; 9]; // VN CD PORT IP, an empty user id and its NUL
        s.read_exact(&mut request).unwrap();
        assert_eq!(request, *b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00");
        let page = "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly";
        s.write_all(&[b"\x00\x5a\x00\x50\x7f\x00\x00\x01", page.as_bytes()].concat()).unwrap();
        let mut http = Vec::new();
        let mut buf = [0u8; 1024];
        while !http.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert_ne!(n, 0, "closed before the request: {http:?}");
            http.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(http).unwrap()
    });
    let body = get(SocksConnector::new(proxy), "http://127.0.0.1/".into()).await.unwrap();
    assert_eq!(body, b"early");
    let request = tokio::task::spawn_blocking(move || fake.join().unwrap()).await.unwrap();
    assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
}
