//! # socks4-std
//!
//! A SOCKS4/4a server with no async runtime: an acceptor thread deals connections round-robin to
//! a fixed pool of worker threads, each blocking in its own [`polling::Poller`] (epoll, kqueue)
//! over a slab of connections with non-blocking std sockets and a timer heap for the handshake,
//! connect, BIND and idle deadlines. The protocol is [`socks4_core`]'s sans-IO
//! [`ServerHandshake`](socks4_core::ServerHandshake), and what to do at each of its outputs is
//! [`socks4_server::step`]'s; connects and BINDs through parent proxies
//! ([`socks4_server::chain`]) are sockets in the same poller. SOCKS4a and parents' names, ident
//! queries and users-file checks run on a small thread pool that answers through the worker's
//! poller. On Linux the relay is zero-copy:
//! `splice(2)` socket → pipe → socket through pipes each worker lends a direction only while it
//! has bytes in flight ([`Server::splice`], [`SplicePolicy`]; the system calls, the pipe pool and
//! the policy are `socks4-sys`'s, shared with the async servers); elsewhere it copies through the
//! worker's buffer. It holds at most [`MAX_PENDING`] bytes per direction per connection (nothing, and no pipe, while
//! idle) and stops reading a side whose peer cannot take more.
//!
//! Also a blocking client, the same API as socks4-tokio's and socks4-smol's
//! ([the table](socks4_core::ProxyAddr#one-client-api-three-runtimes)): [`connect`] (CONNECT,
//! SOCKS4 or 4a), [`connect_over`] (over any `Read + Write` stream), [`bind`] and [`bind_to`]
//! (BIND by address or name, [`PendingBind`]), a time limit with the proxy's address
//! ([`ProxyAddr`]); built on [`ClientHandshake`](socks4_core::ClientHandshake). With
//! `default-features = false` (no `server` feature) the crate is this client on socks4-core alone.
//!
//! ## Features
//! - `server` (default): the server ([`Server`], its worker threads and poller, the `socks4-std`
//!   binary), with socks4-server, socks4-sys and polling. Without it the crate is the blocking
//!   client alone.
//!
//! ```no_run
//! use std::time::Duration;
//! use socks4_server::ServerConfig;
//!
//! let mut config = ServerConfig::default();
//! config.listen = vec!["127.0.0.1:0".parse().unwrap()];
//! let server = socks4_std::Server::bind(config)?;
//! let proxy = server.local_addrs()[0];
//! let handle = server.spawn()?;
//! let proxy = socks4_std::ProxyAddr::new(proxy).with_timeout(Duration::from_secs(5));
//! let stream = socks4_std::connect(proxy, ("localhost", 8080), b"me")?;
//! # drop(stream);
//! handle.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// A client-only build (no `server`) has none of the server's items the docs above name: their
// links lead to the Features section, which says what turns them on.
#![cfg_attr(
    not(feature = "server"),
    doc = "\n[`Server`]: #features\n[`Server::splice`]: #features\n[`SplicePolicy`]: #features\n\
           [`MAX_PENDING`]: #features\n[`polling::Poller`]: #features\n[`socks4_server::chain`]: #features\n\
           [`socks4_server::step`]: #features"
)]

mod client;
#[cfg(feature = "server")]
mod conn;
#[cfg(feature = "server")]
mod race;
#[cfg(feature = "server")]
mod relay;
#[cfg(feature = "server")]
mod resolver;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod timers;
#[cfg(feature = "server")]
mod worker;

pub use client::{ConnectError, PendingBind, ProxyAddr, Target, bind, bind_to, connect, connect_over};
#[cfg(feature = "server")]
pub use relay::MAX_PENDING;
#[cfg(feature = "server")]
pub use server::{ACCEPT_BACKOFF, SPLICE_POLICY_ENV, Server, ServerHandle};
pub use socks4_core;
#[cfg(feature = "server")]
pub use socks4_sys::SplicePolicy;
