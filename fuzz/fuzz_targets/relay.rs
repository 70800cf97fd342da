//! `Relay` under arbitrary sequences of operations (reads, writes, EOFs, errors, time passing).
//!
//! Checks: no panic; the counts never exceed what was read and never shrink; a half-close is
//! emitted at most once per side and only after that direction's EOF; an abort comes only after an
//! error and names the other side; `Done` is final; a `Wait` deadline is after the last `now`.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use socks4_core::{Fault, Relay, RelayOutput, Side};

#[derive(Arbitrary, Debug)]
enum Op {
    Read(bool, u32),
    Written(bool, u32),
    Eof(bool),
    Error(bool, bool),
    Advance(u16),
    Poll,
}

#[derive(Arbitrary, Debug)]
struct Case {
    idle_ms: u16,
    ops: Vec<Op>,
}

fn side(client: bool) -> Side {
    if client { Side::Client } else { Side::Upstream }
}

fuzz_target!(|case: Case| {
    let idle = Duration::from_millis(case.idle_ms.into());
    let mut now = Duration::from_secs(1);
    let mut relay = Relay::new(now, idle);
    let (mut read, mut eof, mut shut) = ([0u64; 2], [false; 2], [false; 2]);
    let (mut error, mut done) = (None::<Side>, None);
    let ix = |s: Side| if s == Side::Client { 0 } else { 1 };
    for op in case.ops {
        let before = [relay.bytes(Side::Client), relay.bytes(Side::Upstream)];
        match op {
            Op::Read(c, n) => {
                if !eof[ix(side(c))] && done.is_none() && error.is_none() {
                    read[ix(side(c))] += u64::from(n);
                }
                relay.handle_read(now, side(c), n as usize);
            }
            Op::Written(c, n) => relay.handle_written(now, side(c), n as usize),
            Op::Eof(c) => {
                if done.is_none() && error.is_none() {
                    eof[ix(side(c))] = true;
                }
                relay.handle_eof(now, side(c));
            }
            Op::Error(c, reset) => {
                if done.is_none() && error.is_none() {
                    error = Some(side(c));
                }
                relay.handle_error(now, side(c), if reset { Fault::Reset } else { Fault::Other });
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(ms.into());
                relay.handle_timeout(now);
            }
            Op::Poll => {}
        }
        for (i, s) in [Side::Client, Side::Upstream].into_iter().enumerate() {
            assert!(relay.bytes(s) >= before[i], "a count shrank");
            assert!(relay.bytes(s) <= read[i], "more written than read");
        }
        loop {
            match relay.poll_output() {
                RelayOutput::Shutdown(to) => {
                    let from = ix(to.peer());
                    assert!(eof[from] && !shut[from] && done.is_none() && error.is_none());
                    shut[from] = true;
                }
                RelayOutput::Abort(s) => assert_eq!(Some(s.peer()), error),
                RelayOutput::Wait { deadline } => {
                    assert!(done.is_none());
                    assert_eq!(deadline.is_some(), !idle.is_zero());
                    if let Some(d) = deadline {
                        assert!(d > now, "deadline {d:?} at or before {now:?}");
                    }
                    break;
                }
                RelayOutput::Done(end) => {
                    assert!(done.is_none_or(|d| d == end), "Done changed");
                    done = Some(end);
                    break;
                }
                _ => break,
            }
        }
    }
});
