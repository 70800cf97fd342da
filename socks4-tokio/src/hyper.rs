//! A [hyper] connector through a SOCKS4 proxy (feature `hyper`): [`SocksConnector`], a
//! [`tower_service::Service<http::Uri>`] for hyper-util's legacy `Client`
//! (`hyper_util::client::legacy::Client`) and whatever takes a connector of that shape (a
//! TLS connector that wraps an inner one, for `https`).
//!
//! Each call opens a connection to the proxy and runs a CONNECT to the URI's host and port (80 for
//! `http`, 443 for `https` when the URI names none) with this crate's [`connect`](crate::connect):
//! the host name goes to the proxy (SOCKS4a) with [`remote_dns(true)`](SocksConnector::remote_dns),
//! or is resolved here to an IPv4 address (SOCKS4) by default. The connection it returns is a plain
//! tunnel to the origin server, so hyper sends its usual origin-form requests on it
//! ([`Connected::new()`](hyper_util::client::legacy::connect::Connected::new), not a proxy
//! connection).
//!
//! ```no_run
//! use http_body_util::{BodyExt, Empty};
//! use hyper::body::Bytes;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use socks4_tokio::ProxyAddr;
//! use socks4_tokio::hyper::SocksConnector;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let proxy = ProxyAddr::new("127.0.0.1:1080".parse()?).with_timeout(std::time::Duration::from_secs(10));
//! // SOCKS4a: the proxy resolves example.com; the user id goes in every request.
//! let connector = SocksConnector::new(proxy).remote_dns(true).user_id("alice");
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
//! let response = client.get("http://example.com/".parse()?).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{}", String::from_utf8_lossy(&body));
//! # Ok(()) }
//! ```
//!
//! Cargo features: `socks4-tokio = { version = "0.3", default-features = false, features = ["hyper"] }`
//! is the client alone (no server); hyper-util's `http1` (or `http2`) for the `Client` is yours to
//! turn on.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Instant;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use socks4_core::ReplyCode;
use tokio::net::TcpStream;

use crate::client::{ConnectError, ProxyAddr, Target};

/// What a [`SocksConnector`] call returns: the tunnel through the proxy, as hyper's I/O
/// ([`hyper::rt::Read`], [`hyper::rt::Write`]) and hyper-util's
/// [`Connection`]. Its `connected()` is
/// `Connected::new()` (not a proxy: requests are origin-form) with the socket's
/// [`HttpInfo`](hyper_util::client::legacy::connect::HttpInfo), whose remote address is the
/// proxy's.
///
/// Nothing is read from it before the first write. The client speaks first in HTTP (and in TLS),
/// and hyper's HTTP/1 client takes bytes that arrive on a connection before its request as an
/// error ("unexpected message"): bytes the proxy relayed right after its reply (a destination that
/// answered early) wait in the socket until the request is written, and are then read as its
/// response, in order. [`into_inner`](Self::into_inner) gives the [`TcpStream`] itself.
#[derive(Debug)]
pub struct SocksStream {
    io: TokioIo<TcpStream>,
    /// Whether anything was written yet (reads wait for it).
    written: bool,
    /// The reader waiting for the first write.
    reader: Option<Waker>,
}

impl SocksStream {
    fn new(stream: TcpStream) -> Self {
        SocksStream { io: TokioIo::new(stream), written: false, reader: None }
    }

    /// The connection to the proxy, now a tunnel to the destination.
    pub fn get_ref(&self) -> &TcpStream {
        self.io.inner()
    }

    /// The [`TcpStream`], for I/O of your own (without the wait for a first write).
    pub fn into_inner(self) -> TcpStream {
        self.io.into_inner()
    }

    /// Lets reads go on from now (a write happened, or the stream is being shut down).
    fn open_reads(&mut self) {
        self.written = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

impl hyper::rt::Read for SocksStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.written {
            if !this.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.reader = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SocksStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            this.open_reads();
        }
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs));
        if matches!(written, Ok(n) if n > 0) {
            this.open_reads();
        }
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.open_reads();
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl Connection for SocksStream {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// The future of a [`SocksConnector`] call: boxed, `Send`.
pub type Connecting = Pin<Box<dyn Future<Output = Result<SocksStream, ConnectorError>> + Send + 'static>>;

/// A hyper connector through a SOCKS4 proxy: a [`tower_service::Service`] from the
/// [`Uri`] to connect to, to a [`SocksStream`]. Cheap to clone (the user id is shared), `Send`,
/// `Sync` and `'static`; always ready.
///
/// The proxy's time limit ([`ProxyAddr::with_timeout`]) bounds each call as a whole: the local
/// name lookup (SOCKS4), the TCP connection to the proxy, the request and its reply.
///
/// ```
/// use socks4_tokio::hyper::SocksConnector;
/// let proxy: std::net::SocketAddr = "127.0.0.1:1080".parse().unwrap();
/// let socks4 = SocksConnector::new(proxy); // names resolved here, an IPv4 address sent
/// let socks4a = SocksConnector::socks4a(proxy).user_id("alice"); // names sent to the proxy
/// assert!(!socks4.is_remote_dns() && socks4a.is_remote_dns());
/// assert_eq!(socks4a.proxy().addr(), proxy);
/// ```
#[derive(Debug, Clone)]
pub struct SocksConnector {
    proxy: ProxyAddr,
    user_id: Arc<[u8]>,
    remote_dns: bool,
}

impl SocksConnector {
    /// A SOCKS4 connector through `proxy` (a [`SocketAddr`], or a [`ProxyAddr`] with a time
    /// limit): host names are resolved here and the first IPv4 address is sent. No user id.
    pub fn new(proxy: impl Into<ProxyAddr>) -> Self {
        SocksConnector { proxy: proxy.into(), user_id: Arc::from(&b""[..]), remote_dns: false }
    }

    /// A SOCKS4a connector through `proxy`: [`new`](Self::new) with
    /// [`remote_dns(true)`](Self::remote_dns).
    pub fn socks4a(proxy: impl Into<ProxyAddr>) -> Self {
        Self::new(proxy).remote_dns(true)
    }

    /// Whether host names go to the proxy (SOCKS4a, `true`) or are resolved here (SOCKS4, `false`,
    /// the default). An IPv4 address in the URI is sent as it is either way.
    #[must_use]
    pub fn remote_dns(mut self, remote: bool) -> Self {
        self.remote_dns = remote;
        self
    }

    /// The user id sent in every request (none by default): at most 255 bytes, no NUL (else each
    /// call fails with [`ConnectError::Encode`]). A proxy with a users file wants `NAME:TOKEN`.
    #[must_use]
    pub fn user_id(mut self, user_id: impl AsRef<[u8]>) -> Self {
        self.user_id = Arc::from(user_id.as_ref());
        self
    }

    /// The proxy, with its time limit if any.
    pub fn proxy(&self) -> ProxyAddr {
        self.proxy
    }

    /// Whether host names go to the proxy (SOCKS4a).
    pub fn is_remote_dns(&self) -> bool {
        self.remote_dns
    }

    /// Connects to `uri`'s host and port through the proxy (what [`Service::call`](tower_service::Service::call) runs).
    ///
    /// # Errors
    /// [`ConnectorError::BadUri`] for a URI without a host, or without a port and with a scheme
    /// other than `http` and `https`; [`ConnectorError::Resolve`] when a name resolved here has no
    /// IPv4 address (or the lookup failed, or outlived the time limit); else the proxy's
    /// [`ConnectorError::Proxy`] (I/O, the time limit, a refusal with its reply code).
    pub async fn connect(&self, uri: Uri) -> Result<SocksStream, ConnectorError> {
        let (host, port) = host_and_port(&uri)?;
        let limit = self.proxy.timeout();
        let start = Instant::now();
        let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse::<IpAddr>().ok();
        let target = match ip {
            Some(ip) => Target::Addr(SocketAddr::new(ip, port)),
            None if self.remote_dns => Target::Host(host, port),
            None => {
                let lookup = resolve_ipv4(host, port);
                let found = match limit {
                    Some(limit) => tokio::time::timeout(limit, lookup)
                        .await
                        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "the time limit passed"))),
                    None => lookup.await,
                };
                let addr = found.map_err(|source| ConnectorError::Resolve { host: host.to_owned(), source })?;
                Target::Addr(addr)
            }
        };
        // What the lookup left of the time limit.
        let proxy = match limit {
            Some(limit) => ProxyAddr::new(self.proxy.addr()).with_timeout(limit.saturating_sub(start.elapsed())),
            None => self.proxy,
        };
        let stream = crate::client::connect(proxy, target, &self.user_id).await.map_err(ConnectorError::Proxy)?;
        Ok(SocksStream::new(stream))
    }
}

impl tower_service::Service<Uri> for SocksConnector {
    type Response = SocksStream;
    type Error = ConnectorError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

/// The URI's host (an IPv6 address still in brackets) and port: the URI's, else the scheme's.
fn host_and_port(uri: &Uri) -> Result<(&str, u16), ConnectorError> {
    let bad = |reason| ConnectorError::BadUri { uri: uri.clone(), reason };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("it has no host"))?;
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), _) => port,
        (None, Some(s)) if s.eq_ignore_ascii_case("http") => 80,
        (None, Some(s)) if s.eq_ignore_ascii_case("https") => 443,
        (None, _) => return Err(bad("it has no port, and its scheme is neither http nor https")),
    };
    Ok((host, port))
}

/// The first IPv4 address `host` resolves to here (a SOCKS4 request carries no other).
async fn resolve_ipv4(host: &str, port: u16) -> io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port)).await?.find(SocketAddr::is_ipv4).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no IPv4 address (SOCKS4 carries no other: try remote_dns(true))")
    })
}

/// Why a [`SocksConnector`] call failed. hyper-util's `Client` returns it as the
/// [`source`](std::error::Error::source) of its connect error.
///
/// ```
/// use socks4_core::ReplyCode;
/// use socks4_tokio::ConnectError;
/// use socks4_tokio::hyper::ConnectorError;
/// let refused = ConnectorError::Proxy(ConnectError::Rejected(ReplyCode::IdentMismatch));
/// assert_eq!(refused.reply_code(), Some(ReplyCode::IdentMismatch));
/// assert_eq!(refused.to_string(), "SOCKS4 proxy: the proxy refused the request (reply 93)");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The URI cannot be connected to: no host, or no port and a scheme with no default one.
    BadUri {
        /// The URI.
        uri: Uri,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Resolving the host here (SOCKS4) failed, found no IPv4 address, or outlived the time
    /// limit (an [`io::ErrorKind::TimedOut`] error).
    Resolve {
        /// The host name.
        host: String,
        /// The lookup's error.
        source: io::Error,
    },
    /// The proxy: connecting to it ([`ConnectError::Io`]), the time limit
    /// ([`ConnectError::TimedOut`]), a request that cannot be encoded (the user id), a bad reply,
    /// or its refusal ([`ConnectError::Rejected`] with the reply code: 91, 92, 93).
    Proxy(ConnectError),
}

impl ConnectorError {
    /// The proxy's reply code when it refused the request (91, 92 or 93).
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::Proxy(ConnectError::Rejected(code)) => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUri { uri, reason } => write!(f, "cannot connect to {uri}: {reason}"),
            Self::Resolve { host, source } => write!(f, "resolving {host}: {source}"),
            Self::Proxy(e) => write!(f, "SOCKS4 proxy: {e}"),
        }
    }
}

impl StdError for ConnectorError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::BadUri { .. } => None,
            Self::Resolve { source, .. } => Some(source),
            Self::Proxy(e) => Some(e),
        }
    }
}

impl From<ConnectError> for ConnectorError {
    fn from(e: ConnectError) -> Self {
        Self::Proxy(e)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_from_the_uri_or_its_scheme() {
        let hp = |s: &str| host_and_port(&s.parse().unwrap()).map(|(h, p)| (h.to_owned(), p));
        assert_eq!(hp("http://example.com/x").unwrap(), ("example.com".into(), 80));
        assert_eq!(hp("https://example.com").unwrap(), ("example.com".into(), 443));
        assert_eq!(hp("HTTP://example.com:8080/").unwrap(), ("example.com".into(), 8080));
        assert_eq!(hp("http://[::1]:81/").unwrap(), ("[::1]".into(), 81));
        assert_eq!(hp("example.com:25").unwrap(), ("example.com".into(), 25));
        assert!(matches!(hp("ftp://example.com/"), Err(ConnectorError::BadUri { .. })));
        assert!(matches!(hp("/just/a/path"), Err(ConnectorError::BadUri { .. })));
    }

    #[test]
    fn the_connector_is_a_clone_send_sync_static_service() {
        fn service<S: tower_service::Service<Uri> + Clone + Send + Sync + 'static>(_: &S)
        where
            S::Future: Send + 'static,
        {
        }
        fn hyper_io<
            T: hyper::rt::Read + hyper::rt::Write + hyper_util::client::legacy::connect::Connection + Unpin + Send,
        >() {
        }
        service(&SocksConnector::new("127.0.0.1:1080".parse::<SocketAddr>().unwrap()));
        hyper_io::<SocksStream>();
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let e = ConnectorError::BadUri { uri: "/x".parse().unwrap(), reason: "it has no host" };
        assert_eq!(e.to_string(), "cannot connect to /x: it has no host");
        assert!(e.source().is_none() && e.reply_code().is_none());
        let e = ConnectorError::from(ConnectError::Rejected(ReplyCode::Rejected));
        assert_eq!(e.reply_code().map(|c| c.code()), Some(91));
        assert!(e.source().is_some());
    }
}
