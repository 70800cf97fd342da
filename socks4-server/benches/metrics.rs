//! What metrics cost a connection: one CONNECT's whole meter (start, resolve, connect, reply,
//! relay, end, log-line fields) with metrics on and off, on two workers at once.
//!
//! `cargo bench -p socks4-server --bench metrics`
#![allow(missing_docs, reason = "criterion_group!/criterion_main! generate undocumented functions")]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use socks4_core::{Command, RelayEnd, ReplyCode};
use socks4_server::metrics::{ConnMeter, Metrics, Phase};

/// One connection's metering, as an adapter does it.
fn one_connection() {
    let mut meter = ConnMeter::start();
    meter.enter(Phase::Resolving);
    meter.resolved(true);
    meter.enter(Phase::Connecting);
    meter.connected();
    meter.replied(ReplyCode::Granted);
    meter.enter(Phase::Relaying);
    meter.close(RelayEnd::Closed.into());
    meter.finish(Some(Command::Connect), 64, 64, true);
    black_box((meter.worker(), meter.reply()));
}

/// `threads` workers each meter `iters` connections; time per connection.
fn run(metrics: &Arc<Metrics>, threads: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (metrics, barrier) = (Arc::clone(metrics), Arc::clone(&barrier));
            std::thread::spawn(move || {
                metrics.enter_worker(t);
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    one_connection();
                }
                start.elapsed()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a worker")).max().unwrap_or_default()
}

fn meter(c: &mut Criterion) {
    for (name, on) in [("metrics off", false), ("metrics on", true)] {
        let metrics = Metrics::new(2, on);
        c.bench_function(&format!("one connection's meter, {name}, 2 workers"), |b| {
            b.iter_custom(|iters| run(&metrics, 2, iters))
        });
    }
    for (name, on) in [("metrics off", false), ("metrics on", true)] {
        let metrics = Metrics::new(1, on);
        c.bench_function(&format!("one connection's meter, {name}, 1 worker"), |b| {
            b.iter_custom(|iters| run(&metrics, 1, iters))
        });
    }
    // For scale: the meter reads the clock 6 times per CONNECT that resolves a name.
    c.bench_function("Instant::now", |b| b.iter(Instant::now));
    let metrics = Metrics::new(2, true);
    c.bench_function("scrape (encode) of 2 workers", |b| b.iter(|| black_box(metrics.encode())));
}

criterion_group!(benches, meter);
criterion_main!(benches);
