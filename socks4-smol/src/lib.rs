//! # socks4-smol
//!
//! A SOCKS4/SOCKS4a proxy server and client connector on [smol](https://docs.rs/smol), built on the
//! sans-IO [`socks4_core`].
//!
//! - [`Server`]: binds the configured addresses; an accept task per listener, running on one of
//!   the worker threads, deals accepted connections round-robin to the workers, each running its own
//!   [`async_executor::LocalExecutor`] (no work stealing, no `Send` bounds). Connection limit,
//!   per-client limits at accept ([`socks4_server::limits`]), users file ([`socks4_server::users`]),
//!   access rules, accept-error back-off and graceful shutdown ([`ServerHandle::shutdown`], or
//!   SIGINT/SIGTERM with [`Server::run`]).
//! - While a handshake waits (resolve, connect, identd, a user check, a BIND peer) it watches the
//!   client without reading its bytes: a failed client ends it at once, and so does one that
//!   leaves during a BIND wait.
//! - The per-connection code (handshake, connect, resolve, BIND, chaining, relay with half-close,
//!   early data, timeouts) is [`socks4_async`]'s driver, shared with socks4-tokio; this crate holds
//!   its [`Runtime`] implementations: [`SmolLocal`] (the server's default, Unix), [`Smol`] and,
//!   with a feature, `AsyncStd`.
//! - **A reactor per worker** ([`SmolLocal`], [`local`]): each worker thread runs smol's
//!   `LocalExecutor` over an epoll instance of its own (Linux), with its sockets registered once,
//!   edge-triggered, with cached readiness, and its timers driven by the poller's timeout. On
//!   async-io's one reactor per process ([`Smol`], `server.spawn_on::<Smol>()`), whichever worker
//!   holds it polls for all and wakes the others' tasks across threads, re-arming each socket per
//!   wait: the smol server reached 0.77× tokio's handshake rate with 1.7–2.9 context switches and
//!   0.25–0.31 ms of CPU per handshake (tokio: 1.4–1.5, 0.22–0.23 ms). With a reactor per worker
//!   it makes 0.95–1.03× tokio's handshakes (async-io: 0.86–0.93×) at 1.6–1.7 context switches
//!   each (tokio 1.5–1.7, async-io 2.2–2.5) and holds a relayed connection in 2.7 KiB (async-io
//!   4.1, tokio 4.3): the figures are in [`local`]. The binary takes
//!   `SOCKS4_SMOL_RUNTIME=async-io` to run on [`Smol`] instead (for comparisons).
//!   Elsewhere the pool runs on [`Smol`]. No `unsafe`: epoll through rustix's safe calls.
//! - **async-std**: with the non-default `async-std` feature, `AsyncStd` runs the same server on
//!   async-std's reactor, timers and resolver (`server.spawn_on::<AsyncStd>()`). async-std is
//!   deprecated upstream in favour of smol; the feature exists for programs that still use it.
//! - The accept tasks wait on their listener through the worker's runtime ([`BlockOn`]), accept
//!   non-blocking sockets without registering them, and hand each connection to its worker as a
//!   `std::net::TcpStream`, which the worker registers with its runtime ([`Runtime::from_std`]).
//! - [`ServerHandle::stats`]: the counters every adapter reports ([`Stats`]).
//! - The client, at the crate root ([`client`] holds it): [`connect`], [`connect_over`] (any
//!   `futures-io` stream), [`bind`], [`bind_to`], [`PendingBind`], a time limit with the proxy's
//!   address ([`ProxyAddr`]); the same API as socks4-tokio's and socks4-std's
//!   ([the table](socks4_core::ProxyAddr#one-client-api-three-runtimes)).
//!
//! ## Features
//! - `server` (default): the server ([`Server`], the executors' pool, the `socks4-smol` binary),
//!   with socks4-server. Without it (`default-features = false`) the crate is the [`client`]
//!   connector on socks4-core and smol's reactor (async-io, async-net), with nothing of the server.
//! - `async-std` (implies `server`): the server on async-std.
//!
//! Every connection logs one line at `info` when it ends:
//! `conn client=… cmd=CONNECT|BIND|- dest=… user=… result=ok|… up=… down=… ms=…`.
//!
//! ```no_run
//! use socks4_core::rules::Rules;
//! use socks4_server::ServerConfig;
//! let mut config = ServerConfig::default();
//! config.listen = vec!["0.0.0.0:1080".parse()?];
//! config.rules = Rules::parse("allow from 192.168.0.0/16")?; // required beyond loopback
//! socks4_smol::Server::bind(config)?.run()?; // until SIGINT/SIGTERM
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// A client-only build (no `server`) has none of the server's items the docs above name: their
// links lead to the Features section, which says what turns them on.
#![cfg_attr(
    not(feature = "server"),
    doc = "\n[`Server`]: #features\n[`Server::run`]: #features\n[`ServerHandle::shutdown`]: #features\n\
           [`ServerHandle::stats`]: #features\n[`Stats`]: #features\n[`SmolLocal`]: #features\n[`local`]: #features\n\
           [`async_executor::LocalExecutor`]: #features\n[`socks4_server::limits`]: #features\n\
           [`socks4_server::users`]: #features"
)]
#![forbid(unsafe_code)]

#[cfg(feature = "async-std")]
mod async_std_runtime;
pub mod client;
#[cfg(all(target_os = "linux", feature = "server"))]
pub mod local;
mod runtime;
#[cfg(feature = "server")]
mod server;
mod timers;

#[cfg(feature = "async-std")]
pub use async_std_runtime::AsyncStd;
pub use client::{ConnectError, PendingBind, ProxyAddr, Target, bind, bind_to, connect, connect_over};
#[cfg(all(target_os = "linux", feature = "server"))]
pub use local::SmolLocal;
pub use runtime::{BlockOn, Smol};
#[cfg(feature = "server")]
pub use server::{Server, ServerHandle};
pub use socks4_async::{self, Runtime};
#[cfg(feature = "server")]
pub use socks4_async::{Hooks, serve_connection};
pub use socks4_core;
#[cfg(feature = "server")]
pub use socks4_server::{ServerConfig, Stats};
