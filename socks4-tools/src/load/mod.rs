//! The load generator behind `socks4-load`: handshake rate, bulk throughput and held connections,
//! through a SOCKS4 server or directly to the targets (the ceiling).
//!
//! - [`run_rate`]: `concurrency` threads loop connect → CONNECT → echo → close for a duration.
//! - [`run_bulk`]: `streams` connections each push and pull `bytes` through an echo target,
//!   verified by byte count and [`sum::LaneSum`].
//! - [`run_hold`]: open `connections` relayed connections (each proven by one echo), hold them
//!   and sample the server's resident memory before and after ([`rss`]).
//!
//! Connections are spread over several loopback source addresses ([`Plan::sources`], bound with
//! `IP_BIND_ADDRESS_NO_PORT` so the port is chosen at connect time) and several echo targets
//! ([`Plan::targets`], see [`echo::EchoServer`]), so thousands of connections a second do not
//! exhaust one address's ephemeral ports with `TIME_WAIT`. Every report says how many distinct
//! source (address, port) pairs were used.

pub mod echo;
pub mod rss;
pub mod sum;

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::checksum::pattern;
use crate::wire;
use sum::LaneSum;

const STACK_SIZE: usize = 256 * 1024;
const CHUNK: usize = 64 * 1024;
/// How many error messages a report keeps (the count is always exact).
const KEPT_ERRORS: usize = 5;

/// `n` consecutive loopback addresses starting at `first` (e.g. 127.0.0.2, 127.0.0.3, …).
pub fn loopback_range(first: Ipv4Addr, n: usize) -> Vec<Ipv4Addr> {
    let base = u32::from(first);
    (0..n as u32).map(|i| Ipv4Addr::from(base.wrapping_add(i))).collect()
}

/// Where the load goes and how connections are made.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The SOCKS4 server; `None` connects straight to the targets (the ceiling).
    pub proxy: Option<SocketAddr>,
    /// Echo targets; connection `n` goes to `targets[n % len]`. Must not be empty.
    pub targets: Vec<SocketAddrV4>,
    /// Client source addresses; connection `n` binds `sources[n % len]` (port chosen at connect
    /// time). Empty: let the kernel choose. Ignored for an IPv6 destination.
    pub sources: Vec<Ipv4Addr>,
    /// The user id sent in every request.
    pub user_id: Vec<u8>,
    /// Timeout for connect and for every read and write.
    pub timeout: Duration,
}

impl Plan {
    /// A plan with user id `load` and a 10 s timeout.
    pub fn new(proxy: Option<SocketAddr>, targets: Vec<SocketAddrV4>, sources: Vec<Ipv4Addr>) -> Self {
        Plan { proxy, targets, sources, user_id: b"load".to_vec(), timeout: Duration::from_secs(10) }
    }
}

/// Counts errors and keeps the first few messages.
#[derive(Debug, Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    fn add(&self, msg: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.len() < KEPT_ERRORS {
            first.push(msg);
        }
    }

    fn take(&self) -> (u64, Vec<String>) {
        let first = std::mem::take(&mut *self.first.lock().unwrap_or_else(PoisonError::into_inner));
        (self.count.load(Ordering::Relaxed), first)
    }
}

/// Opens connections according to a [`Plan`], rotating sources and targets, and records which
/// source (address, port) pairs were used.
#[derive(Debug)]
struct Connector<'a> {
    plan: &'a Plan,
    next: AtomicU64,
    /// One 65,536-bit set per source address (or one set when the kernel chooses).
    ports: Vec<AtomicU64>,
    errors: Errors,
}

impl<'a> Connector<'a> {
    fn new(plan: &'a Plan) -> io::Result<Self> {
        if plan.targets.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no targets"));
        }
        let sets = plan.sources.len().max(1);
        let ports = (0..sets * 1024).map(|_| AtomicU64::new(0)).collect();
        Ok(Connector { plan, next: AtomicU64::new(0), ports, errors: Errors::default() })
    }

    fn next_index(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, local: SocketAddr, source: usize) {
        let bit = source * 65_536 + usize::from(local.port());
        self.ports[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
    }

    fn ports_used(&self) -> u64 {
        self.ports.iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum()
    }

    /// Connects (to the proxy, or the target) and, through a proxy, performs CONNECT to target
    /// `n % targets`.
    fn open(&self, n: u64) -> Result<TcpStream, String> {
        let plan = self.plan;
        let target = plan.targets[(n % plan.targets.len() as u64) as usize];
        let dest = plan.proxy.unwrap_or(SocketAddr::V4(target));
        let sock = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("socket: {e}"))?;
        let mut source = 0;
        if !plan.sources.is_empty() && dest.is_ipv4() {
            source = (n % plan.sources.len() as u64) as usize;
            let ip = plan.sources[source];
            bind_address_no_port(&sock).map_err(|e| format!("IP_BIND_ADDRESS_NO_PORT: {e}"))?;
            sock.bind(&SockAddr::from(SocketAddrV4::new(ip, 0))).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        sock.connect_timeout(&SockAddr::from(dest), plan.timeout).map_err(|e| format!("connect {dest}: {e}"))?;
        let mut s: TcpStream = sock.into();
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(plan.timeout)).map_err(|e| format!("set timeout: {e}"))?;
        s.set_write_timeout(Some(plan.timeout)).map_err(|e| format!("set timeout: {e}"))?;
        if let Ok(local) = s.local_addr() {
            self.record(local, source);
        }
        if plan.proxy.is_some() {
            s.write_all(&wire::connect(target, &plan.user_id)).map_err(|e| format!("sending CONNECT: {e}"))?;
            let mut reply = [0u8; wire::REPLY_LEN];
            s.read_exact(&mut reply).map_err(|e| format!("reading the reply to CONNECT {target}: {e}"))?;
            let reply = wire::parse_reply(&reply).map_err(|e| format!("CONNECT {target}: {e}"))?;
            if !reply.granted() {
                return Err(format!("CONNECT {target}: rejected with code {}", reply.code));
            }
        }
        Ok(s)
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`: `bind(addr:0)` then picks the port at `connect`, per
/// 4-tuple, instead of reserving one exclusively at `bind`.
#[cfg(target_os = "linux")]
fn bind_address_no_port(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to a live c_int with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Elsewhere the option does not exist: the port is reserved at `bind`.
#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_sock: &Socket) -> io::Result<()> {
    Ok(())
}

/// Writes `payload` and checks the same bytes come back.
fn echo_check(s: &mut TcpStream, payload: &[u8], back: &mut [u8]) -> Result<(), String> {
    s.write_all(payload).map_err(|e| format!("sending the echo: {e}"))?;
    s.read_exact(back).map_err(|e| format!("reading the echo: {e}"))?;
    if back != payload {
        return Err("the echo came back different".to_owned());
    }
    Ok(())
}

/// What every report shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// Free text naming the run (e.g. the server), may be empty.
    pub label: String,
    /// The proxy address, or `None` for a direct run.
    pub proxy: Option<SocketAddr>,
    /// How many source addresses were rotated through (0: the kernel chose).
    pub sources: usize,
    /// Distinct source (address, port) pairs used.
    pub source_ports: u64,
    /// How many echo targets were rotated through.
    pub targets: usize,
    /// Failed operations (connect, handshake, echo or verification).
    pub errors: u64,
    /// The first few error messages.
    pub first_errors: Vec<String>,
}

impl Common {
    fn new(label: &str, c: &Connector<'_>) -> Self {
        let (errors, first_errors) = c.errors.take();
        Common {
            label: label.to_owned(),
            proxy: c.plan.proxy,
            sources: c.plan.sources.len(),
            source_ports: c.ports_used(),
            targets: c.plan.targets.len(),
            errors,
            first_errors,
        }
    }

    /// `LABEL via ADDR` or `LABEL direct` (no label: just the route).
    fn via(&self) -> String {
        let route = match self.proxy {
            Some(p) => format!("via {p}"),
            None => "direct".to_owned(),
        };
        if self.label.is_empty() { route } else { format!("{} {route}", self.label) }
    }

    fn human_tail(&self, out: &mut String) {
        let sources = if self.sources == 0 { "kernel-chosen".to_owned() } else { self.sources.to_string() };
        let _ = write!(
            out,
            "\n  sources: {sources} loopback addresses, {} source ports used; {} targets; errors: {}",
            self.source_ports, self.targets, self.errors
        );
        for e in &self.first_errors {
            let _ = write!(out, "\n  error: {e}");
        }
    }

    fn json_head(&self, j: &mut Json, mode: &str) {
        j.str("mode", mode);
        j.str("label", &self.label);
        j.str("via", if self.proxy.is_some() { "proxy" } else { "direct" });
        match self.proxy {
            Some(p) => j.str("proxy", &p.to_string()),
            None => j.raw("proxy", "null"),
        }
    }

    fn json_tail(&self, j: &mut Json) {
        j.int("sources", self.sources as u64);
        j.int("source_ports", self.source_ports);
        j.int("targets", self.targets as u64);
        j.int("errors", self.errors);
        j.strs("first_errors", &self.first_errors);
    }
}

/// A hand-written JSON object builder (flat: strings, numbers, one string array).
#[derive(Debug, Default)]
struct Json(String);

impl Json {
    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        escape(&mut self.0, k);
        self.0.push(':');
    }
    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push_str(v);
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        escape(&mut self.0, v);
    }
    fn int(&mut self, k: &str, v: u64) {
        self.raw(k, &v.to_string());
    }
    fn num(&mut self, k: &str, v: f64) {
        if v.is_finite() { self.raw(k, &format!("{v:.3}")) } else { self.raw(k, "null") }
    }
    fn opt(&mut self, k: &str, v: Option<u64>) {
        match v {
            Some(v) => self.int(k, v),
            None => self.raw(k, "null"),
        }
    }
    fn opt_num(&mut self, k: &str, v: Option<f64>) {
        match v {
            Some(v) => self.num(k, v),
            None => self.raw(k, "null"),
        }
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        self.key(k);
        self.0.push('[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            escape(&mut self.0, s);
        }
        self.0.push(']');
    }
    fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

fn escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn spawn_named<'scope, T: Send + 'scope>(
    scope: &'scope thread::Scope<'scope, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> io::Result<thread::ScopedJoinHandle<'scope, T>> {
    thread::Builder::new().name(name.to_owned()).stack_size(STACK_SIZE).spawn_scoped(scope, f)
}

/// Settings of [`run_rate`].
#[derive(Debug, Clone)]
pub struct RateConfig {
    /// Concurrent client threads.
    pub concurrency: usize,
    /// How long to keep going.
    pub duration: Duration,
    /// Size of the echo on every connection.
    pub payload: usize,
}

/// Result of [`run_rate`].
#[derive(Debug, Clone, PartialEq)]
pub struct RateReport {
    /// Shared fields.
    pub common: Common,
    /// Concurrent client threads.
    pub concurrency: usize,
    /// Wall time of the run, seconds.
    pub secs: f64,
    /// Completed connect + handshake + echo + close cycles.
    pub handshakes: u64,
    /// `handshakes / secs`.
    pub per_sec: f64,
    /// Median cycle latency, microseconds (0 if none completed).
    pub p50_us: u64,
    /// 99th percentile cycle latency, microseconds.
    pub p99_us: u64,
}

/// The `p` quantile (0..=1) of sorted `v`, nearest rank; 0 when empty.
fn quantile(v: &[u32], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    u64::from(v[rank - 1])
}

/// Runs the handshake-rate test: until `duration` has passed, each of `concurrency` threads
/// connects, sends CONNECT (unless direct), echoes `payload` bytes, verifies them and closes.
/// Latency covers the whole cycle. Failed cycles count as errors (after a 1 ms pause, so a
/// refusing server does not turn this into a busy loop).
pub fn run_rate(label: &str, plan: &Plan, cfg: &RateConfig) -> io::Result<RateReport> {
    let conn = Connector::new(plan)?;
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut latencies: Vec<u32> = thread::scope(|scope| -> io::Result<Vec<u32>> {
        let mut handles = Vec::new();
        for t in 0..cfg.concurrency.max(1) {
            let conn = &conn;
            handles.push(spawn_named(scope, &format!("rate-{t}"), move || {
                let mut lat = Vec::new();
                let mut payload = vec![0u8; cfg.payload];
                let mut back = vec![0u8; cfg.payload];
                while Instant::now() < deadline {
                    let n = conn.next_index();
                    pattern(n, 0, &mut payload);
                    let t0 = Instant::now();
                    let r = conn.open(n).and_then(|mut s| echo_check(&mut s, &payload, &mut back));
                    match r {
                        Ok(()) => lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        Err(e) => {
                            conn.errors.add(e);
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                lat
            })?);
        }
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(v) => all.extend(v),
                Err(_) => conn.errors.add("a client thread panicked".to_owned()),
            }
        }
        Ok(all)
    })?;
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let handshakes = latencies.len() as u64;
    Ok(RateReport {
        common: Common::new(label, &conn),
        concurrency: cfg.concurrency.max(1),
        secs,
        handshakes,
        per_sec: handshakes as f64 / secs.max(1e-9),
        p50_us: quantile(&latencies, 0.50),
        p99_us: quantile(&latencies, 0.99),
    })
}

impl RateReport {
    /// Human-readable lines.
    pub fn human(&self) -> String {
        let c = &self.common;
        let mut out = format!(
            "rate {}: {} handshakes in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms (C={})",
            c.via(),
            self.handshakes,
            self.secs,
            self.per_sec,
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.concurrency
        );
        c.human_tail(&mut out);
        out
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let mut j = Json::default();
        self.common.json_head(&mut j, "rate");
        j.int("concurrency", self.concurrency as u64);
        j.num("secs", self.secs);
        j.int("handshakes", self.handshakes);
        j.num("handshakes_per_sec", self.per_sec);
        j.int("p50_us", self.p50_us);
        j.int("p99_us", self.p99_us);
        self.common.json_tail(&mut j);
        j.finish()
    }
}

/// Settings of [`run_bulk`].
#[derive(Debug, Clone)]
pub struct BulkConfig {
    /// Concurrent streams.
    pub streams: usize,
    /// Bytes each stream sends (and, from the echo, receives back).
    pub bytes: u64,
}

/// Result of [`run_bulk`].
#[derive(Debug, Clone, PartialEq)]
pub struct BulkReport {
    /// Shared fields.
    pub common: Common,
    /// Concurrent streams.
    pub streams: usize,
    /// Bytes sent, all streams.
    pub sent: u64,
    /// Bytes received and verified (count and checksum match what was sent), all streams.
    pub received: u64,
    /// Wall time from the first connect to the last stream's EOF, seconds.
    pub secs: f64,
    /// `(sent + received) / secs` in MiB/s: both directions through the relay counted.
    pub mib_per_sec: f64,
}

/// One bulk stream: push `bytes` of pattern `seed` while pulling the echo, then compare count and
/// [`LaneSum`] of what came back with what was sent. Returns (sent, received).
fn bulk_stream(conn: &Connector<'_>, seed: u64, bytes: u64) -> Result<(u64, u64), String> {
    let mut s = conn.open(seed)?;
    let mut writer = s.try_clone().map_err(|e| format!("cloning the socket: {e}"))?;
    thread::scope(|scope| {
        let push = spawn_named(scope, "bulk-push", move || -> Result<LaneSum, String> {
            let mut sum = LaneSum::new();
            let mut buf = vec![0u8; CHUNK];
            let mut off = 0u64;
            while off < bytes {
                let n = (bytes - off).min(CHUNK as u64) as usize;
                pattern(seed, off, &mut buf[..n]);
                writer.write_all(&buf[..n]).map_err(|e| format!("sending at byte {off}: {e}"))?;
                sum.update(&buf[..n]);
                off += n as u64;
            }
            writer.shutdown(Shutdown::Write).map_err(|e| format!("shutdown(Write): {e}"))?;
            Ok(sum)
        })
        .map_err(|e| format!("spawning the push thread: {e}"))?;
        let mut got = LaneSum::new();
        let mut buf = vec![0u8; CHUNK];
        let pulled = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => got.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("receiving after {} bytes: {e}", got.count())),
            }
        };
        if pulled.is_err() {
            let _ = s.shutdown(Shutdown::Both); // unblock the pusher
        }
        let sent = push.join().map_err(|_| "the push thread panicked".to_owned())??;
        pulled?;
        if got.count() != sent.count() || got.value() != sent.value() {
            return Err(format!(
                "stream {seed}: sent {} bytes (sum {:016x}), got back {} (sum {:016x})",
                sent.count(),
                sent.value(),
                got.count(),
                got.value()
            ));
        }
        Ok((sent.count(), got.count()))
    })
}

/// Runs the bulk test: `streams` connections at once, each pushing `bytes` through an echo
/// target while pulling them back, verified by count and checksum.
pub fn run_bulk(label: &str, plan: &Plan, cfg: &BulkConfig) -> io::Result<BulkReport> {
    let conn = Connector::new(plan)?;
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let start = Instant::now();
    thread::scope(|scope| -> io::Result<()> {
        let mut handles = Vec::new();
        for i in 0..cfg.streams.max(1) {
            let (conn, sent, received) = (&conn, &sent, &received);
            handles.push(spawn_named(scope, &format!("bulk-{i}"), move || {
                match bulk_stream(conn, i as u64, cfg.bytes) {
                    Ok((s, r)) => {
                        sent.fetch_add(s, Ordering::Relaxed);
                        received.fetch_add(r, Ordering::Relaxed);
                    }
                    Err(e) => conn.errors.add(e),
                }
            })?);
        }
        for h in handles {
            if h.join().is_err() {
                conn.errors.add("a stream thread panicked".to_owned());
            }
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = (sent.into_inner(), received.into_inner());
    Ok(BulkReport {
        common: Common::new(label, &conn),
        streams: cfg.streams.max(1),
        sent,
        received,
        secs,
        mib_per_sec: (sent + received) as f64 / (1024.0 * 1024.0) / secs.max(1e-9),
    })
}

impl BulkReport {
    /// Human-readable lines.
    pub fn human(&self) -> String {
        let c = &self.common;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut out = format!(
            "bulk {}: {} streams, {:.0} MiB sent + {:.0} MiB received (verified) in {:.2} s = {:.0} MiB/s \
             (both directions)",
            c.via(),
            self.streams,
            mib(self.sent),
            mib(self.received),
            self.secs,
            self.mib_per_sec
        );
        c.human_tail(&mut out);
        out
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let mut j = Json::default();
        self.common.json_head(&mut j, "bulk");
        j.int("streams", self.streams as u64);
        j.int("sent_bytes", self.sent);
        j.int("received_bytes", self.received);
        j.num("secs", self.secs);
        j.num("mib_per_sec", self.mib_per_sec);
        self.common.json_tail(&mut j);
        j.finish()
    }
}

/// Settings of [`run_hold`].
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// How many connections to open and hold.
    pub connections: usize,
    /// Threads opening them.
    pub concurrency: usize,
    /// Process whose resident memory (with its children) is sampled before and after.
    pub server_pid: Option<u32>,
    /// Pause after the last connection is open, before sampling.
    pub settle: Duration,
}

/// Result of [`run_hold`].
#[derive(Debug, Clone, PartialEq)]
pub struct HoldReport {
    /// Shared fields.
    pub common: Common,
    /// Connections asked for.
    pub requested: usize,
    /// Connections open and proven by an echo at the time of sampling.
    pub held: usize,
    /// Seconds it took to open them all.
    pub open_secs: f64,
    /// Server memory (summed over its process tree) before opening.
    pub before: Option<rss::TreeMemory>,
    /// Server memory with all connections held.
    pub after: Option<rss::TreeMemory>,
    /// VmRSS `(after - before) / held`, KiB.
    pub kib_per_conn: Option<f64>,
    /// The same from PSS (differs from RSS for a multi-process server sharing pages).
    pub pss_kib_per_conn: Option<f64>,
}

/// Runs the hold test: opens `connections` connections from `concurrency` threads, proves each
/// with a 64-byte echo, keeps them all open, samples the server's memory, then closes them.
pub fn run_hold(label: &str, plan: &Plan, cfg: &HoldConfig) -> io::Result<HoldReport> {
    let conn = Connector::new(plan)?;
    let before = cfg.server_pid.map(rss::tree_memory).transpose()?;
    let claimed = AtomicUsize::new(0);
    let start = Instant::now();
    let held: Vec<TcpStream> = thread::scope(|scope| -> io::Result<Vec<TcpStream>> {
        let mut handles = Vec::new();
        for t in 0..cfg.concurrency.clamp(1, cfg.connections.max(1)) {
            let (conn, claimed) = (&conn, &claimed);
            handles.push(spawn_named(scope, &format!("hold-{t}"), move || {
                let mut mine = Vec::new();
                let mut payload = [0u8; 64];
                let mut back = [0u8; 64];
                while claimed.fetch_add(1, Ordering::Relaxed) < cfg.connections {
                    let n = conn.next_index();
                    pattern(n, 0, &mut payload);
                    match conn.open(n).and_then(|mut s| echo_check(&mut s, &payload, &mut back).map(|()| s)) {
                        Ok(s) => mine.push(s),
                        Err(e) => conn.errors.add(e),
                    }
                }
                mine
            })?);
        }
        let mut all = Vec::with_capacity(cfg.connections);
        for h in handles {
            match h.join() {
                Ok(v) => all.extend(v),
                Err(_) => conn.errors.add("a client thread panicked".to_owned()),
            }
        }
        Ok(all)
    })?;
    let open_secs = start.elapsed().as_secs_f64();
    thread::sleep(cfg.settle);
    let after = cfg.server_pid.map(rss::tree_memory).transpose()?;
    let n = held.len();
    drop(held);
    let per = |f: fn(&rss::TreeMemory) -> Option<u64>| match (before.as_ref().and_then(f), after.as_ref().and_then(f)) {
        (Some(b), Some(a)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    };
    let kib_per_conn = per(|m| Some(m.rss_kib));
    let pss_kib_per_conn = per(|m| m.pss_kib);
    Ok(HoldReport {
        common: Common::new(label, &conn),
        requested: cfg.connections,
        held: n,
        open_secs,
        before,
        after,
        kib_per_conn,
        pss_kib_per_conn,
    })
}

impl HoldReport {
    /// Human-readable lines.
    pub fn human(&self) -> String {
        let c = &self.common;
        let mut out = format!(
            "hold {}: {} of {} connections held (opened in {:.2} s)",
            c.via(),
            self.held,
            self.requested,
            self.open_secs
        );
        match (self.before, self.after, self.kib_per_conn) {
            (Some(b), Some(a), Some(per)) => {
                let _ = write!(
                    out,
                    "\n  server VmRSS {} KiB -> {} KiB ({} processes) = {per:.2} KiB per connection",
                    b.rss_kib, a.rss_kib, a.processes
                );
                if let (Some(pb), Some(pa), Some(pp)) = (b.pss_kib, a.pss_kib, self.pss_kib_per_conn) {
                    let _ = write!(out, "; PSS {pb} KiB -> {pa} KiB = {pp:.2} KiB per connection");
                }
            }
            _ => out.push_str("\n  server memory not sampled (no --server-pid, or nothing held)"),
        }
        c.human_tail(&mut out);
        out
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let mut j = Json::default();
        self.common.json_head(&mut j, "hold");
        j.int("requested", self.requested as u64);
        j.int("held", self.held as u64);
        j.num("open_secs", self.open_secs);
        j.opt("rss_before_kib", self.before.map(|m| m.rss_kib));
        j.opt("rss_after_kib", self.after.map(|m| m.rss_kib));
        j.opt("pss_before_kib", self.before.and_then(|m| m.pss_kib));
        j.opt("pss_after_kib", self.after.and_then(|m| m.pss_kib));
        j.int("server_processes", self.after.map_or(0, |m| m.processes as u64));
        j.opt_num("kib_per_conn", self.kib_per_conn);
        j.opt_num("pss_kib_per_conn", self.pss_kib_per_conn);
        self.common.json_tail(&mut j);
        j.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_closes() {
        let mut j = Json::default();
        j.str("a", "x\"y\\z\n\u{1}");
        j.int("b", 3);
        j.num("c", f64::NAN);
        j.strs("d", &["p".to_owned(), "q".to_owned()]);
        assert_eq!(j.finish(), r#"{"a":"x\"y\\z\n\u0001","b":3,"c":null,"d":["p","q"]}"#);
        assert_eq!(Json::default().finish(), "{}");
    }

    #[test]
    fn quantiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[7], 0.99), 7);
    }

    #[test]
    fn ranges() {
        assert_eq!(
            loopback_range(Ipv4Addr::new(127, 0, 0, 2), 2),
            [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]
        );
    }
}

#[cfg(test)]
mod mode_tests;
