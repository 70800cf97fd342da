//! The contract between an adapter's server and the shared binary ([`cli::main`](crate::cli::main)):
//! what a server offers ([`Serve`]) and what a running one does ([`Running`]).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::reload::LiveConfig;

/// What an adapter's server offers the shared [`cli::main`](crate::cli::main).
pub trait Serve: Sized {
    /// The running server.
    type Running: Running;
    /// Binds the listen addresses of `live`'s config, or, when `activated` is given (socket
    /// activation), serves those listeners instead (listening, non-blocking, close-on-exec).
    /// Each connection takes `live`'s snapshot at accept.
    ///
    /// # Errors
    ///
    /// An I/O error when a listen address cannot be bound (or a passed listener cannot be set up).
    fn bind_live(live: Arc<LiveConfig>, activated: Option<Vec<TcpListener>>) -> std::io::Result<Self>;
    /// The addresses actually bound.
    fn local_addrs(&self) -> Vec<SocketAddr>;
    /// Starts serving in background threads.
    ///
    /// # Errors
    ///
    /// An I/O error when a worker thread cannot be started.
    fn spawn(self) -> std::io::Result<Self::Running>;
    /// Its metrics, which [`cli::main`](crate::cli::main) serves with `--metrics` (counting only when the config sets
    /// `metrics`).
    fn metrics(&self) -> Arc<Metrics>;
}

/// A running server, as [`Serve::spawn`] returns it.
pub trait Running {
    /// Stops accepting, lets live connections finish within the (current) shutdown grace period,
    /// closes the rest and joins the threads.
    fn shutdown(self);
}
