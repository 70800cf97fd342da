//! # socks4-async
//!
//! The one async connection driver of the socks4 servers, generic over a small [`Runtime`] trait
//! and depending on no async runtime: `socks4-tokio` implements the trait for tokio,
//! `socks4-smol` for smol and async-std, and both run this driver for every connection.
//!
//! Per connection ([`serve_connection`]): the PROXY header from a trusted balancer, the sans-IO
//! [`ServerHandshake`](socks4_core::ServerHandshake) with the per-connection decisions of
//! [`socks4_server::step`] (rules, users file, ident, forwarding a name or resolving it, direct
//! or chained connect, BIND slots) and every step they hand out performed (resolve, verify a user
//! off the loop, ask identd, connect with fallback over a name's addresses, listen and accept,
//! chaining through parent proxies by driving [`socks4_server::chain::Attempt`]), the client
//! watched during every wait, the drain after a final reply, then the relay (early data,
//! half-close and resets passed on, idle timeout, bandwidth caps, `splice(2)` on Linux), the
//! metrics and the one log line.
//!
//! ## Features
//! - `server` (default): the connection driver ([`serve_connection`], [`Hooks`]), with
//!   socks4-server. Without it the crate is the [`Runtime`] trait and the [`client`] reply reader
//!   only: what the adapters' client-only builds use.
//!
//! ## For an embedder
//! The public surface is small on purpose: [`Runtime`] (implement it, or take an adapter's:
//! `socks4_tokio::Tokio`, `socks4_smol::Smol`), [`serve_connection`], [`Hooks`] (one place to put
//! a policy check or your own logging), and the [`client`] reply reader. Accepting, the worker
//! pool, limits at accept and shutdown stay yours (or an adapter's `Server`).
//!
//! ```
//! use std::net::SocketAddr;
//! use socks4_core::ReplyCode;
//! use socks4_core::rules::AccessRequest;
//!
//! /// Refuses SMTP; logs like the servers do otherwise.
//! struct NoSmtp;
//!
//! impl socks4_async::Hooks for NoSmtp {
//!     fn check(&self, _client: SocketAddr, request: &AccessRequest<'_>) -> Result<(), ReplyCode> {
//!         if request.port == 25 { Err(ReplyCode::Rejected) } else { Ok(()) }
//!     }
//! }
//! // Per accepted connection, on a worker thread of runtime `R`:
//! // socks4_async::serve_connection::<R, _>(stream, peer, &snapshot, admission, &NoSmtp).await;
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
use std::net::SocketAddr;

#[cfg(feature = "server")]
use socks4_core::ReplyCode;
#[cfg(feature = "server")]
use socks4_core::rules::AccessRequest;
#[cfg(feature = "server")]
use socks4_server::log::ConnLine;

#[cfg(feature = "server")]
mod chain;
pub mod client;
#[cfg(feature = "server")]
mod conn;
#[cfg(feature = "server")]
mod eyeballs;
#[cfg(feature = "server")]
mod ident;
#[cfg(feature = "server")]
mod log;
#[cfg(feature = "server")]
mod relay;
mod runtime;
#[cfg(all(feature = "server", any(target_os = "linux", target_os = "android")))]
mod splice;

#[cfg(feature = "server")]
pub use conn::serve_connection;
pub use runtime::{Interest, Runtime};

#[cfg(feature = "server")]
/// The embedder's hooks into the driver, each with the servers' behaviour as its default. `()`
/// is the servers' own.
pub trait Hooks {
    /// Called once a request is known, before the users file and the rules (again with a name's
    /// next address when a connect to the first failed): `Err(code)` rejects it with `code` (a
    /// `Granted` there counts as `Rejected`), logged as `refused by hook (CODE)`. The default
    /// allows everything (the rules still decide). See
    /// [`Decisions::next_checked`](socks4_server::step::Decisions::next_checked).
    fn check(&self, client: SocketAddr, request: &AccessRequest<'_>) -> Result<(), ReplyCode> {
        let _ = (client, request);
        Ok(())
    }

    /// The connection's one record, when it ends (also when its task is dropped at shutdown). The
    /// default writes the servers' log line ([`ConnLine::log`]).
    fn closed(&self, line: &ConnLine<'_>) {
        line.log();
    }
}

/// The servers' own behaviour.
#[cfg(feature = "server")]
impl Hooks for () {}
