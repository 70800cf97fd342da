//! The listening sockets a server serves: bound from the config's listen addresses (one per
//! address, or with `reuseport` one per worker on each), or passed by socket activation.
//!
//! ```
//! use socks4_server::{ServerConfig, listen::listeners};
//! let mut config = ServerConfig::default();
//! config.listen = vec!["127.0.0.1:0".parse()?];
//! let groups = listeners(&config, 2, None)?;
//! assert_eq!(groups.len(), 1, "one group per listen address");
//! assert!(groups[0][0].local_addr()?.port() != 0);
//! assert!(socket2::SockRef::from(&groups[0][0]).out_of_band_inline()?, "urgent data inline");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::ServerConfig;

/// The listen backlog.
pub const BACKLOG: i32 = 1024;

/// Per listen address of `config`, its listeners: one, or (`reuseport`) one per worker, all on the
/// port the first one got. With `activated` (socket activation) each of those is a group of its own
/// instead, and nothing is bound. Every listener has `SO_OOBINLINE`
/// ([`socks4_sys::socket::urgent_inline`]), which the sockets it accepts inherit: a client's urgent
/// byte is read in its place, with no system call per connection.
///
/// # Errors
///
/// The I/O error of the first listener that cannot be bound (see [`listen`]), or configured.
pub fn listeners(
    config: &ServerConfig,
    workers: usize,
    activated: Option<Vec<TcpListener>>,
) -> io::Result<Vec<Vec<TcpListener>>> {
    if let Some(activated) = activated {
        for listener in &activated {
            socks4_sys::socket::urgent_inline(&socket2::SockRef::from(listener))?;
        }
        return Ok(activated.into_iter().map(|l| vec![l]).collect());
    }
    let per_address = if config.reuseport { workers } else { 1 };
    let mut groups = Vec::with_capacity(config.listen.len());
    for addr in config.listen_addrs() {
        let first = listen(addr, config.reuseport)?;
        let bound = first.local_addr()?;
        let mut group = vec![first];
        for _ in 1..per_address {
            group.push(listen(bound, true)?);
        }
        groups.push(group);
    }
    Ok(groups)
}

/// Binds one non-blocking listener: `SO_REUSEADDR`, IPv6-only for IPv6 addresses (so `[::]` and
/// `0.0.0.0` can coexist), `SO_OOBINLINE` (for the sockets it accepts), and `SO_REUSEPORT` if
/// asked.
///
/// # Errors
///
/// The I/O error of creating, configuring, binding or listening on the socket (e.g. `AddrInUse`,
/// `PermissionDenied` for a port below 1024).
pub fn listen(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuseport {
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))))]
        socket.set_reuse_port(true)?;
    }
    socks4_sys::socket::urgent_inline(&socket2::SockRef::from(&socket))?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The addresses `groups` (as [`listeners`] returns them) listen on, one per group, with their
/// actual ports.
pub fn local_addrs(groups: &[Vec<TcpListener>]) -> Vec<SocketAddr> {
    groups.iter().filter_map(|group| group.first()?.local_addr().ok()).collect()
}

/// Is `ip` one of this host's own addresses (any loopback address, or one of its interfaces')?
/// Told by binding a UDP socket to it, which only a local address allows (nothing is sent).
///
/// ```
/// use socks4_server::listen::is_own_address;
/// assert!(is_own_address([127, 0, 0, 7].into()));
/// assert!(!is_own_address([192, 0, 2, 1].into())); // TEST-NET-1: nobody's
/// ```
pub fn is_own_address(ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || (!ip.is_unspecified() && std::net::UdpSocket::bind((ip, 0)).is_ok())
}

/// Would a connection to `to` reach one of the listeners on `listen`: the same address and port,
/// or the port of a wildcard listener (`0.0.0.0` for this host's IPv4 addresses, `::` for its
/// IPv6 ones) and one of this host's addresses ([`is_own_address`])?
///
/// ```
/// use socks4_server::listen::reaches_listener;
/// let listen = ["0.0.0.0:1080".parse()?];
/// assert!(reaches_listener("127.0.0.2:1080".parse()?, &listen));
/// assert!(!reaches_listener("127.0.0.2:1081".parse()?, &listen));
/// assert!(!reaches_listener("192.0.2.1:1080".parse()?, &listen));
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
pub fn reaches_listener(to: SocketAddr, listen: &[SocketAddr]) -> bool {
    let ip = to.ip().to_canonical();
    listen.iter().filter(|l| l.port() == to.port() && l.port() != 0).any(|l| {
        let own = l.ip().to_canonical();
        own == ip || (own.is_unspecified() && own.is_ipv4() == ip.is_ipv4() && is_own_address(ip))
    })
}
