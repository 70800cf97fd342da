//! Many connections at once.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::support::{Context, bail, echo_round_trip, open_connect};
use super::{Ctx, Failure, Outcome};
use crate::targets::EchoTarget;

const THREADS: usize = 50;
const PER_THREAD: usize = 10;
/// How long all the connections may take to get open.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);

/// 500 connections (50 threads × 10), each CONNECT + a small echo, all open at the same time;
/// then one more echo on each before closing.
pub(crate) fn concurrent_500(ctx: &Ctx) -> Result<Outcome, Failure> {
    let target = EchoTarget::start().context("starting the echo target")?;
    let opened = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let deadline = Instant::now() + OPEN_DEADLINE;
    let results: Vec<Result<(), Failure>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (opened, failed, target) = (&opened, &failed, &target);
                thread::Builder::new().stack_size(256 * 1024).spawn_scoped(scope, move || {
                    let r = one_thread(ctx, t, opened, failed, deadline, target);
                    if r.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| Err(Failure::new("a client thread panicked"))),
                Err(e) => Err(Failure::new(format!("spawning a client thread: {e}"))),
            })
            .collect()
    });
    let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    if let Some(first) = failures.first() {
        bail!(
            "{} of {THREADS} client threads failed ({} of {} connections were open); first: {first}",
            failures.len(),
            opened.load(Ordering::SeqCst),
            THREADS * PER_THREAD
        );
    }
    Ok(Outcome::Pass)
}

fn one_thread(
    ctx: &Ctx,
    t: usize,
    opened: &AtomicUsize,
    failed: &AtomicBool,
    deadline: Instant,
    target: &EchoTarget,
) -> Result<(), Failure> {
    let mut conns: Vec<TcpStream> = Vec::with_capacity(PER_THREAD);
    for i in 0..PER_THREAD {
        if failed.load(Ordering::SeqCst) {
            return Ok(()); // another thread already reported the failure
        }
        let what = format!("connection {t}.{i}");
        let mut s = open_connect(ctx, target.addr(), b"many").context(&what)?;
        echo_round_trip(&mut s, format!("hello {t}.{i}").as_bytes(), &what)?;
        conns.push(s);
        opened.fetch_add(1, Ordering::SeqCst);
    }
    // Hold everything open until all 500 are open (bounded).
    while opened.load(Ordering::SeqCst) < THREADS * PER_THREAD {
        if failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} connections open after {OPEN_DEADLINE:?}",
                opened.load(Ordering::SeqCst),
                THREADS * PER_THREAD
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    for (i, s) in conns.iter_mut().enumerate() {
        echo_round_trip(s, format!("bye {t}.{i}").as_bytes(), &format!("connection {t}.{i} (all open)"))?;
        let _ = s.flush();
        let _ = s.shutdown(Shutdown::Both);
    }
    Ok(())
}
