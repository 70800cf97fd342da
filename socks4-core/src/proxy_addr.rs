//! [`ProxyAddr`]: where the adapters' client connectors find the proxy, and how long they give it.

use core::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use core::time::Duration;

/// The proxy a client connector goes through: its address and an optional time limit.
///
/// Every adapter's connector (`socks4-tokio`, `socks4-smol`, `socks4-std`) takes it as
/// `impl Into<ProxyAddr>`, so a plain [`SocketAddr`] works where no limit is wanted:
///
/// ```
/// use core::time::Duration;
/// use socks4_core::ProxyAddr;
/// let plain: ProxyAddr = "127.0.0.1:1080".parse::<core::net::SocketAddr>()?.into();
/// assert_eq!(plain.timeout(), None);
/// let bounded = plain.with_timeout(Duration::from_secs(5));
/// assert_eq!(bounded.addr(), plain.addr());
/// assert_eq!(bounded.timeout(), Some(Duration::from_secs(5)));
/// # Ok::<(), core::net::AddrParseError>(())
/// ```
///
/// # One client API, three runtimes
/// The three adapters export the same functions and types at their crate root, built on
/// [`ClientHandshake`](crate::ClientHandshake) (replies are read exactly, so bytes the proxy relays
/// right after its reply stay in the stream):
///
/// | item | what it does |
/// |---|---|
/// | `connect(proxy, target, user_id)` | TCP to `proxy`, CONNECT to `target` ([`Target`](crate::Target): an address is SOCKS4, a name SOCKS4a) |
/// | `connect_over(stream, target, user_id)` | the CONNECT handshake over a stream you already have (TLS, another proxy); returns it |
/// | `bind(proxy, expected_peer, user_id)` | BIND for a peer given by IPv4 address, up to the first reply |
/// | `bind_to(proxy, peer, user_id)` | BIND for a peer given as a `Target` (a name: SOCKS4a, [`ClientHandshake::bind_to`](crate::ClientHandshake::bind_to)) |
/// | `PendingBind::listen_addr()` | where the peer must connect (the proxy's address when the reply left it unspecified) |
/// | `PendingBind::accept()`, `accept_timeout(limit)` | waits for BIND's second reply: the stream and the peer's address |
/// | `ProxyAddr`, `Target`, `ConnectError` | this type, [`Target`](crate::Target), `ConnectError` (with `std`) |
///
/// The time limit, when set, bounds each call that opens a connection as a whole (TCP connect,
/// request, reply; for BIND up to the first reply) and ends it with `ConnectError::TimedOut`;
/// without one the call waits as long as the OS and the proxy let it. `connect_over` has no limit
/// of its own (the stream is the caller's: wrap the future, or set the socket's timeouts).
///
/// What differs by runtime:
///
/// | | `socks4-tokio` | `socks4-smol` | `socks4-std` |
/// |---|---|---|---|
/// | calls | `async` | `async` | blocking |
/// | `connect` returns | `tokio::net::TcpStream` | `smol::net::TcpStream` | `std::net::TcpStream` (no socket timeouts left set) |
/// | `connect_over` takes | `tokio::io::AsyncRead + AsyncWrite + Unpin` | `futures_io::AsyncRead + AsyncWrite + Unpin` | `std::io::Read + Write` |
/// | `PendingBind::accept` returns | `tokio::net::TcpStream` | `async_io::Async<std::net::TcpStream>` | `std::net::TcpStream` |
/// | time limit | a timer on the runtime | a timer on the runtime | socket timeouts to the deadline |
/// | extra | a hyper/tower connector (feature `hyper`) | async-std's runtime (feature `async-std`, server) | |
///
/// Each adapter's `server` feature (default) adds its server; with `default-features = false` the
/// crate is this client and its runtime alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyAddr {
    addr: SocketAddr,
    timeout: Option<Duration>,
}

impl ProxyAddr {
    /// The proxy at `addr`, with no time limit.
    pub const fn new(addr: SocketAddr) -> Self {
        ProxyAddr { addr, timeout: None }
    }

    /// The same proxy with a time limit for each connector call (see the type's docs).
    #[must_use]
    pub const fn with_timeout(self, limit: Duration) -> Self {
        ProxyAddr { addr: self.addr, timeout: Some(limit) }
    }

    /// The proxy's address.
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The time limit, if any.
    pub const fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

impl From<SocketAddr> for ProxyAddr {
    fn from(addr: SocketAddr) -> Self {
        ProxyAddr::new(addr)
    }
}

impl From<SocketAddrV4> for ProxyAddr {
    fn from(addr: SocketAddrV4) -> Self {
        ProxyAddr::new(addr.into())
    }
}

impl From<SocketAddrV6> for ProxyAddr {
    fn from(addr: SocketAddrV6) -> Self {
        ProxyAddr::new(addr.into())
    }
}
