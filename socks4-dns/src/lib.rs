//! The socks4 servers' own resolver (`--resolver ADDR[:PORT]`, the `[names]` table): SOCKS4a
//! names asked of the configured name servers with [hickory-resolver](https://docs.rs/hickory-resolver)
//! instead of the system's `getaddrinfo`, behind a bounded cache that honours the answers' TTLs.
//!
//! The adapters call [`install`] at start; socks4-server then builds a [`Dns`] for a config that
//! names resolvers ([`socks4_server::names::resolver_for`]) and the drivers ask it through the
//! runtime-neutral [`NameResolver`] trait: the async driver awaits a
//! [`Lookup`](socks4_server::names::Lookup), socks4-std's poller gets a callback. The resolver
//! runs on one thread of its own (a tokio current-thread runtime, hickory's native one, private to
//! this crate: socks4-server and the async driver stay free of any runtime). A cached answer is
//! given at once, on the asking thread, without a hop.
//!
//! - Name servers are tried in the configured order: over UDP, over TCP when an answer is
//!   truncated; the next one when one times out or fails (not when it says the name does not
//!   exist). `A` and `AAAA` are asked together.
//! - The cache holds at most `cache_entries` names (the oldest entry goes first); an answer is
//!   kept for its TTL clamped into `[min_ttl, max_ttl]`; a name that does not exist (or has no
//!   address) for its negative TTL (the SOA's), at most `negative_ttl`. Failures (timeouts,
//!   refusals) are not cached.
//! - Bounded: at most [`MAX_QUEUED`] lookups wait for the thread and [`MAX_IN_FLIGHT`] are asked at
//!   once; past that a lookup fails at once (the client gets 91) rather than queueing without end.
//! - Names are looked up as absolute names (no search domains), never in `/etc/hosts`.
//! - Metrics: cache hits and misses, lookup latency by name server
//!   ([`socks4_server::names::stats`]).
//!
//! Names routed to a `socks4a://` parent never get here (the decisions forward them unresolved).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use socks4_server::config::NamesConfig;
use socks4_server::names::{Done, Latency, NameResolver, stats};

/// Most lookups waiting for the resolver's thread.
pub const MAX_QUEUED: usize = 1024;

/// Most lookups the resolver's thread asks at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// Makes the servers' `--resolver` use this crate (socks4-server knows only the trait).
pub fn install() {
    socks4_server::names::install(|config| Dns::start(config).map(|dns| dns as Arc<dyn NameResolver>));
}

/// [`install`]s this crate and starts the resolver `names` asks for, if any (an adapter's start:
/// a resolver that cannot start fails the server's start, not each lookup).
///
/// # Errors
/// When the resolver's thread or runtime cannot be started.
pub fn install_for(names: &NamesConfig) -> io::Result<()> {
    install();
    socks4_server::names::resolver_for(names).transpose().map(drop)
}

/// Our resolver: the name servers' thread and the cache (see the [module docs](self)). Shared
/// by every connection of a config snapshot; the thread ends with the last clone.
pub struct Dns {
    jobs: tokio::sync::mpsc::Sender<Job>,
    cache: Mutex<Cache>,
    ttl: Ttl,
    /// Itself, for the lookups in flight to cache their answers.
    me: Weak<Dns>,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// The TTL clamps.
#[derive(Debug, Clone, Copy)]
struct Ttl {
    min: Duration,
    max: Duration,
    negative: Duration,
}

/// What the cache and a lookup answer: the addresses, or that the name has none.
type Answer = Result<Arc<[IpAddr]>, Failure>;

/// Why a lookup gave no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The name does not exist, or has no address (cacheable).
    NoAddress,
    /// Every name server timed out.
    TimedOut,
    /// Every name server failed otherwise.
    Failed,
}

impl Failure {
    fn to_io(self) -> io::Error {
        match self {
            Self::NoAddress => io::Error::new(io::ErrorKind::NotFound, "no address"),
            Self::TimedOut => io::Error::new(io::ErrorKind::TimedOut, "name servers timed out"),
            Self::Failed => io::Error::other("name servers failed"),
        }
    }
}

/// One lookup for the resolver's thread.
struct Job {
    name: String,
    port: u16,
    /// The resolver, to cache the answer (weak: a lookup does not keep a replaced one alive).
    dns: Weak<Dns>,
    done: Done,
}

impl Dns {
    /// Starts a resolver for `config`'s name servers (which must not be empty) and cache.
    ///
    /// # Errors
    /// When the resolver's thread or runtime cannot be started.
    pub fn start(config: &NamesConfig) -> io::Result<Arc<Self>> {
        let (jobs, rx) = tokio::sync::mpsc::channel(MAX_QUEUED);
        let servers = config.resolvers.clone();
        let stats = servers.iter().map(|s| stats().latency_of(*s)).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("socks4-dns".into()).spawn(move || serve(&runtime, rx, &servers, stats))?;
        let cache = Mutex::new(Cache::new(config.cache_entries));
        let ttl = Ttl { min: config.min_ttl, max: config.max_ttl, negative: config.negative_ttl };
        Ok(Arc::new_cyclic(|me| Self { jobs, cache, ttl, me: me.clone() }))
    }

    /// Looks `host` up (its addresses with `port`): from the cache when it holds the name, else
    /// from the name servers; `done` gets the answer.
    fn lookup_name(self: &Arc<Self>, host: &str, port: u16, done: Done) {
        let name = normalize(host);
        let now = Instant::now();
        let cached = lock(&self.cache).get(&name, now);
        if let Some(answer) = cached {
            stats().hits.fetch_add(1, Relaxed);
            return done(with_port(&answer, port));
        }
        stats().misses.fetch_add(1, Relaxed);
        let job = Job { name, port, dns: Arc::downgrade(self), done };
        if let Err(e) = self.jobs.try_send(job) {
            let job = match e {
                tokio::sync::mpsc::error::TrySendError::Full(job)
                | tokio::sync::mpsc::error::TrySendError::Closed(job) => job,
            };
            (job.done)(Err(io::Error::other("the resolver is busy")));
        }
    }

    /// Keeps an answer in the cache for as long as its TTL (clamped) says.
    fn remember(&self, name: &str, answer: &Answer, ttl: Option<Duration>, now: Instant) {
        let keep = match (answer, ttl) {
            (Ok(_), Some(ttl)) => ttl.clamp(self.ttl.min, self.ttl.max.max(self.ttl.min)),
            (Err(Failure::NoAddress), Some(ttl)) => ttl.min(self.ttl.negative),
            _ => return,
        };
        if !keep.is_zero() {
            lock(&self.cache).insert(name.to_owned(), answer.clone(), now + keep);
        }
    }
}

/// The name as asked of the name servers and kept in the cache: lower case, absolute.
fn normalize(host: &str) -> String {
    let mut name = host.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// The resolver's thread: answers each job on its runtime, one task per lookup.
fn serve(
    runtime: &tokio::runtime::Runtime,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    servers: &[SocketAddr],
    stats: Vec<Arc<Latency>>,
) {
    let local = tokio::task::LocalSet::new();
    local.block_on(runtime, async move {
        let resolvers: Arc<[(TokioResolver, Arc<Latency>)]> =
            servers.iter().zip(stats).map(|(&server, latency)| (resolver(server), latency)).collect();
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(job) = rx.recv().await {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
            let resolvers = Arc::clone(&resolvers);
            tokio::task::spawn_local(async move {
                let (answer, ttl) = ask(&resolvers, &job.name).await;
                drop(permit);
                if let Some(dns) = job.dns.upgrade() {
                    dns.remember(&job.name, &answer, ttl, Instant::now());
                }
                (job.done)(with_port(&answer, job.port));
            });
        }
    });
}

/// A hickory resolver asking `server` alone, over UDP and (for truncated answers) TCP, with no
/// cache of its own (ours counts its hits), no search domains and no hosts file.
fn resolver(server: SocketAddr) -> TokioResolver {
    let mut config = ResolverConfig::from_parts(None, Vec::new(), Vec::<NameServerConfig>::new());
    config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
    config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
    let mut opts = ResolverOpts::default();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 1;
    opts.ndots = 0;
    TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).with_options(opts).build()
}

/// Asks the name servers in order until one answers (an address, or that there is none).
async fn ask(resolvers: &[(TokioResolver, Arc<Latency>)], name: &str) -> (Answer, Option<Duration>) {
    let mut failure = Failure::Failed;
    for (resolver, latency) in resolvers {
        let start = Instant::now();
        let result = resolver.lookup_ip(name).await;
        latency.observe(start.elapsed());
        match result {
            Ok(found) => {
                let ttl = found.valid_until().saturating_duration_since(Instant::now());
                let addrs: Arc<[IpAddr]> = found.iter().collect();
                if addrs.is_empty() {
                    return (Err(Failure::NoAddress), Some(ttl));
                }
                return (Ok(addrs), Some(ttl));
            }
            Err(e) => match no_address(&e) {
                Some(negative_ttl) => return (Err(Failure::NoAddress), Some(negative_ttl)),
                None => failure = if is_timeout(&e) { Failure::TimedOut } else { Failure::Failed },
            },
        }
    }
    (Err(failure), None)
}

/// For "no such name" or "no address": the negative TTL (the SOA's, zero without one).
fn no_address(e: &ResolveError) -> Option<Duration> {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { negative_ttl, .. }) => {
            Some(Duration::from_secs(negative_ttl.unwrap_or(0).into()))
        }
        _ => None,
    }
}

fn is_timeout(e: &ResolveError) -> bool {
    matches!(e.proto().map(|p| p.kind()), Some(ProtoErrorKind::Timeout))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- the cache ----------------------------------------------------------------------------------

/// At most `capacity` names, each until it expires; the oldest insert goes first when full.
#[derive(Debug)]
struct Cache {
    capacity: usize,
    entries: HashMap<String, (Answer, Instant, u64)>,
    /// Insert order (name, insert number); stale pairs are skipped and compacted away.
    order: VecDeque<(String, u64)>,
    inserts: u64,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: HashMap::new(), order: VecDeque::new(), inserts: 0 }
    }

    fn get(&mut self, name: &str, now: Instant) -> Option<Answer> {
        match self.entries.get(name) {
            Some((answer, expires, _)) if now < *expires => Some(answer.clone()),
            Some(_) => {
                self.entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, name: String, answer: Answer, expires: Instant) {
        self.inserts += 1;
        let n = self.inserts;
        self.order.push_back((name.clone(), n));
        self.entries.insert(name, (answer, expires, n));
        while self.entries.len() > self.capacity {
            let Some((old, m)) = self.order.pop_front() else { break };
            if self.entries.get(&old).is_some_and(|e| e.2 == m) {
                self.entries.remove(&old);
            }
        }
        if self.order.len() > 2 * self.capacity + 16 {
            let entries = &self.entries;
            self.order.retain(|(name, m)| entries.get(name).is_some_and(|e| e.2 == *m));
        }
    }
}

impl NameResolver for Dns {
    fn lookup(&self, host: &str, port: u16, done: Done) {
        match self.me.upgrade() {
            Some(me) => me.lookup_name(host, port, done),
            None => done(Err(io::Error::other("the resolver stopped"))),
        }
    }
}

fn with_port(answer: &Answer, port: u16) -> io::Result<Vec<SocketAddr>> {
    match answer {
        Ok(addrs) => Ok(addrs.iter().map(|&ip| SocketAddr::new(ip, port)).collect()),
        Err(failure) => Err(failure.to_io()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_expires() {
        let t0 = Instant::now();
        let mut cache = Cache::new(2);
        let one: Answer = Ok(Arc::from(vec![IpAddr::from([192, 0, 2, 1])]));
        cache.insert("a.".into(), one.clone(), t0 + Duration::from_secs(10));
        cache.insert("b.".into(), Err(Failure::NoAddress), t0 + Duration::from_secs(10));
        assert_eq!(cache.get("a.", t0), Some(one.clone()));
        cache.insert("c.".into(), one.clone(), t0 + Duration::from_secs(1));
        assert_eq!(cache.get("a.", t0), None, "the oldest went first");
        assert_eq!(cache.get("b.", t0), Some(Err(Failure::NoAddress)));
        assert_eq!(cache.get("c.", t0 + Duration::from_secs(1)), None, "expired");
        for i in 0..1000 {
            cache.insert("b.".into(), one.clone(), t0 + Duration::from_secs(i));
        }
        assert!(cache.order.len() <= 2 * 2 + 16 + 1, "{}", cache.order.len());
        assert_eq!(normalize("Example.COM"), "example.com.");
    }
}
