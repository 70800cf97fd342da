//! # socks4-tokio
//!
//! A SOCKS4/SOCKS4a server and client connector on tokio, built on the sans-IO
//! [`socks4_core`] handshakes.
//!
//! The server runs a pool of worker threads, each with its own current-thread runtime and
//! [`LocalSet`](tokio::task::LocalSet). One acceptor (a task on the first worker) hands every
//! accepted connection to the next worker in turn (round-robin); with [`ServerConfig::reuseport`]
//! each worker has its own `SO_REUSEPORT` listener instead and the kernel spreads the connections.
//!
//! Each connection runs [`socks4_async`]'s driver (shared with socks4-smol) on [`Tokio`], this
//! crate's implementation of its [`Runtime`] trait. On Linux the relay moves bulk data with
//! splice(2) through pipes borrowed from a small per-worker pool (no copy to user space); small
//! chunks, and other systems, go through pooled buffers. [`ServerHandle::stats`] reports the
//! counters every adapter reports ([`Stats`]).
//!
//! An embedder can run the same driver on its own accept loop with a hook of its own:
//! [`serve_connection`] with [`Tokio`] and a [`Hooks`] (see `examples/hooks.rs`).
//!
//! ```no_run
//! use socks4_server::ServerConfig;
//! let server = socks4_tokio::Server::bind(ServerConfig::default())?;
//! println!("listening on {:?}", server.local_addrs());
//! let handle = server.spawn()?;
//! // ... later
//! handle.shutdown();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Features
//! - `server` (default): the server ([`Server`], the worker pool, the `socks4-tokio` binary), with
//!   socks4-server. A program that only connects through a proxy turns it off
//!   (`socks4-tokio = { version = "0.3", default-features = false }`): the crate is then the client
//!   connector on socks4-core and tokio (`rt`, `net`, `time`), with nothing of the server.
//! - `hyper` (off by default, client side only, needs no `server`): `hyper::SocksConnector`, a
//!   `tower_service::Service<http::Uri>` connector for hyper-util's legacy `Client`, SOCKS4 or 4a
//!   with a user id (`examples/hyper_get.rs`).
//!
//! The client side: [`connect`] (SOCKS4 or 4a CONNECT), [`connect_over`] (the handshake over a
//! stream you already have), [`bind`] and [`bind_to`] (BIND by address or by name), with
//! [`PendingBind`]; a time limit goes with the proxy's address ([`ProxyAddr`]). The three adapters
//! share this API: [`ProxyAddr`](socks4_core::ProxyAddr#one-client-api-three-runtimes) has the
//! table of what differs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), socks4_tokio::ConnectError> {
//! let proxy: std::net::SocketAddr = "127.0.0.1:1080".parse().unwrap();
//! let stream = socks4_tokio::connect(proxy, ("example.com", 80), b"alice").await?;
//! # Ok(()) }
//! ```

// A client-only build (no `server`) has none of the server's items the docs above name: their
// links lead to the Features section, which says what turns them on.
#![cfg_attr(
    not(feature = "server"),
    doc = "\n[`ServerConfig::reuseport`]: #features\n[`ServerHandle::stats`]: #features\n[`Stats`]: #features\n\
           [`serve_connection`]: #features\n[`Hooks`]: #features\n[`Server`]: #features"
)]

pub mod client;
#[cfg(feature = "hyper")]
pub mod hyper;
#[cfg(feature = "server")]
mod pool;
mod runtime;
#[cfg(feature = "server")]
mod server;

pub use client::{ConnectError, PendingBind, ProxyAddr, Target, bind, bind_to, connect, connect_over};
pub use runtime::Tokio;
#[cfg(feature = "server")]
pub use server::{Server, ServerHandle};
pub use socks4_async::{self, Runtime};
#[cfg(feature = "server")]
pub use socks4_async::{Hooks, serve_connection};
pub use socks4_core;
#[cfg(feature = "server")]
pub use socks4_server::{ServerConfig, Stats};
