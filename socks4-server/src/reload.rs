//! Live configuration: the [`Snapshot`] each new connection takes at accept, swapped atomically
//! (with `arc-swap`) when the config is reloaded, so live connections keep the one they started
//! with and new ones get the new one.
//!
//! ```
//! use socks4_server::{ServerConfig, reload::LiveConfig};
//! use socks4_core::rules::Rules;
//! let live = LiveConfig::new(ServerConfig::default())?;
//! let before = live.snapshot(); // a connection accepted now keeps this one
//! let mut next = ServerConfig::default();
//! next.rules = Rules::parse("deny port 25\nallow any")?;
//! let change = live.replace(next)?;
//! assert!(change.restart_needed.is_empty());
//! assert!(before.config.rules.is_empty(), "the old snapshot is untouched");
//! assert_eq!(live.snapshot().config.rules.0.len(), 2, "new connections get the new rules");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What a reload changes, and what it does not:
//!
//! - users file: a new verifier for connections accepted after the swap; it shares the running
//!   one's verification threads and places, keeps the verified user ids of users whose line is
//!   unchanged and which names verified before (see [`Verifier::reloaded`]);
//! - rules (with their `out`), users file, timeouts, `max_connections`, `safe_socks`,
//!   `warn_unsafe_socks`, `outgoing`, `keepalive`, `[limits]`, `[client_limits]` and the log
//!   level apply to connections accepted after the swap (a source address not on this host is
//!   refused, and the old config kept); connections already accepted
//!   keep their snapshot to the end (a relay is never cut or re-checked by a reload);
//! - listen addresses, `workers`, `reuseport`, `metrics` and `log_format` are bind-time settings: a change is listed in
//!   [`Change::restart_needed`] (the server logs it) and otherwise ignored;
//! - per-client counts: the [`Limiter`] is kept as long as `[client_limits]` is unchanged, so the
//!   counts and rate buckets carry over. When the limits change a new limiter counts the
//!   connections accepted after the swap; connections admitted before release their slots into the
//!   old one, which is dropped with its last connection. (So a client can hold the old limit's
//!   worth of old connections plus the new limit's worth of new ones for as long as the old ones
//!   last; a limiter whose limits change in place would need every counter re-checked.)
//! - bandwidth caps (`[bandwidth]`): likewise, the buckets are kept while the caps are unchanged;
//!   new caps apply to connections accepted after the swap (a live relay keeps the caps it
//!   started with).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::bandwidth::Bandwidth;
use crate::config::{ConfigError, ServerConfig};
use crate::egress::Egress;
use crate::limits::{Limiter, Refusal};
use crate::metrics::{Metrics, RefusalTotals};
use crate::proxy::guard_own_listeners;
use crate::users::Verifier;
use socks4_core::rules::Rules;

/// What a connection runs with, from accept to close: the config and what is built from it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Snapshot {
    /// The validated configuration.
    pub config: ServerConfig,
    /// The users file's verifier, when the config names one.
    pub verifier: Option<Arc<Verifier>>,
    /// The per-client admission limits (shared with the next snapshot while the limits are equal).
    pub limiter: Arc<Limiter>,
    /// The bandwidth caps' shared buckets, `None` when no cap is set (shared with the next
    /// snapshot while the caps are equal).
    pub bandwidth: Option<Arc<Bandwidth>>,
    /// Where outgoing connections leave from: `outgoing` and the rules' `out`, indexed like
    /// `config.rules` (see [`egress`](crate::egress)).
    pub egress: Egress,
    /// The rules as configured; `config.rules` adds the guard of the server's own listeners when
    /// PROXY headers are trusted (see [`guard_own_listeners`]).
    configured_rules: Rules,
}

impl Snapshot {
    /// The rules as configured, without the guard of the server's own listeners that
    /// `config.rules` adds.
    pub fn configured_rules(&self) -> &Rules {
        &self.configured_rules
    }

    fn build(mut config: ServerConfig, old: Option<&Snapshot>, listening: &[SocketAddr]) -> Result<Self, ConfigError> {
        config.validate()?;
        let configured_rules = std::mem::take(&mut config.rules);
        config.rules = guard_own_listeners(&configured_rules, listening, &config.proxy_protocol);
        let verifier = config.verifier_after(old.and_then(|o| o.verifier.as_deref()))?;
        let limiter = match old {
            Some(old) if *old.limiter.limits() == config.client_limits => Arc::clone(&old.limiter),
            Some(old) => {
                let limiter = config.limiter(Instant::now());
                limiter.refusals().carry_totals(old.limiter.refusals());
                limiter
            }
            None => config.limiter(Instant::now()),
        };
        let bandwidth = match old {
            Some(old) if old.config.bandwidth == config.bandwidth => old.bandwidth.clone(),
            _ => config.bandwidth(Instant::now()),
        };
        let egress = Egress::new(&config);
        Ok(Self { config, verifier, limiter, bandwidth, egress, configured_rules })
    }
}

/// The current [`Snapshot`], replaced as a whole by [`replace`](Self::replace). Shared (`Arc`) by
/// the acceptors, which take a snapshot per connection, and whoever reloads.
#[derive(Debug)]
pub struct LiveConfig {
    current: ArcSwap<Snapshot>,
    /// The bind-time settings the server was started with, to tell a reload that changes them.
    bound: ServerConfig,
    /// The addresses the server listens on, once bound (see [`listening_on`](Self::listening_on)).
    listening: Mutex<Vec<SocketAddr>>,
}

/// The metrics read the current limiter's refusals (a reload may replace it; totals carry over).
impl RefusalTotals for LiveConfig {
    fn total(&self, reason: Refusal) -> u64 {
        self.snapshot().limiter.refusals().total(reason)
    }
}

impl LiveConfig {
    /// Validates `config`, loads its users file and builds its limiter.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is invalid or its users file cannot be loaded.
    pub fn new(config: ServerConfig) -> Result<Arc<Self>, ConfigError> {
        let snapshot = Snapshot::build(config.clone(), None, &[])?;
        let listening = Mutex::new(Vec::new());
        Ok(Arc::new(Self { current: ArcSwap::from_pointee(snapshot), bound: config, listening }))
    }

    /// Tells the addresses the server listens on, once bound (with their actual ports): with
    /// `proxy_protocol` set, CONNECTs to them are denied from now on (see
    /// [`guard_own_listeners`]). Every adapter calls it at bind.
    pub fn listening_on(&self, addrs: &[SocketAddr]) {
        let mut listening = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        listening.clone_from(&addrs.to_vec());
        let current = self.current.load();
        let mut config = current.config.clone();
        config.rules = current.configured_rules.clone();
        // The running config was valid and stays so: only the guard changes.
        if let Ok(next) = Snapshot::build(config, Some(&current), &listening) {
            self.current.store(Arc::new(next));
        }
    }

    /// The metrics for a pool of `workers`, counting only when the config sets `metrics`, reading
    /// the admission refusals from the current limiter: what an adapter builds at bind.
    pub fn metrics(self: &Arc<Self>, workers: usize) -> Arc<Metrics> {
        let metrics = Metrics::new(workers, self.bound.metrics.is_some());
        metrics.watch_refusals(Arc::clone(self) as Arc<dyn RefusalTotals>);
        metrics
    }

    /// The current snapshot: take it once per connection, at accept, and keep it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Is `config` what runs now (bind-time settings aside, as [`replace`](Self::replace) keeps
    /// the running ones)? Then replacing it changes nothing.
    pub fn is_running(&self, config: &ServerConfig) -> bool {
        let mut config = config.clone();
        self.keep_bind_time(&mut config);
        let current = self.current.load();
        let mut running = current.config.clone();
        running.rules = current.configured_rules.clone();
        running == config
    }

    /// Sets `config`'s bind-time settings to the running server's.
    fn keep_bind_time(&self, config: &mut ServerConfig) {
        config.listen.clone_from(&self.bound.listen);
        config.workers = self.bound.workers;
        config.reuseport = self.bound.reuseport;
        config.metrics = self.bound.metrics;
        config.log_format = self.bound.log_format;
    }

    /// Validates `config`, loads its users file and swaps it in for new connections. On error the
    /// current snapshot stays. Bind-time settings that differ from the running server's are
    /// listed in the [`Change`] and not applied (the new snapshot keeps the running ones).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is invalid or its users file cannot be loaded; the current
    /// snapshot stays.
    pub fn replace(&self, mut config: ServerConfig) -> Result<Change, ConfigError> {
        let restart_needed = restart_needed(&self.bound, &config);
        self.keep_bind_time(&mut config);
        let old = self.current.load();
        let listening = self.listening.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let next = Snapshot::build(config, Some(&old), &listening)?;
        let limits_changed = !Arc::ptr_eq(&old.limiter, &next.limiter);
        if limits_changed {
            // The old limiter's pending refusal summary is written now, not lost with it.
            old.limiter.refusals().flush(Instant::now());
        }
        drop(old);
        self.current.store(Arc::new(next));
        Ok(Change { restart_needed, limits_changed })
    }
}

/// What a successful [`LiveConfig::replace`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// Bind-time settings that changed and were not applied (`listen`, `workers`, `reuseport`,
    /// `metrics`, `log_format`).
    pub restart_needed: Vec<&'static str>,
    /// `[client_limits]` changed: new connections are counted by a new limiter.
    pub limits_changed: bool,
}

/// The bind-time settings in which `new` differs from `old`.
///
/// ```
/// use socks4_server::{ServerConfig, reload::restart_needed};
/// let old = ServerConfig::default();
/// let mut new = old.clone();
/// new.workers = Some(8);
/// assert_eq!(restart_needed(&old, &new), ["workers"]);
/// ```
pub fn restart_needed(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen_addrs().ne(new.listen_addrs()) {
        changed.push("listen");
    }
    if old.workers != new.workers {
        changed.push("workers");
    }
    if old.reuseport != new.reuseport {
        changed.push("reuseport");
    }
    if old.metrics != new.metrics {
        changed.push("metrics");
    }
    if old.log_format != new.log_format {
        changed.push("log_format");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ClientLimits;

    fn config(f: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
        let mut c = ServerConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn a_bad_config_keeps_the_old_snapshot() {
        let live = LiveConfig::new(ServerConfig::default()).unwrap();
        let before = live.snapshot();
        let elsewhere = config(|c| c.outgoing = vec!["192.0.2.1".parse().unwrap()]);
        assert!(matches!(live.replace(elsewhere), Err(ConfigError::Outgoing(_))), "not an address of this host");
        let bad = config(|c| c.max_connections = 0);
        assert_eq!(live.replace(bad).unwrap_err(), ConfigError::Zero("max_connections"));
        let missing_users = config(|c| c.users = Some("/nonexistent/users".into()));
        assert!(matches!(live.replace(missing_users), Err(ConfigError::Users(_))));
        assert!(Arc::ptr_eq(&before, &live.snapshot()), "nothing was swapped");
    }

    #[test]
    fn bind_time_settings_are_reported_and_kept() {
        let live = LiveConfig::new(config(|c| {
            c.listen = vec!["127.0.0.1:1080".parse().unwrap()];
            c.workers = Some(2);
        }))
        .unwrap();
        let next = config(|c| {
            c.listen = vec!["[::ffff:127.0.0.1]:1080".parse().unwrap()]; // the same, spelt otherwise
            c.workers = Some(4);
            c.reuseport = true;
            c.max_connections = 5;
        });
        let change = live.replace(next).unwrap();
        assert_eq!(change.restart_needed, ["workers", "reuseport"]);
        let now = live.snapshot();
        assert_eq!((now.config.workers, now.config.reuseport, now.config.max_connections), (Some(2), false, 5));
        // An open listener in the new file would be refused anyway; the running one is what counts.
        let open = config(|c| c.listen = vec!["0.0.0.0:1080".parse().unwrap()]);
        assert_eq!(live.replace(open).unwrap().restart_needed, ["listen", "workers"]);
    }

    #[test]
    fn verified_users_carry_over_a_reload() {
        let path = std::env::temp_dir().join(format!("socks4-reload-users-{}", std::process::id()));
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        std::fs::write(&path, format!("alice:{}\n", crate::users::hash_token_with(b"t", params).unwrap())).unwrap();
        let with_users = || config(|c| c.users = Some(path.clone()));
        let live = LiveConfig::new(with_users()).unwrap();
        let first = live.snapshot().verifier.clone().unwrap();
        assert_eq!(first.verify_blocking(b"alice:t"), Ok(()));
        live.replace(with_users()).unwrap();
        let second = live.snapshot().verifier.clone().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "a new verifier");
        assert_eq!(second.check_cached(b"alice:t"), Some(Ok(())), "alice's line is unchanged: still verified");
        assert_eq!(second.hashes_computed(), 1, "the same threads and counts");
    }

    #[test]
    fn outgoing_sources_apply_to_new_connections() {
        let live = LiveConfig::new(ServerConfig::default()).unwrap();
        let before = live.snapshot();
        live.replace(config(|c| c.outgoing = vec!["127.0.0.2".parse().unwrap()])).unwrap();
        let dest = "127.0.0.1:80".parse().unwrap();
        assert_eq!(before.egress.pick(None, dest, None), crate::egress::Source::Any, "the old snapshot's");
        let after = live.snapshot();
        let now = after.egress.pick(None, dest, None);
        assert_eq!(now, crate::egress::Source::Addr("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn the_limiter_carries_over_unless_the_limits_change() {
        let live = LiveConfig::new(ServerConfig::default()).unwrap();
        let first = live.snapshot();
        let admission = first.limiter.admit("10.0.0.1".parse().unwrap(), Instant::now()).unwrap();
        assert!(!live.replace(ServerConfig::default()).unwrap().limits_changed);
        assert!(Arc::ptr_eq(&first.limiter, &live.snapshot().limiter), "counts carry over");
        let tighter = config(|c| c.client_limits = ClientLimits { max_per_client: 1, ..ClientLimits::default() });
        assert!(live.replace(tighter).unwrap().limits_changed);
        let second = live.snapshot();
        assert!(!Arc::ptr_eq(&first.limiter, &second.limiter));
        assert_eq!(first.limiter.connections_of("10.0.0.1".parse().unwrap()), 1);
        drop(admission); // releases into the old limiter
        assert_eq!(first.limiter.connections_of("10.0.0.1".parse().unwrap()), 0);
    }
}
