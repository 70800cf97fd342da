//! # socks4-server
//!
//! The runtime-neutral half of a SOCKS4/SOCKS4a server, shared by the adapters `socks4-tokio`,
//! `socks4-smol` and `socks4-std`: everything about *running* a server that is not I/O. The protocol
//! itself (codec, handshakes, access rules) is [`socks4_core`]; this crate knows no async runtime.
//!
//! - [`config`]: [`ServerConfig`] (listen addresses, workers, limits, timeouts, rules) and its checks;
//! - [`cli`]: the command line every adapter's binary shares, the TOML config file, and [`cli::main`];
//! - [`config_file`]: the TOML config file, read and parsed;
//! - [`serve`]: what an adapter's server offers the shared binary ([`serve::Serve`], [`serve::Running`]);
//! - [`check`]: the effective configuration as a config file (`--check-config`);
//! - [`listen`]: the listening sockets, bound from the config or passed by socket activation;
//! - [`log`]: the one connection log line ([`log::ConnLine`]) all adapters write, as text or JSON;
//! - [`metrics`]: Prometheus metrics counted per worker, and the `/metrics`, `/healthz`, `/readyz` endpoint;
//! - [`accept`]: how an accept loop treats each kind of error;
//! - [`ident`]: asking a client's identd (RFC 1413) for rules with `ident`;
//! - [`linger`]: the drain after a handshake's last reply, the same on every adapter;
//! - [`Stats`]: the counters every adapter's server handle reports;
//! - [`limits`]: per-client admission limits at accept ([`limits::Limiter`]) and the refusal summary log;
//! - [`bandwidth`]: bandwidth caps per connection, user and client for the relays;
//! - [`user_id`]: the text rules of a user id (`NAME:TOKEN`, what logs and rules see);
//! - [`users`]: user ids as secret tokens checked against a file of Argon2id hashes;
//! - [`reload`]: the live config ([`reload::LiveConfig`]): a snapshot per connection, swapped on reload;
//! - [`signals`]: `SIGHUP` (reload) and `SIGINT`/`SIGTERM` (drain) for a binary's main thread;
//! - [`systemd`]: socket activation and readiness/reload/stopping notifications;
//! - [`worker`]: which worker the calling thread is;
//! - [`proxy`]: PROXY protocol headers from trusted load balancers (`--proxy-protocol`);
//! - [`upstream`]: routes through parent SOCKS4/4a proxies (`via`), failover and their health;
//! - [`chain`]: one request through a route's parents as a sans-IO machine ([`chain::Attempt`]);
//! - [`step`]: the per-connection decisions between the handshake and the I/O ([`step::Decisions`]);
//! - [`egress`]: where outgoing connections leave from (`--outgoing`, a rule's `out`), and the one
//!   function making every outgoing socket ([`egress::socket`]);
//! - [`keepalive`]: TCP keepalive on relayed sockets (`--keepalive`);
//! - [`unsafe_socks`]: `--warn-unsafe-socks`, the bounded warning about requests by IP address.
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
//! bind:        live = LiveConfig::new(config)?;                   // Arc<LiveConfig>: verifier, limiter
//!              bandwidth = config.bandwidth(Instant::now());      // Option<Arc<Bandwidth>>
//! accept:      let snapshot = live.snapshot();                    // kept by the connection to its end
//!              let (limiter, verifier) = (&snapshot.limiter, &snapshot.verifier);
//!              let Ok(mut admission) = limiter.admit(peer.ip(), now) else { close; continue };
//!              (over max_connections: limiter.refusals().record(now, Refusal::ServerConnections, peer.ip().into()))
//!              keep `admission` with the connection (task or slot); dropping it releases it
//! Authorize:   with a verifier: verdict = verifier.verify(peer.ip(), user_id).await   // or .notify(callback)
//!                  (at once when cached; drop it when the client leaves: the check is withdrawn)
//!              Err(e) => users::refuse(hs, peer, e)               // logs; 93 or 91; `auth refused`
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
//!
//! # Wiring metrics and the log line into an adapter
//!
//! ```text
//! bind:        metrics = live.metrics(workers)                        // Arc<Metrics>; Serve::metrics returns it
//! worker:      metrics.enter_worker(i) at the top of worker thread i
//! accept:      metrics.accept_error() where accepting pauses on an error
//! connection:  meter = ConnMeter::start(); meter.enter(Phase::…), meter.resolved(ok), meter.connected(),
//!              meter.replied(code), meter.close(reason) where the reason is typed
//! end:         meter.finish(cmd, up, down, errored);
//!              ConnLine { worker: meter.worker(), reply: meter.reply(), users_file: verifier.is_some(), … }.log()
//! shutdown:    metrics.set_draining() before the listeners close (/readyz answers 503)
//! ```
//! See [`metrics`] for the whole list.
//!
//! # Wiring the PROXY protocol into an adapter
//!
//! ```text
//! accept:      if config.proxy_protocol.contains(peer.ip()) { admission = limiter.defer(peer.ip(), now)? }
//!              else as above (limiter.admit)
//! worker:      (trusted) reader = HeaderReader::new(peer); read with the handshake timeout:
//!                  More => read again;  Close(end) => { end.log(peer, elapsed); close }
//!                  Client { client, rest } => admission.claim(client.ip(), now)? (else close);
//!                      the handshake's first input is `rest`; `client` is the peer from here on
//!              timeout: HeaderEnd::TimedOut; EOF: reader.handle_eof()
//! Ident:       (proxied) answer = proxy::ident_through_balancer(client) instead of asking identd
//! ```
//!
//! Routes through parent proxies (`via`) are wired at `Resolve`, `Authorize` and `Connect`; see
//! [`upstream`]. [`step::Decisions`] makes all of these per-connection decisions (users file,
//! rules, route, BIND-wait slot, ident behind a balancer) in one place, leaving a driver only the
//! I/O of each [`step::Step`]; a chained connect or BIND is then a [`chain::Attempt`] to drive.
// Every fallible public function says when it fails (clippy, `-D warnings` in CI).
#![warn(clippy::missing_errors_doc)]

pub mod accept;
pub mod bandwidth;
pub mod chain;
pub mod check;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod egress;
pub mod eyeballs;
mod gcra;
pub mod ident;
pub mod keepalive;
pub mod limits;
pub mod linger;
pub mod listen;
pub mod log;
mod manual;
pub mod metrics;
pub mod names;
pub mod proxy;
pub mod reload;
pub mod serve;
mod shards;
#[cfg(unix)]
pub mod signals;
mod stats;
pub mod step;
pub mod systemd;
pub mod unsafe_socks;
pub mod upstream;
pub mod user_id;
pub mod users;
pub mod worker;

pub use stats::Stats;

pub use config::{ConfigError, ServerConfig, Timeouts};

/// The README's examples, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
