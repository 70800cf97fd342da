//! The hot paths of the limits: admit + release at accept (one thread and two at once), a relay's
//! grant + refund, a user id answered from the verifier's cache, and the live config's snapshot each
//! connection takes at accept (one thread and two at once).
//!
//! `cargo bench -p socks4-server --bench limits`
#![allow(missing_docs, reason = "criterion_group!/criterion_main! generate undocumented functions")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use socks4_server::ServerConfig;
use socks4_server::bandwidth::{Bandwidth, BandwidthCaps, Direction};
use socks4_server::limits::{ClientLimits, Limiter};
use socks4_server::reload::LiveConfig;
use socks4_server::users::{Users, Verifier, hash_token_with};

fn all_limits() -> ClientLimits {
    let mut limits = ClientLimits::default();
    limits.max_rate_per_client = Some("100000000/s".parse().expect("a rate"));
    limits
}

/// Runs `work(thread)` on `threads` threads started together; the longest time one took.
fn on_threads(threads: usize, work: impl Fn(usize) + Send + Sync + Clone + 'static) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work, barrier) = (work.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                work(t);
                start.elapsed()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("no panic")).max().unwrap_or_default()
}

/// `threads` threads each admit and release `iters` connections, every one from its own rotating
/// set of 1024 clients (`shared`: all threads use the same client); time per admit + release.
fn run(limiter: &Arc<Limiter>, threads: usize, iters: u64, shared: bool) -> Duration {
    let limiter = Arc::clone(limiter);
    on_threads(threads, move |t| {
        for i in 0..iters {
            let n = if shared { 0 } else { (t as u32) << 16 | (i as u32 & 0x3ff) };
            let client = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 | n));
            // The clock is read per connection, as an accept loop does (about 20 ns of the time).
            let admission = limiter.admit(client, Instant::now()).expect("admitted");
            black_box(&admission);
        }
    })
}

fn limiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit+release");
    for (name, limits) in [("off", ClientLimits::OFF), ("default", ClientLimits::default()), ("all", all_limits())] {
        for threads in [1, 2] {
            for shared in [false, true] {
                let id = format!(
                    "{name}/{threads}-thread{}/{}",
                    if threads > 1 { "s" } else { "" },
                    if shared { "same-client" } else { "many-clients" }
                );
                g.bench_function(id, |b| {
                    let limiter = Limiter::new(limits, Instant::now());
                    b.iter_custom(|iters| run(&limiter, threads, iters, shared));
                });
            }
        }
    }
    g.finish();
}

fn bandwidth(c: &mut Criterion) {
    let mut caps = BandwidthCaps::default();
    caps.conn = Some("1G".parse().expect("a rate"));
    caps.user = Some("1G".parse().expect("a rate"));
    caps.client = Some("1G".parse().expect("a rate"));
    let t0 = Instant::now();
    let bw = Bandwidth::new(caps, t0).expect("caps");
    let conn = bw.connection("10.0.0.1".parse().expect("an address"), Some(b"alice"), t0);
    let mut now = t0;
    c.bench_function("bandwidth grant+refund (3 caps)", |b| {
        b.iter(|| {
            now += Duration::from_micros(100);
            let g = conn.grant(Direction::Up, now, black_box(16 * 1024));
            conn.refund(Direction::Up, 1000);
            g
        })
    });
    c.bench_function("bandwidth connection setup (3 caps)", |b| {
        b.iter(|| bw.connection(black_box("10.0.0.1".parse().expect("an address")), Some(b"alice"), t0))
    });
}

fn verifier(c: &mut Criterion) {
    let params = argon2::Params::new(8, 1, 1, None).expect("params");
    let line = format!("alice:{}\n", hash_token_with(b"token-0123456789", params).expect("hash"));
    let v = Verifier::new(Users::parse(line.as_bytes()).expect("users"));
    assert_eq!(v.verify_blocking(b"alice:token-0123456789"), Ok(()));
    c.bench_function("verifier check_cached (hit)", |b| {
        b.iter(|| v.check_cached(black_box(b"alice:token-0123456789")))
    });
}

/// `threads` threads each take and drop `iters` snapshots of `live` (one per accepted connection).
fn snapshots(live: &Arc<LiveConfig>, threads: usize, iters: u64) -> Duration {
    let live = Arc::clone(live);
    on_threads(threads, move |_| {
        for _ in 0..iters {
            black_box(live.snapshot());
        }
    })
}

fn live_config(c: &mut Criterion) {
    let mut g = c.benchmark_group("live config snapshot");
    let live = LiveConfig::new(ServerConfig::default()).expect("a valid config");
    for threads in [1, 2] {
        g.bench_function(format!("{threads}-thread"), |b| b.iter_custom(|iters| snapshots(&live, threads, iters)));
    }
    g.finish();
}

criterion_group!(benches, limiter, bandwidth, verifier, live_config);
criterion_main!(benches);
