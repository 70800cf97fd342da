//! # socks4-server
//!
//! The runtime-neutral half of a SOCKS4/SOCKS4a server, shared by the adapters `socks4-tokio`,
//! `socks4-smol` and `socks4-std`: everything about *running* a server that is not I/O. The protocol
//! itself (codec, handshakes, access rules) is [`socks4_core`]; this crate knows no async runtime.
//!
//! - [`config`]: [`ServerConfig`] (listen addresses, workers, limits, timeouts, rules) and its checks;
//! - [`cli`]: the command line every adapter's binary shares, the TOML config file, and [`cli::main`];
//! - [`log`]: the one connection log line ([`log::ConnLine`]) all adapters write;
//! - [`accept`]: how an accept loop treats each kind of error;
//! - [`ident`]: asking a client's identd (RFC 1413) for rules with `ident`;
//! - [`limits`]: per-client admission limits at accept ([`limits::Limiter`]) and the refusal summary log;
//! - [`bandwidth`]: bandwidth caps per connection, user and client for the relays;
//! - [`users`]: user ids as secret tokens checked against a file of Argon2id hashes.
//!
//! ```
//! use socks4_server::{ServerConfig, cli::ServerArgs};
//! let args = ServerArgs::try_parse_from(["socks4", "--listen", "0.0.0.0:1080", "--allow", "from 10.0.0.0/8"])?;
//! let config: ServerConfig = args.to_config()?;
//! assert_eq!(config.rules.0.len(), 1);
//! assert_eq!(config.handshake_timeouts().connect.as_secs(), 10);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Wiring limits, bandwidth caps and users into an adapter
//!
//! A few lines at six points; everything else lives here.
//!
//! ```text
//! bind:        limiter = config.limiter(Instant::now());          // Arc<Limiter>, all workers
//!              bandwidth = config.bandwidth(Instant::now());      // Option<Arc<Bandwidth>>
//!              verifier = config.verifier()?;                     // Option<Arc<Verifier>>
//! accept:      let Ok(mut admission) = limiter.admit(peer.ip(), now) else { close; continue };
//!              (over max_connections: limiter.refusals().record(now, Refusal::ServerConnections, peer.ip().into()))
//!              keep `admission` with the connection (task or slot); dropping it releases it
//! Authorize:   with a verifier: match verifier.check_cached(user_id) {
//!                  Some(verdict) => verdict,
//!                  None => run verifier.verify_blocking(&user_id) on the blocking/resolver pool }
//!              Err(e) => { users::log_refusal(peer, user_id, e); hs.reject(e.reply_code()) }
//!              Ok(()) => rules.evaluate(peer.ip(), &users::named(req)) then hs.accept / hs.reject(Rejected)
//! first reply: admission.handshake_done();                         // sent the reply, or closing
//! BIND listen: match admission.start_bind_wait(now) {              // --max-bind-waits[-per-client]
//!                  Ok(()) => listen; admission.end_bind_wait() when the peer arrives or the wait ends
//!                  Err(_) => hs.handle_listening(now, Err(Failure::OverLimit)) }   // 91, counted
//! relay start: conn_bw = bandwidth.map(|b| b.connection(peer.ip(), Some(users::user_name(user_id)), now));
//! relay read:  (once readable) match conn_bw.grant(Direction::Up, now, buf.len()) {
//!                  Grant::Now(n) => { read/splice at most n; conn_bw.refund(Direction::Up, n - moved) }
//!                  Grant::After(d) => sleep d (keep serving the other direction and the idle timer) }
//! end:         drop(admission), drop(conn_bw); a periodic timer may call limiter.refusals().flush(now)
//! ```

pub mod accept;
pub mod bandwidth;
pub mod cli;
pub mod config;
mod gcra;
pub mod ident;
pub mod limits;
pub mod log;
mod shards;
pub mod users;

pub use config::{ConfigError, ServerConfig, Timeouts};

/// The README's examples, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
