//! Prometheus metrics, counted per worker without a shared lock and summed at scrape time.
//!
//! An adapter creates one [`Metrics`] at bind ([`Metrics::new`], off unless `--metrics` is set),
//! marks each worker thread with [`Metrics::enter_worker`], and gives every connection a
//! [`ConnMeter`] that it moves through its [phases](Phase) and finishes with the connection's log
//! line. The binary serves them with an [`Endpoint`] (`/metrics`, `/healthz`, `/readyz`).
//!
//! ```text
//! worker start:  metrics.enter_worker(i)                         // this thread is worker i
//! accept:        metrics.accept_error() on an error that pauses accepting
//! conn start:    let mut meter = ConnMeter::start();             // on the worker's thread
//! resolve:       meter.enter(Phase::Resolving) … meter.resolved(ok)
//! connect:       meter.enter(Phase::Connecting) … meter.connected() on success
//! each reply:    meter.replied(code)                            // ends resolving/connecting
//! BIND wait:     meter.enter(Phase::BindWait);   relay: meter.enter(Phase::Relaying)
//! end:           meter.close(reason) where it is typed; meter.finish(command, up, down, errored)
//!                (in the log line's Drop); dropping the meter leaves its phase
//! shutdown:      metrics.set_draining()                          // /readyz answers 503
//! reload:        metrics.reloaded(ok)
//! ```
//!
//! Each worker's counters sit in their own cache lines and are only written by that worker's
//! thread (a [`ConnMeter`] cannot leave the thread it started on), so an increment is a relaxed
//! load and store, with no locked instruction; the scrape reads them. Bytes are added once per
//! connection, at its end, and the clock is read only where a time is measured. With metrics off
//! a [`ConnMeter`] holds no counters and each call is one branch.
//!
//! ```
//! use socks4_server::metrics::{ConnMeter, Metrics, Phase};
//! let metrics = Metrics::new(2, true);
//! metrics.enter_worker(1);
//! let mut meter = ConnMeter::start();
//! meter.enter(Phase::Relaying);
//! assert_eq!(metrics.active(Phase::Relaying), 1);
//! assert_eq!(meter.worker(), Some(1));
//! drop(meter);
//! assert_eq!(metrics.active(Phase::Relaying), 0);
//! let text = metrics.encode();
//! assert!(text.contains("socks4_worker_connections_total{worker=\"1\"} 1\n"), "{text}");
//! ```

mod endpoint;

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use socks4_core::{CloseReason, Command, RelayEnd, ReplyCode, Side};

pub use endpoint::{
    Endpoint, EndpointError, FIRST_BYTE_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD, MAX_PER_CLIENT, METRICS_THREADS,
    READ_TIMEOUT, WRITE_TIMEOUT, respond as endpoint_answer,
};

use crate::limits::{Limiter, Refusal};

/// Where a connection is. `Handshake` covers reading the request, ident and the users check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Reading and deciding the request.
    Handshake,
    /// Resolving a SOCKS4a name.
    Resolving,
    /// Connecting to the destination.
    Connecting,
    /// BIND: waiting for the peer.
    BindWait,
    /// Relaying bytes both ways.
    Relaying,
}

impl Phase {
    const ALL: [Self; 5] = [Self::Handshake, Self::Resolving, Self::Connecting, Self::BindWait, Self::Relaying];

    /// The label value, e.g. `bind_wait`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Resolving => "resolving",
            Self::Connecting => "connecting",
            Self::BindWait => "bind_wait",
            Self::Relaying => "relaying",
        }
    }
}

/// Why a connection ended, as a bounded label (the log line has the full text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Close {
    /// The relay ended with both directions closed.
    Ok,
    /// The relay was idle for the idle timeout.
    IdleTimeout,
    /// A side reset its connection during the relay.
    Reset(Side),
    /// A side failed otherwise during the relay.
    Error(Side),
    /// The client closed before its request was whole.
    ClientEof,
    /// The client left during the handshake.
    ClientGone,
    /// The handshake timed out.
    HandshakeTimeout,
    /// The request was malformed.
    Invalid,
    /// Refused by the rules, the users file or the request policy.
    Denied,
    /// The SOCKS4a name did not resolve.
    ResolveFailed,
    /// The outgoing connection failed.
    ConnectFailed,
    /// BIND: listening or accepting failed, or no peer came in time, or the wrong one.
    BindFailed,
    /// Ident: identd unreachable, or it did not confirm the user.
    IdentFailed,
    /// Still open when the shutdown grace period ended.
    Shutdown,
    /// An I/O error on the client's connection during the handshake, or an internal error.
    IoError,
}

impl Close {
    const ALL: [Self; 17] = [
        Self::Ok,
        Self::IdleTimeout,
        Self::Reset(Side::Client),
        Self::Reset(Side::Upstream),
        Self::Error(Side::Client),
        Self::Error(Side::Upstream),
        Self::ClientEof,
        Self::ClientGone,
        Self::HandshakeTimeout,
        Self::Invalid,
        Self::Denied,
        Self::ResolveFailed,
        Self::ConnectFailed,
        Self::BindFailed,
        Self::IdentFailed,
        Self::Shutdown,
        Self::IoError,
    ];
    const COUNT: usize = Self::ALL.len();

    fn index(self) -> usize {
        match self {
            Self::Ok => 0,
            Self::IdleTimeout => 1,
            Self::Reset(Side::Client) => 2,
            Self::Reset(Side::Upstream) => 3,
            Self::Error(Side::Client) => 4,
            Self::Error(Side::Upstream) => 5,
            Self::ClientEof => 6,
            Self::ClientGone => 7,
            Self::HandshakeTimeout => 8,
            Self::Invalid => 9,
            Self::Denied => 10,
            Self::ResolveFailed => 11,
            Self::ConnectFailed => 12,
            Self::BindFailed => 13,
            Self::IdentFailed => 14,
            Self::Shutdown => 15,
            Self::IoError => 16,
        }
    }

    /// The label value, e.g. `upstream_reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::IdleTimeout => "idle_timeout",
            Self::Reset(Side::Client) => "client_reset",
            Self::Reset(Side::Upstream) => "upstream_reset",
            Self::Error(Side::Client) => "client_error",
            Self::Error(Side::Upstream) => "upstream_error",
            Self::ClientEof => "client_eof",
            Self::ClientGone => "client_gone",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Invalid => "invalid",
            Self::Denied => "denied",
            Self::ResolveFailed => "resolve_failed",
            Self::ConnectFailed => "connect_failed",
            Self::BindFailed => "bind_failed",
            Self::IdentFailed => "ident_failed",
            Self::Shutdown => "shutdown",
            Self::IoError => "io_error",
        }
    }
}

impl From<RelayEnd> for Close {
    fn from(end: RelayEnd) -> Self {
        match end {
            RelayEnd::Closed => Self::Ok,
            RelayEnd::Idle => Self::IdleTimeout,
            RelayEnd::Reset(side) => Self::Reset(side),
            RelayEnd::Error(side) => Self::Error(side),
            _ => Self::IoError,
        }
    }
}

impl From<&CloseReason> for Close {
    fn from(reason: &CloseReason) -> Self {
        match reason {
            CloseReason::ClientEof => Self::ClientEof,
            CloseReason::ClientGone => Self::ClientGone,
            CloseReason::HandshakeTimeout => Self::HandshakeTimeout,
            CloseReason::Invalid(_) => Self::Invalid,
            CloseReason::Denied(_)
            | CloseReason::Forbidden(_)
            | CloseReason::AddressOnly(_)
            | CloseReason::BindByName
            | CloseReason::UserRefused(_) => Self::Denied,
            CloseReason::ResolveFailed(_) => Self::ResolveFailed,
            CloseReason::ConnectFailed(_) => Self::ConnectFailed,
            CloseReason::BindFailed(_) | CloseReason::BindTimeout | CloseReason::WrongPeer(_) => Self::BindFailed,
            CloseReason::IdentUnavailable(_) | CloseReason::IdentMismatch | CloseReason::IdentRefused(_) => {
                Self::IdentFailed
            }
            _ => Self::IoError,
        }
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets; a last `+Inf` bucket follows.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One latency histogram of one worker: per-bucket counts (not cumulative) and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Adds `n` to a counter that only the calling thread writes (see [`WorkerCounters`]): a plain
/// load and store, no locked instruction; readers see the old or the new value.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Adds `n` to a gauge that only the calling thread writes.
fn bump_gauge(gauge: &AtomicI64, n: i64) {
    gauge.store(gauge.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        bump(&self.buckets[i], 1);
        bump(&self.sum_nanos, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Reply codes in the order of the `requests` table.
const REPLIES: [ReplyCode; 4] =
    [ReplyCode::Granted, ReplyCode::Rejected, ReplyCode::IdentUnreachable, ReplyCode::IdentMismatch];
/// Commands in the order of the `requests` table; the last is a malformed request's.
const COMMANDS: [&str; 3] = ["connect", "bind", "unknown"];

/// One worker's counters, on cache lines of their own, written only by the one thread that
/// entered that worker ([`Metrics::enter_worker`]) through its [`ConnMeter`]s, which are not
/// `Send`. (Were two threads to write one, increments could be lost, never memory safety.)
#[derive(Debug, Default)]
#[repr(align(128))]
struct WorkerCounters {
    connections: AtomicU64,
    active: [AtomicI64; Phase::ALL.len()],
    requests: [[AtomicU64; REPLIES.len()]; COMMANDS.len()],
    closed: [AtomicU64; Close::COUNT],
    /// Client → destination, destination → client.
    bytes: [AtomicU64; 2],
    handshake: Histogram,
    connect: Histogram,
    resolve: Histogram,
    resolve_failures: AtomicU64,
    /// Whole requests by protocol: SOCKS4 (by address), SOCKS4a (by name).
    protocols: [AtomicU64; 2],
}

impl WorkerCounters {
    fn active(&self, phase: Phase) -> &AtomicI64 {
        &self.active[phase as usize]
    }
}

/// A server's metrics: per-worker counters plus the few shared ones (accept errors, reloads,
/// readiness). Cheap to share (`Arc`); see the [module docs](self).
#[derive(Debug)]
pub struct Metrics {
    /// `None` when metrics are off: connections then count nothing.
    workers: Option<Box<[Arc<WorkerCounters>]>>,
    /// The worker count (also when off: the log line names the worker).
    worker_count: usize,
    accept_errors: AtomicU64,
    reloads: [AtomicU64; 2],
    draining: AtomicBool,
    /// Where the admission refusals are read at scrape time.
    refusals: OnceLock<Arc<dyn RefusalTotals>>,
}

/// Where the metrics read the admission refusals (by reason) at scrape time: a [`Limiter`], or
/// whatever knows the current one (the live config, whose limiter a reload may replace; its
/// totals carry over).
pub trait RefusalTotals: fmt::Debug + Send + Sync {
    /// Connections refused for `reason` so far.
    fn total(&self, reason: Refusal) -> u64;
}

impl RefusalTotals for Limiter {
    fn total(&self, reason: Refusal) -> u64 {
        self.refusals().total(reason)
    }
}

thread_local! {
    /// The calling worker's counters when metrics are on (which worker it is: [`crate::worker`]).
    static COUNTERS: RefCell<Option<Arc<WorkerCounters>>> = const { RefCell::new(None) };
}

impl Metrics {
    /// Metrics for a pool of `workers`; `on` is whether anything is counted (`--metrics` given).
    pub fn new(workers: usize, on: bool) -> Arc<Self> {
        let workers_table = on.then(|| (0..workers.max(1)).map(|_| Arc::default()).collect());
        Arc::new(Self {
            workers: workers_table,
            worker_count: workers.max(1),
            accept_errors: AtomicU64::new(0),
            reloads: Default::default(),
            draining: AtomicBool::new(false),
            refusals: OnceLock::new(),
        })
    }

    /// Whether counting is on.
    pub fn is_on(&self) -> bool {
        self.workers.is_some()
    }

    /// Marks the calling thread as worker `index` (taken modulo the worker count): the
    /// [`ConnMeter`]s started on it count in that worker's counters and log `worker=index`. Each
    /// index belongs to one thread: a worker's counters have a single writer.
    pub fn enter_worker(&self, index: usize) {
        let index = index % self.worker_count;
        crate::worker::enter(index);
        let counters = self.workers.as_ref().map(|w| Arc::clone(&w[index]));
        COUNTERS.with(|c| *c.borrow_mut() = counters);
    }

    /// Reads the admission refusals (by reason) from this limiter at scrape time.
    pub fn watch_limiter(&self, limiter: &Arc<Limiter>) {
        self.watch_refusals(Arc::clone(limiter) as Arc<dyn RefusalTotals>);
    }

    /// Reads the admission refusals (by reason) from `source` at scrape time (the first source
    /// set stays).
    pub fn watch_refusals(&self, source: Arc<dyn RefusalTotals>) {
        let _ = self.refusals.set(source);
    }

    /// Counts an accept error that paused accepting (EMFILE and the like).
    pub fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
    }

    /// Counts a configuration reload: `ok` false when the new file was refused and the old
    /// configuration kept (`socks4_reloads_total{result="ok"|"failed"}`).
    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// Shutdown began: from now on `/readyz` answers 503.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Whether the server still accepts connections (`/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Relaxed)
    }

    /// Connections in `phase` now, all workers (0 when off).
    pub fn active(&self, phase: Phase) -> i64 {
        self.sum(|w| w.active(phase).load(Relaxed))
    }

    fn sum<T: std::iter::Sum>(&self, f: impl Fn(&WorkerCounters) -> T) -> T {
        self.workers.iter().flat_map(|w| w.iter()).map(|w| f(w)).sum()
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn encode(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut text = String::new();
        // Writing to a String cannot fail, and the collector returns no error of its own.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// One series of a metric family: its labels and its value.
type Series<'a, V> = (&'a [(&'a str, &'a str)], V);

fn counters(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, series: &[Series<'_, u64>]) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, series: &[Series<'_, i64>]) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    workers: &[Arc<WorkerCounters>],
    which: impl Fn(&WorkerCounters) -> &Histogram,
) -> fmt::Result {
    let mut buckets: Vec<(f64, u64)> = BUCKETS.iter().chain([&f64::INFINITY]).map(|&b| (b, 0)).collect();
    let mut sum_nanos = 0u64;
    for w in workers {
        let h = which(w);
        for (slot, n) in buckets.iter_mut().zip(&h.buckets) {
            slot.1 += n.load(Relaxed);
        }
        sum_nanos = sum_nanos.wrapping_add(h.sum_nanos.load(Relaxed));
    }
    let count = buckets.iter().map(|b| b.1).sum();
    let sum = Duration::from_nanos(sum_nanos).as_secs_f64();
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// Our resolver's (`--resolver`): cache hits and misses, each name server's lookup latency.
fn dns_metrics(e: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let dns = crate::names::stats();
    counters(
        e,
        "socks4_dns_cache",
        "SOCKS4a names our resolver (--resolver) answered from its cache (hit) or asked of a name server (miss).",
        &[(&[("result", "hit")], dns.hits.load(Relaxed)), (&[("result", "miss")], dns.misses.load(Relaxed))],
    )?;
    let latencies = dns.latencies();
    let names: Vec<String> = latencies.iter().map(|(server, ..)| server.to_string()).collect();
    let mut metric = e.encode_descriptor(
        "socks4_dns_lookup_duration_seconds",
        "Time for a name server of our resolver to answer, by name server.",
        None,
        MetricType::Histogram,
    )?;
    for ((_, buckets, count, sum), name) in latencies.iter().zip(&names) {
        let labels: [(&str, &str); 1] = [("resolver", name.as_str())];
        metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let empty: &[Arc<WorkerCounters>] = &[];
        let workers = self.workers.as_deref().unwrap_or(empty);
        let load = |a: &AtomicU64| a.load(Relaxed);
        let numbers: Vec<String> = (0..workers.len()).map(|i| i.to_string()).collect();
        let worker_labels: Vec<[(&str, &str); 1]> = numbers.iter().map(|n| [("worker", n.as_str())]).collect();

        let accepted = self.sum(|w| load(&w.connections));
        counters(&mut e, "socks4_connections_accepted", "Connections admitted and served.", &[(&[], accepted)])?;
        let per_worker: Vec<Series<'_, u64>> =
            workers.iter().zip(&worker_labels).map(|(w, l)| (&l[..], load(&w.connections))).collect();
        counters(
            &mut e,
            "socks4_worker_connections",
            "Connections served, by worker (the round-robin spread).",
            &per_worker,
        )?;
        let active: Vec<Series<'_, i64>> = workers
            .iter()
            .zip(&worker_labels)
            .map(|(w, l)| (&l[..], w.active.iter().map(|a| a.load(Relaxed)).sum()))
            .collect();
        gauges(&mut e, "socks4_worker_active_connections", "Connections open now, by worker.", &active)?;

        let phase_labels = Phase::ALL.map(|p| [("phase", p.as_str())]);
        let by_phase: Vec<Series<'_, i64>> =
            Phase::ALL.iter().zip(&phase_labels).map(|(&p, l)| (&l[..], self.active(p))).collect();
        gauges(&mut e, "socks4_active_connections", "Connections open now, by phase.", &by_phase)?;

        let refusal_labels = Refusal::ALL.map(|r| [("reason", r.label())]);
        let refused: Vec<Series<'_, u64>> = Refusal::ALL
            .iter()
            .zip(&refusal_labels)
            .map(|(&r, l)| (&l[..], self.refusals.get().map_or(0, |source| source.total(r))))
            .collect();
        counters(
            &mut e,
            "socks4_connections_refused",
            "Connections closed at accept, or BINDs refused (reply 91), by a limit, by reason.",
            &refused,
        )?;
        counters(
            &mut e,
            "socks4_accept_errors",
            "Accept errors that paused accepting (EMFILE and the like).",
            &[(&[], load(&self.accept_errors))],
        )?;

        let codes: Vec<String> = REPLIES.iter().map(|r| r.code().to_string()).collect();
        let request_labels: Vec<[(&str, &str); 2]> = COMMANDS
            .iter()
            .flat_map(|&c| codes.iter().map(move |code| [("command", c), ("reply", code.as_str())]))
            .collect();
        let requests: Vec<Series<'_, u64>> = request_labels
            .iter()
            .enumerate()
            .map(|(i, l)| (&l[..], self.sum(|w| load(&w.requests[i / REPLIES.len()][i % REPLIES.len()]))))
            .collect();
        counters(&mut e, "socks4_requests", "Requests answered, by command and (last) reply code.", &requests)?;
        let protocols: [Series<'_, u64>; 2] = [
            (&[("protocol", "socks4")], self.sum(|w| load(&w.protocols[0]))),
            (&[("protocol", "socks4a")], self.sum(|w| load(&w.protocols[1]))),
        ];
        counters(
            &mut e,
            "socks4_protocol_requests",
            "Whole requests by protocol: socks4 (an IP address), socks4a (a host name).",
            &protocols,
        )?;
        // Outgoing sources (`--outgoing`, rules' `out`): the configured ones only, the process's.
        let sources = crate::egress::totals();
        let source_labels: Vec<[(&str, &str); 1]> = sources.iter().map(|(l, _)| [("source", l.as_str())]).collect();
        let by_source: Vec<Series<'_, u64>> =
            source_labels.iter().zip(&sources).map(|(l, (_, n))| (&l[..], *n)).collect();
        counters(
            &mut e,
            "socks4_outgoing_connections",
            "Outgoing connections made from a configured source (an address, `dev IFACE`, or `same`), by source.",
            &by_source,
        )?;

        let close_labels: Vec<[(&str, &str); 1]> = Close::ALL.iter().map(|c| [("reason", c.as_str())]).collect();
        let closed: Vec<Series<'_, u64>> =
            close_labels.iter().enumerate().map(|(i, l)| (&l[..], self.sum(|w| load(&w.closed[i])))).collect();
        counters(&mut e, "socks4_connections_closed", "Connections ended, by reason.", &closed)?;

        let bytes: [Series<'_, u64>; 2] = [
            (&[("direction", "up")], self.sum(|w| load(&w.bytes[0]))),
            (&[("direction", "down")], self.sum(|w| load(&w.bytes[1]))),
        ];
        counters(
            &mut e,
            "socks4_relayed_bytes",
            "Bytes relayed (up: client to destination, down: back), added when a connection ends.",
            &bytes,
        )?;

        histogram(&mut e, "socks4_handshake_duration_seconds", "Time from accept to the first reply.", workers, |w| {
            &w.handshake
        })?;
        histogram(
            &mut e,
            "socks4_connect_duration_seconds",
            "Time to connect to the destination (successful connects).",
            workers,
            |w| &w.connect,
        )?;
        histogram(&mut e, "socks4_resolve_duration_seconds", "Time to resolve a SOCKS4a name.", workers, |w| {
            &w.resolve
        })?;
        counters(
            &mut e,
            "socks4_resolve_failures",
            "SOCKS4a names that did not resolve (no address, error or timeout).",
            &[(&[], self.sum(|w| load(&w.resolve_failures)))],
        )?;

        dns_metrics(&mut e)?;

        // Parent proxies of `via` routes (the process's registry, shared by all its servers).
        let parents = crate::upstream::Upstreams::global().stats();
        counters(
            &mut e,
            "socks4_upstream_failures",
            "Parent proxies that could not be reached on a routed connect (each failed parent counts).",
            &[(&[], parents.failures)],
        )?;
        counters(
            &mut e,
            "socks4_upstream_skips",
            "Times a parent proxy was tried last because it kept failing.",
            &[(&[], parents.skips)],
        )?;
        gauges(
            &mut e,
            "socks4_upstream_parents_down",
            "Parent proxies being skipped now (3 failures in a row, for 30 s).",
            &[(&[], i64::try_from(parents.down).unwrap_or(i64::MAX))],
        )?;
        counters(
            &mut e,
            "socks4_reloads",
            "Configuration reloads, by result (failed: the old configuration was kept).",
            &[(&[("result", "ok")], load(&self.reloads[0])), (&[("result", "failed")], load(&self.reloads[1]))],
        )?;
        gauges(
            &mut e,
            "socks4_ready",
            "1 while accepting connections, 0 once shutdown began.",
            &[(&[], i64::from(self.is_ready()))],
        )
    }
}

/// One connection's meter: its phase in the active gauges, its timings, its last reply; counted
/// into its worker's counters (nothing when metrics are off). Dropping it leaves its phase.
#[derive(Debug)]
pub struct ConnMeter {
    counters: Option<Arc<WorkerCounters>>,
    worker: Option<usize>,
    phase: Phase,
    /// Accept, and when the current phase began (only measured when counting).
    start: Option<Instant>,
    since: Option<Instant>,
    reply: Option<ReplyCode>,
    close: Option<Close>,
    finished: bool,
    /// Not `Send`: the counters' single writer is the thread the meter started on.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

/// Counts a whole request by its protocol, SOCKS4a (`socks4a`: a host name) or SOCKS4 (an
/// address), in the calling worker's counters (`socks4_protocol_requests_total{protocol=...}`;
/// nothing when metrics are off or the thread is no worker). The decisions call it once per
/// request ([`step::Decisions`](crate::step::Decisions)).
pub fn count_protocol(socks4a: bool) {
    COUNTERS.with(|c| {
        if let Some(c) = c.borrow().as_ref() {
            bump(&c.protocols[usize::from(socks4a)], 1);
        }
    });
}

/// The worker the calling thread is (see [`Metrics::enter_worker`]), for a log line written
/// without a [`ConnMeter`]; `None` on a thread that is no worker. The same as
/// [`worker::current`](crate::worker::current).
pub fn current_worker() -> Option<usize> {
    crate::worker::current()
}

impl ConnMeter {
    /// A meter that counts nothing: for a connection that is not one yet (a load balancer's,
    /// before its PROXY header names the client; [`start`](Self::start) a real one then), so a
    /// balancer's health checks are not counted as connections.
    pub fn idle() -> Self {
        Self {
            counters: None,
            worker: crate::worker::current(),
            phase: Phase::Handshake,
            start: None,
            since: None,
            reply: None,
            close: None,
            finished: true,
            _thread_bound: std::marker::PhantomData,
        }
    }

    /// A connection accepted now, in its handshake, on the calling thread's worker (see
    /// [`Metrics::enter_worker`]); counts nothing on a thread that is no worker.
    pub fn start() -> Self {
        let counters = COUNTERS.with(|c| c.borrow().clone());
        let now = counters.as_ref().map(|c| {
            bump(&c.connections, 1);
            bump_gauge(c.active(Phase::Handshake), 1);
            Instant::now()
        });
        Self {
            counters,
            worker: crate::worker::current(),
            phase: Phase::Handshake,
            start: now,
            since: now,
            reply: None,
            close: None,
            finished: false,
            _thread_bound: std::marker::PhantomData,
        }
    }

    /// The worker number for the log line.
    pub fn worker(&self) -> Option<usize> {
        self.worker
    }

    /// The last reply code sent, for the log line.
    pub fn reply(&self) -> Option<ReplyCode> {
        self.reply
    }

    /// The connection's phase now.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Moves the connection to `phase` (nothing once [finished](Self::finish)).
    pub fn enter(&mut self, phase: Phase) {
        if phase == self.phase || self.finished {
            return;
        }
        if let Some(c) = &self.counters {
            bump_gauge(c.active(self.phase), -1);
            bump_gauge(c.active(phase), 1);
            // Only the resolving and connecting phases are timed.
            if matches!(phase, Phase::Resolving | Phase::Connecting) {
                self.since = Some(Instant::now());
            }
        }
        self.phase = phase;
    }

    fn phase_time(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// A lookup begun with `enter(Phase::Resolving)` ended: observes its time, counts a failure,
    /// and goes back to the handshake phase.
    pub fn resolved(&mut self, ok: bool) {
        if let Some(c) = &self.counters {
            c.resolve.observe(self.phase_time());
            if !ok {
                bump(&c.resolve_failures, 1);
            }
        }
        self.enter(Phase::Handshake);
    }

    /// The connect begun with `enter(Phase::Connecting)` succeeded: observes its time.
    pub fn connected(&mut self) {
        if let Some(c) = &self.counters {
            c.connect.observe(self.phase_time());
        }
    }

    /// A reply went out: the first one ends the handshake's time, and any ends a resolving or
    /// connecting phase (back to the handshake until the relay or BIND wait is entered).
    pub fn replied(&mut self, code: ReplyCode) {
        if self.reply.is_none() {
            if let (Some(c), Some(start)) = (&self.counters, self.start) {
                c.handshake.observe(start.elapsed());
            }
        }
        self.reply = Some(code);
        if matches!(self.phase, Phase::Resolving | Phase::Connecting) {
            self.enter(Phase::Handshake);
        }
    }

    /// Why the connection ends; the first reason given stands.
    pub fn close(&mut self, reason: Close) {
        self.close.get_or_insert(reason);
    }

    /// Counts the ended connection once: its request (by command and last reply), why it ended
    /// (the reason given to [`close`](Self::close); else [`Close::IoError`] if it `errored`, or
    /// [`Close::Shutdown`]) and its bytes; it leaves the active gauges now (so a scrape after
    /// the log line sees it gone).
    pub fn finish(&mut self, command: Option<Command>, up: u64, down: u64, errored: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let Some(c) = &self.counters else { return };
        bump_gauge(c.active(self.phase), -1);
        if let Some(reply) = self.reply {
            let cmd = match command {
                Some(Command::Connect) => 0,
                Some(Command::Bind) => 1,
                None => 2,
            };
            if let Some(r) = REPLIES.iter().position(|&x| x == reply) {
                bump(&c.requests[cmd][r], 1);
            }
        }
        let close = self.close.unwrap_or(if errored { Close::IoError } else { Close::Shutdown });
        bump(&c.closed[close.index()], 1);
        bump(&c.bytes[0], up);
        bump(&c.bytes[1], down);
    }
}

impl Drop for ConnMeter {
    fn drop(&mut self) {
        if let (Some(c), false) = (&self.counters, self.finished) {
            bump_gauge(c.active(self.phase), -1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series}: {text}"))
    }

    #[test]
    fn a_connect_counts_everywhere_once() {
        let metrics = Metrics::new(3, true);
        let limiter = crate::ServerConfig::default().limiter(Instant::now());
        metrics.watch_limiter(&limiter);
        limiter.refusals().record(
            Instant::now(),
            Refusal::PerClientRate,
            std::net::IpAddr::from([127, 0, 0, 1]).into(),
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                metrics.enter_worker(2);
                let mut m = ConnMeter::start();
                m.enter(Phase::Resolving);
                m.resolved(true);
                m.enter(Phase::Connecting);
                m.connected();
                m.replied(ReplyCode::Granted);
                m.enter(Phase::Relaying);
                m.close(RelayEnd::Reset(Side::Upstream).into());
                m.close(Close::Ok);
                assert_eq!(metrics.active(Phase::Relaying), 1);
                m.finish(Some(Command::Connect), 10, 20, true);
                m.finish(Some(Command::Connect), 10, 20, true);
                assert_eq!(metrics.active(Phase::Relaying), 0, "finish leaves the gauges");
                m.enter(Phase::Handshake);
            });
        });
        assert_eq!(metrics.active(Phase::Relaying), 0);
        let t = metrics.encode();
        assert_eq!(value(&t, "socks4_worker_connections_total{worker=\"2\"}"), 1.0);
        assert_eq!(value(&t, "socks4_worker_connections_total{worker=\"0\"}"), 0.0);
        assert_eq!(value(&t, "socks4_requests_total{command=\"connect\",reply=\"90\"}"), 1.0);
        assert_eq!(value(&t, "socks4_connections_closed_total{reason=\"upstream_reset\"}"), 1.0);
        assert_eq!(value(&t, "socks4_relayed_bytes_total{direction=\"up\"}"), 10.0);
        assert_eq!(value(&t, "socks4_relayed_bytes_total{direction=\"down\"}"), 20.0);
        assert_eq!(value(&t, "socks4_handshake_duration_seconds_count"), 1.0);
        assert_eq!(value(&t, "socks4_connect_duration_seconds_count"), 1.0);
        assert_eq!(value(&t, "socks4_resolve_duration_seconds_bucket{le=\"+Inf\"}"), 1.0);
        assert_eq!(value(&t, "socks4_connections_refused_total{reason=\"per_client_rate\"}"), 1.0);
        assert_eq!(value(&t, "socks4_ready"), 1.0);
        metrics.reloaded(false);
        metrics.set_draining();
        let t = metrics.encode();
        assert_eq!(value(&t, "socks4_reloads_total{result=\"failed\"}"), 1.0);
        assert_eq!(value(&t, "socks4_ready"), 0.0);
    }

    #[test]
    fn parent_proxy_failures_are_exported() {
        let metrics = Metrics::new(1, true);
        let before = value(&metrics.encode(), "socks4_upstream_failures_total");
        let parent: socks4_core::rules::Parent = "socks4://127.0.0.1:9".parse().expect("a parent");
        crate::upstream::Upstreams::global().record(&parent, false, Instant::now());
        // Other tests of the process may count too: at least this one.
        assert!(value(&metrics.encode(), "socks4_upstream_failures_total") >= before + 1.0);
    }

    #[test]
    fn off_counts_nothing_but_names_the_worker() {
        let metrics = Metrics::new(2, false);
        std::thread::scope(|s| {
            s.spawn(|| {
                metrics.enter_worker(1);
                let mut m = ConnMeter::start();
                m.replied(ReplyCode::Rejected);
                m.finish(None, 1, 1, false);
                assert_eq!((m.worker(), m.reply()), (Some(1), Some(ReplyCode::Rejected)));
            });
        });
        assert!(!metrics.is_on());
        assert_eq!(value(&metrics.encode(), "socks4_connections_accepted_total"), 0.0);
    }

    #[test]
    fn every_close_has_its_own_label() {
        let mut seen: Vec<_> = Close::ALL.iter().map(|c| (c.index(), c.as_str())).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), Close::COUNT);
        assert!(seen.iter().enumerate().all(|(i, (j, _))| i == *j));
    }
}
