//! Looking SOCKS4a names up with a resolver of our own (`--resolver ADDR[:PORT]`, the `[names]`
//! table) instead of the system's, runtime-neutral: this crate defines only what the drivers need
//! — the [`NameResolver`] trait, the process's registry of the one implementation
//! ([`install`], [`resolver_for`]), an awaitable [`Lookup`] for the async driver, and the
//! resolver's metrics ([`DnsStats`]). The implementation (hickory-resolver, on a tokio runtime of
//! its own thread) is the `socks4-dns` crate, which the adapters link and install at start: this
//! crate stays free of any async runtime.
//!
//! With no `resolvers` configured (the default) nothing here is used: names go to the system's
//! resolver (`getaddrinfo`). Names routed to a `socks4a://` parent never get here (the decisions
//! forward them unresolved).
//!
//! ```
//! use std::future::Future;
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use socks4_server::config::NamesConfig;
//! use socks4_server::names::{self, Done, NameResolver};
//!
//! /// Every name is 192.0.2.1.
//! struct Fixed;
//! impl NameResolver for Fixed {
//!     fn lookup(&self, _host: &str, port: u16, done: Done) {
//!         done(Ok(vec![SocketAddr::from(([192, 0, 2, 1], port))]));
//!     }
//! }
//! names::install(|_config| Ok(Arc::new(Fixed)));
//! let mut config = NamesConfig::default();
//! config.resolvers = vec!["127.0.0.1:53".parse()?];
//! let resolver = names::resolver_for(&config).expect("configured")?;
//! let mut lookup = std::pin::pin!(names::Lookup::start(&*resolver, "example.org", 80));
//! let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! let std::task::Poll::Ready(answer) = lookup.as_mut().poll(&mut cx) else { panic!("answered at once") };
//! assert_eq!(answer?, ["192.0.2.1:80".parse::<SocketAddr>()?]);
//! assert!(names::resolver_for(&NamesConfig::default()).is_none(), "the system's resolver");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::config::NamesConfig;
use crate::metrics::BUCKETS;

/// Where a lookup's answer goes: called once, with the name's addresses (with the port asked) or
/// why there are none (`NotFound` for a name without addresses, `TimedOut`, other).
pub type Done = Box<dyn FnOnce(io::Result<Vec<SocketAddr>>) + Send>;

/// A resolver of our own: looks names up and calls back.
pub trait NameResolver: Send + Sync {
    /// Looks `host` up; calls `done` once with its addresses (each with `port`): at once on this
    /// thread when the answer is known (cached), otherwise later on another thread.
    fn lookup(&self, host: &str, port: u16, done: Done);
}

/// Builds the resolver for a `[names]` table (its `resolvers` not empty).
pub type Factory = fn(&NamesConfig) -> io::Result<Arc<dyn NameResolver>>;

static FACTORY: OnceLock<Factory> = OnceLock::new();

/// The resolver built for the config last asked about, shared until the table changes (reload).
type Current = Option<(NamesConfig, Arc<dyn NameResolver>)>;
static CURRENT: Mutex<Current> = Mutex::new(None);

/// Installs the process's resolver implementation (the adapters call `socks4_dns::install`);
/// the first call wins.
pub fn install(factory: Factory) {
    let _ = FACTORY.set(factory);
}

/// The resolver for `names`: `None` when it names no resolver (use the system's), else the one
/// built for this table (built on first use, rebuilt when a reload changes the table).
///
/// # Errors
/// When none was [`install`]ed, or it could not be started.
pub fn resolver_for(names: &NamesConfig) -> Option<io::Result<Arc<dyn NameResolver>>> {
    if names.resolvers.is_empty() {
        return None;
    }
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, resolver)) = current.as_ref().filter(|(config, _)| config == names) {
        return Some(Ok(Arc::clone(resolver)));
    }
    let Some(factory) = FACTORY.get() else {
        return Some(Err(io::Error::other("no resolver implementation in this build (socks4-dns)")));
    };
    Some(factory(names).inspect(|resolver| *current = Some((names.clone(), Arc::clone(resolver)))))
}

/// A lookup's answer once known, and who to wake for it.
type Slot = Arc<Mutex<(Option<io::Result<Vec<SocketAddr>>>, Option<Waker>)>>;

/// A lookup of a [`NameResolver`] as a runtime-neutral [`Future`] (for the async driver).
pub struct Lookup {
    slot: Slot,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup").finish_non_exhaustive()
    }
}

impl Lookup {
    /// Starts looking `host` up with `resolver`.
    pub fn start(resolver: &dyn NameResolver, host: &str, port: u16) -> Self {
        let slot: Slot = Arc::new(Mutex::new((None, None)));
        let answer = Arc::clone(&slot);
        resolver.lookup(
            host,
            port,
            Box::new(move |result| {
                let mut slot = answer.lock().unwrap_or_else(PoisonError::into_inner);
                slot.0 = Some(result);
                if let Some(waker) = slot.1.take() {
                    drop(slot);
                    waker.wake();
                }
            }),
        );
        Self { slot }
    }
}

impl Future for Lookup {
    type Output = io::Result<Vec<SocketAddr>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.0.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

// ---- metrics ------------------------------------------------------------------------------------

/// Our resolver's counters, for the metrics (the process's: they outlive reloads).
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Names answered from the cache.
    pub hits: AtomicU64,
    /// Names asked of the name servers.
    pub misses: AtomicU64,
    /// The lookup latency of each name server configured so far (a fixed label set: the
    /// configured servers).
    servers: Mutex<Vec<(SocketAddr, Arc<Latency>)>>,
}

impl DnsStats {
    /// The latency histogram of `server` (created on first use).
    pub fn latency_of(&self, server: SocketAddr) -> Arc<Latency> {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, l)) = servers.iter().find(|(s, _)| *s == server) {
            return Arc::clone(l);
        }
        let latency = Arc::new(Latency::default());
        servers.push((server, Arc::clone(&latency)));
        latency
    }

    /// Each name server's latency histogram: cumulative bucket counts (upper bounds
    /// [`BUCKETS`], then infinity), the count, and the sum of the lookups' times in seconds.
    pub fn latencies(&self) -> Vec<ServerLatency> {
        let servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        servers
            .iter()
            .map(|(server, l)| {
                let mut total = 0;
                let buckets = BUCKETS
                    .iter()
                    .chain([&f64::INFINITY])
                    .zip(&l.buckets)
                    .map(|(&bound, n)| {
                        total += n.load(Relaxed);
                        (bound, total)
                    })
                    .collect();
                (*server, buckets, total, Duration::from_nanos(l.sum_nanos.load(Relaxed)).as_secs_f64())
            })
            .collect()
    }
}

/// One name server's latency histogram: the server, cumulative buckets `(upper bound, count)`,
/// the count and the sum in seconds.
pub type ServerLatency = (SocketAddr, Vec<(f64, u64)>, u64, f64);

/// The process's resolver counters.
pub fn stats() -> &'static DnsStats {
    static STATS: OnceLock<DnsStats> = OnceLock::new();
    STATS.get_or_init(DnsStats::default)
}

/// One name server's lookup latency: per-bucket counts (not cumulative) and the sum.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    /// Counts one lookup that took `d`.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}
