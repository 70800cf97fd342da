//! A [hyper] connector through a SOCKS4 proxy (feature `hyper`): [`SocksConnector`], a
//! [`tower_service::Service<http::Uri>`] for hyper-util's legacy `Client`
//! (`hyper_util::client::legacy::Client`) and whatever takes a connector of that shape (a
//! TLS connector that wraps an inner one, for `https`).
//!
//! Each call reaches the proxy with an inner connector ([`Direct`], a TCP connection, unless you
//! give your own with [`with_connector`](SocksConnector::with_connector): hyper-util's
//! `HttpConnector` with its own socket options, a TLS connector to a proxy behind TLS, another
//! tunnel) and runs a CONNECT to the URI's host and port (80 for `http`, 443 for `https` when
//! the URI names none) over what it returns, with this crate's [`connect_over`](crate::connect_over):
//! the host name goes to the proxy (SOCKS4a) with [`remote_dns(true)`](SocksConnector::remote_dns),
//! or is resolved here to an IPv4 address (SOCKS4) by default. The connection it returns is a plain
//! tunnel to the origin server, so hyper sends its usual origin-form requests on it (the inner
//! connection's [`Connected`], not a proxy connection).
//!
//! ```no_run
//! use http_body_util::{BodyExt, Empty};
//! use hyper::body::Bytes;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use socks4_tokio::hyper::SocksConnector;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // SOCKS4a: the proxy resolves example.com; the URL's user part is the user id (NAME:TOKEN).
//! let connector = SocksConnector::from_url("socks4a://alice:s3cret@127.0.0.1:1080")?
//!     .with_timeout(std::time::Duration::from_secs(10));
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
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use socks4_core::ReplyCode;
use tokio::net::TcpStream;

use crate::client::{ConnectError, ProxyAddr, Target};

/// The proxy's port when a proxy URL names none.
pub const DEFAULT_PROXY_PORT: u16 = 1080;

/// What a [`SocksConnector`] call returns: the tunnel through the proxy over the inner
/// connector's I/O `T` ([`Direct`]'s: a [`TcpStream`]), as hyper's I/O ([`hyper::rt::Read`],
/// [`hyper::rt::Write`]) and hyper-util's [`Connection`]. Its `connected()` is the inner
/// connection's (for [`Direct`]: `Connected::new()`, not a proxy, so requests are origin-form, with
/// the socket's [`HttpInfo`](hyper_util::client::legacy::connect::HttpInfo), whose remote address
/// is the proxy's).
///
/// Nothing is read from it before the first write. The client speaks first in HTTP (and in TLS),
/// and hyper's HTTP/1 client takes bytes that arrive on a connection before its request as an
/// error ("unexpected message"): bytes the proxy relayed right after its reply (a destination that
/// answered early) wait in the socket until the request is written, and are then read as its
/// response, in order. [`into_inner`](Self::into_inner) gives the inner I/O itself.
#[derive(Debug)]
pub struct SocksStream<T = TokioIo<TcpStream>> {
    io: T,
    /// Whether anything was written yet (reads wait for it).
    written: bool,
    /// The reader waiting for the first write.
    reader: Option<Waker>,
}

impl<T> SocksStream<T> {
    fn new(io: T) -> Self {
        SocksStream { io, written: false, reader: None }
    }

    /// The inner connection, now a tunnel to the destination ([`Direct`]'s: a
    /// [`TokioIo`] of the [`TcpStream`] to the proxy, [`TokioIo::inner`] for the stream).
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The inner connection, for I/O of your own (without the wait for a first write).
    pub fn into_inner(self) -> T {
        self.io
    }

    /// Lets reads go on from now (a write happened, or the stream is being shut down).
    fn open_reads(&mut self) {
        self.written = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for SocksStream<T> {
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

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for SocksStream<T> {
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
        self.io.is_write_vectored()
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

impl<T: Connection> Connection for SocksStream<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// The future of a [`SocksConnector`] call: boxed, `Send`.
pub type Connecting<T> = Pin<Box<dyn Future<Output = Result<SocksStream<T>, ConnectorError>> + Send + 'static>>;

/// The default inner connector: a TCP connection to the proxy URI's host and port (a name is
/// resolved, its addresses tried in turn), with `TCP_NODELAY`. A [`tower_service::Service`] from
/// the proxy's [`Uri`] to a [`TokioIo`] of the [`TcpStream`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl tower_service::Service<Uri> for Direct {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, proxy: Uri) -> Self::Future {
        Box::pin(async move {
            let (host, port) =
                host_and_port(&proxy).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let host = unbracketed(host);
            let stream = TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A hyper connector through a SOCKS4 proxy: a [`tower_service::Service`] from the [`Uri`] to
/// connect to, to a [`SocksStream`], wrapping an inner connector `C` that reaches the proxy
/// ([`Direct`] by default). Cheap to clone (the user id is shared), `Send`, `Sync` and
/// `'static` when `C` is; ready when `C` is.
///
/// The time limit ([`with_timeout`](Self::with_timeout), or a [`ProxyAddr`]'s) bounds each call
/// as a whole: the local name lookup (SOCKS4), reaching the proxy, the request and its reply.
///
/// ```
/// use socks4_tokio::hyper::SocksConnector;
/// let proxy: std::net::SocketAddr = "127.0.0.1:1080".parse().unwrap();
/// let socks4 = SocksConnector::new(proxy); // names resolved here, an IPv4 address sent
/// let socks4a = SocksConnector::socks4a(proxy).user_id("alice"); // names sent to the proxy
/// assert!(!socks4.is_remote_dns() && socks4a.is_remote_dns());
/// assert_eq!(socks4a.proxy_uri(), "http://127.0.0.1:1080/");
/// // The same from a proxy URL: the user part (percent-decoded) is the user id.
/// let url = SocksConnector::from_url("socks4a://alice@127.0.0.1").unwrap();
/// assert_eq!((url.proxy_uri().port_u16(), url.user_id_bytes()), (Some(1080), &b"alice"[..]));
/// // Reaching the proxy with a connector of your own (here hyper-util's, which resolves names).
/// let over = url.with_connector(hyper_util::client::legacy::connect::HttpConnector::new());
/// # let _ = over;
/// ```
#[derive(Debug, Clone)]
pub struct SocksConnector<C = Direct> {
    inner: C,
    /// What the inner connector is asked for: `http://HOST:PORT` of the proxy.
    proxy: Uri,
    timeout: Option<Duration>,
    user_id: Arc<[u8]>,
    remote_dns: bool,
}

impl SocksConnector<Direct> {
    /// A SOCKS4 connector through `proxy` (a [`SocketAddr`], or a [`ProxyAddr`] with a time
    /// limit), reached by [`Direct`]: host names are resolved here and the first IPv4 address is
    /// sent. No user id.
    pub fn new(proxy: impl Into<ProxyAddr>) -> Self {
        let proxy = proxy.into();
        SocksConnector {
            inner: Direct,
            proxy: proxy_uri(&proxy.addr().to_string()),
            timeout: proxy.timeout(),
            user_id: Arc::from(&b""[..]),
            remote_dns: false,
        }
    }

    /// A SOCKS4a connector through `proxy`: [`new`](Self::new) with
    /// [`remote_dns(true)`](Self::remote_dns).
    pub fn socks4a(proxy: impl Into<ProxyAddr>) -> Self {
        Self::new(proxy).remote_dns(true)
    }

    /// A connector from a proxy URL, `socks4://[USER@]HOST[:PORT]` or `socks4a://...` (the
    /// scheme sets [`remote_dns`](Self::remote_dns)), reached by [`Direct`]. The user part, up to
    /// the last `@` and percent-decoded, is the user id as it is (`alice:s3cret` is `NAME:TOKEN`
    /// for a users file); the port defaults to [`DEFAULT_PROXY_PORT`]; HOST may be a name (resolved
    /// when connecting) or an address (`[::1]`).
    ///
    /// # Errors
    /// [`ConnectorError::BadProxyUrl`] for another scheme, no host, a path or query, a bad
    /// percent-escape, or a user id with a NUL or over 255 bytes.
    pub fn from_url(url: &str) -> Result<Self, ConnectorError> {
        let bad = |reason| ConnectorError::BadProxyUrl { url: redact(url), reason };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("it is not socks4://HOST[:PORT]"))?;
        let remote_dns = match scheme.to_ascii_lowercase().as_str() {
            "socks4" => false,
            "socks4a" => true,
            _ => return Err(bad("its scheme is neither socks4 nor socks4a")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((user, hostport)) => (Some(user), hostport),
            None => (None, rest),
        };
        if hostport.contains(['/', '?', '#']) {
            return Err(bad("a proxy URL has no path, query or fragment"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (hostport, None),
        };
        let port = match port.map(str::parse::<u16>) {
            None => DEFAULT_PROXY_PORT,
            Some(Ok(port)) if port != 0 => port,
            Some(_) => return Err(bad("its host is not HOST[:PORT] (a port 1 to 65535)")),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || (host.contains(':') && !bracketed) || host.parse::<http::uri::Authority>().is_err() {
            return Err(bad("it has no host, or not one like proxy.example, 192.0.2.1 or [2001:db8::1]"));
        }
        let user_id = match user {
            Some(user) => {
                let decoded: Vec<u8> = percent_encoding::percent_decode_str(user).collect();
                // A `%` not followed by two hex digits is kept by the decoder: refuse it instead.
                if user.split('%').skip(1).any(|s| s.len() < 2 || !s.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit))
                {
                    return Err(bad("its user part has a bad percent-escape"));
                }
                if decoded.len() > 255 || decoded.contains(&0) {
                    return Err(bad("its user id has a NUL byte or is over 255 bytes"));
                }
                decoded
            }
            None => Vec::new(),
        };
        Ok(SocksConnector {
            inner: Direct,
            proxy: proxy_uri(&format!("{host}:{port}")),
            timeout: None,
            user_id: Arc::from(user_id),
            remote_dns,
        })
    }
}

/// `http://AUTHORITY/`: what an inner connector is asked to connect to.
fn proxy_uri(authority: &str) -> Uri {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query("/")
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://0.0.0.0:1080/"))
}

/// `url` without its user part, all before the last `@` but the scheme (a token must not reach a
/// log through an error), with or without a `SCHEME://` in front: `alice:s3cret@proxy` is
/// `***@proxy`.
fn redact(url: &str) -> String {
    let Some((_, hostport)) = url.rsplit_once('@') else { return url.to_owned() };
    match url.split_once("://") {
        Some((scheme, _)) if !scheme.contains('@') => format!("{scheme}://***@{hostport}"),
        _ => format!("***@{hostport}"),
    }
}

impl<C> SocksConnector<C> {
    /// Reaches the proxy with `inner` instead: a [`tower_service::Service<Uri>`] that is asked
    /// for `http://HOST:PORT/` of the proxy and returns hyper I/O (hyper-util's `HttpConnector`,
    /// a TLS connector around it, another tunnel). The rest of the settings stay.
    pub fn with_connector<D>(self, inner: D) -> SocksConnector<D> {
        SocksConnector {
            inner,
            proxy: self.proxy,
            timeout: self.timeout,
            user_id: self.user_id,
            remote_dns: self.remote_dns,
        }
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

    /// A time limit for each call as a whole (none: without one, a proxy that never answers
    /// holds the call until hyper's own timeouts, if any).
    #[must_use]
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// The proxy, as the inner connector is asked for it (`http://HOST:PORT/`).
    pub fn proxy_uri(&self) -> &Uri {
        &self.proxy
    }

    /// The user id sent in every request.
    pub fn user_id_bytes(&self) -> &[u8] {
        &self.user_id
    }

    /// The time limit of each call, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether host names go to the proxy (SOCKS4a).
    pub fn is_remote_dns(&self) -> bool {
        self.remote_dns
    }
}

impl<C> SocksConnector<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Error: Into<Box<dyn StdError + Send + Sync>>,
    C::Future: Send + 'static,
{
    /// Connects to `uri`'s host and port through the proxy (what [`Service::call`](tower_service::Service::call) runs).
    ///
    /// # Errors
    /// [`ConnectorError::BadUri`] for a URI without a host, or without a port and with a scheme
    /// other than `http` and `https`; [`ConnectorError::Resolve`] when a name resolved here has no
    /// IPv4 address (or the lookup failed); an I/O error reaching the proxy as
    /// `ConnectorError::Proxy(ConnectError::Io)`, the inner connector's other errors as
    /// [`ConnectorError::Inner`]; past the time limit `Proxy(ConnectError::TimedOut)`; else the
    /// proxy's [`ConnectorError::Proxy`] (a request that cannot be encoded, a bad reply, a refusal
    /// with its reply code).
    pub async fn connect(&self, uri: Uri) -> Result<SocksStream<C::Response>, ConnectorError> {
        let work = self.connect_unbounded(uri);
        match self.timeout {
            Some(limit) => {
                tokio::time::timeout(limit, work).await.unwrap_or(Err(ConnectorError::Proxy(ConnectError::TimedOut)))
            }
            None => work.await,
        }
    }

    async fn connect_unbounded(&self, uri: Uri) -> Result<SocksStream<C::Response>, ConnectorError> {
        let (host, port) = host_and_port(&uri)?;
        let ip = unbracketed(host).parse::<IpAddr>().ok();
        let target = match ip {
            Some(ip) => Target::Addr(SocketAddr::new(ip, port)),
            None if self.remote_dns => Target::Host(host, port),
            None => {
                let found = resolve_ipv4(host, port).await;
                Target::Addr(found.map_err(|source| ConnectorError::Resolve { host: host.to_owned(), source })?)
            }
        };
        let mut inner = self.inner.clone();
        poll_fn(|cx| inner.poll_ready(cx)).await.map_err(inner_error)?;
        let io = inner.call(self.proxy.clone()).await.map_err(inner_error)?;
        let tunnel = crate::client::connect_over(TokioIo::new(io), target, &self.user_id).await?;
        Ok(SocksStream::new(tunnel.into_inner()))
    }
}

/// An inner connector's error: an I/O error is reaching the proxy's (`Proxy(Io)`, as with
/// [`Direct`]), another stays the connector's own.
fn inner_error(e: impl Into<Box<dyn StdError + Send + Sync>>) -> ConnectorError {
    match e.into().downcast::<io::Error>() {
        Ok(io) => ConnectorError::Proxy(ConnectError::Io(*io)),
        Err(other) => ConnectorError::Inner(other),
    }
}

impl<C> tower_service::Service<Uri> for SocksConnector<C>
where
    C: tower_service::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Error: Into<Box<dyn StdError + Send + Sync>>,
    C::Future: Send + 'static,
{
    type Response = SocksStream<C::Response>;
    type Error = ConnectorError;
    type Future = Connecting<C::Response>;

    /// Always ready: each call waits for a clone of the inner connector to be ready.
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

/// A URI host without the brackets of an IPv6 address.
fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
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
    /// A proxy URL that [`SocksConnector::from_url`] cannot take (its user part left out).
    BadProxyUrl {
        /// The URL, `***` for its user part.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Resolving the host here (SOCKS4) failed or found no IPv4 address.
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
    /// The inner connector could not reach the proxy (an error of its own, not I/O).
    Inner(Box<dyn StdError + Send + Sync>),
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
            Self::BadProxyUrl { url, reason } => write!(f, "proxy URL {url}: {reason}"),
            Self::Inner(e) => write!(f, "reaching the SOCKS4 proxy: {e}"),
            Self::Resolve { host, source } => write!(f, "resolving {host}: {source}"),
            Self::Proxy(e) => write!(f, "SOCKS4 proxy: {e}"),
        }
    }
}

impl StdError for ConnectorError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::BadUri { .. } | Self::BadProxyUrl { .. } => None,
            Self::Inner(e) => Some(&**e),
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
        let http = hyper_util::client::legacy::connect::HttpConnector::new();
        service(&SocksConnector::new("127.0.0.1:1080".parse::<SocketAddr>().unwrap()).with_connector(http));
        hyper_io::<SocksStream>();
    }

    #[test]
    fn proxy_urls() {
        let c = SocksConnector::from_url("socks4://127.0.0.1:1081").unwrap();
        assert_eq!(
            (c.proxy_uri().to_string().as_str(), c.is_remote_dns(), c.user_id_bytes()),
            ("http://127.0.0.1:1081/", false, &b""[..])
        );
        let c = SocksConnector::from_url("SOCKS4A://alice:s%40cret@[::1]/").unwrap();
        assert_eq!((c.proxy_uri().to_string().as_str(), c.is_remote_dns()), ("http://[::1]:1080/", true));
        assert_eq!(c.user_id_bytes(), b"alice:s@cret");
        let c = SocksConnector::from_url("socks4a://a@b@proxy.example:9050").unwrap();
        assert_eq!((c.proxy_uri().host(), c.user_id_bytes()), (Some("proxy.example"), &b"a@b"[..]));
        for (url, why) in [
            ("http://127.0.0.1:1080", "scheme"),
            ("127.0.0.1:1080", "not socks4"),
            ("socks4://", "host"),
            ("socks4://h:1/path", "path"),
            ("socks4://h:99999", "HOST[:PORT]"),
            ("socks4://h:0", "HOST[:PORT]"),
            ("socks4://::1", "host"),
            ("socks4://a b", "host"),
            ("socks4://a%2@h", "percent"),
            ("socks4://a%00b@h", "NUL"),
        ] {
            let e = SocksConnector::from_url(url).unwrap_err();
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
        // The user part stays out of errors, with or without the scheme (or with a broken one).
        for url in
            ["socks4://secret-token%zz@h", "alice:secret-token@h:1080", "socks4:/a:secret-token@h", "x@secret-token@h"]
        {
            let e = SocksConnector::from_url(url).unwrap_err();
            assert!(!e.to_string().contains("secret-token"), "{url}: {e}");
        }
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
