//! `socks4_server::chain::Attempt` (a CONNECT or BIND through a route's parents) driven by
//! arbitrary events: lookups that answer or fail (or answer about another parent), connects that
//! succeed or fail, short writes, timeouts, errors, end of file, and arbitrary parent replies
//! split at arbitrary points.
//!
//! Checks: no panic; it ends within a bound of steps; `Read` never asks for more than a reply's
//! 8 bytes nor for none, and `handle_input` uses at most what it got; `Write` hands out the rest
//! of a request that parses as one; answers come in a valid order (CONNECT: one `Connect`; BIND:
//! `Listen`, then after a grant one `BindPeer`) and nothing follows `Done`; a deadline is never
//! at or before a timeout it was just given (no hot timer loop); `via` names one of the route's
//! parents.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use socks4_core::driver::Candidates;
use socks4_core::rules::Rule;
use socks4_core::{Failure, Limits, Status, parse_request};
use socks4_server::chain::{AnswerTo, Attempt, Io};
use socks4_server::upstream::{ChainTarget, Upstreams};

#[derive(Arbitrary, Debug)]
enum Event {
    /// Answer a lookup (of this parent number, or the one asked for when `None`) with these
    /// addresses' last octets (none: not found).
    Resolved(Option<u8>, Vec<u8>),
    Connected,
    ConnectFailed(bool),
    /// Write at most this many bytes.
    Written(u8),
    /// The parent's next bytes: this many of `replies`.
    Bytes(u8),
    Eof,
    Error(bool),
    /// Time passes by this many milliseconds, then the timer is looked at.
    Later(u16),
}

#[derive(Arbitrary, Debug)]
struct Case {
    bind: bool,
    by_name: bool,
    /// Parents: by address (port 1, 2, ...) or by name.
    parents: Vec<bool>,
    user: Vec<u8>,
    events: Vec<Event>,
    replies: Vec<u8>,
}

const TIMEOUT: Duration = Duration::from_millis(500);

fuzz_target!(|case: Case| {
    let parents: Vec<String> = case
        .parents
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, named)| match named {
            true => format!("socks4a://parent{i}.example:{}", i + 1),
            false => format!("socks4a://127.0.0.1:{}", i + 1),
        })
        .collect();
    if parents.is_empty() {
        return;
    }
    let rule: Rule = match format!("allow via {}", parents.join(",")).parse() {
        Ok(rule) => rule,
        Err(e) => panic!("a route of {parents:?} does not parse: {e}"),
    };
    let route = rule.route.expect("a route");
    let ups = Arc::new(Upstreams::new());
    let mut now = Instant::now();
    let client = std::net::IpAddr::from([127, 0, 0, 1]);
    let made = match (case.bind, case.by_name) {
        (true, _) => {
            let peer: SocketAddr = "192.0.2.7:21".parse().expect("an address");
            Attempt::bind(Arc::clone(&ups), &route, peer, client, &case.user, (TIMEOUT, 2 * TIMEOUT), now)
        }
        (false, true) => {
            let target = ChainTarget::Host("duck.onion".into(), 443);
            Attempt::connect(Arc::clone(&ups), &route, &target, client, &case.user, TIMEOUT, now)
        }
        (false, false) => {
            let target = ChainTarget::Addr("192.0.2.1:80".parse().expect("an address"));
            Attempt::connect(Arc::clone(&ups), &route, &target, client, &case.user, TIMEOUT, now)
        }
    };
    let Ok(mut attempt) = made else { return };
    let mut replies = &case.replies[..];
    let mut events = case.events.iter();
    let mut answers: Vec<(AnswerTo, bool)> = Vec::new();
    let mut asked_parent = 0;
    let mut done = false;
    // Each poll either makes progress on its own (an answer, a connect's address) or consumes an
    // event; the route has at most 4 parents of at most 4 addresses.
    for _ in 0..(case.events.len() + 64) {
        let io = attempt.poll();
        if done {
            assert_eq!(io, Io::Done, "after Done");
        }
        let Some(event) = (match io {
            Io::Answer(answer) => {
                answers.push((answer.to, answer.result.is_ok()));
                continue;
            }
            Io::Done => {
                done = true;
                continue;
            }
            Io::Connect(_) => continue, // the connect is under way; an event answers it
            Io::Resolve { parent, .. } => {
                asked_parent = parent;
                continue;
            }
            Io::Write(bytes) => {
                assert!(!bytes.is_empty(), "an empty write");
                match parse_request(bytes, &Limits::default()) {
                    // The whole request (a short write hands out the rest, which need not parse).
                    Ok(Status::Complete((_, used))) => assert_eq!(used, bytes.len()),
                    Ok(Status::Partial) | Err(_) => {}
                }
                events.next()
            }
            Io::Read(n) => {
                assert!((1..=8).contains(&n), "Read({n})");
                events.next()
            }
            Io::Wait => events.next(),
        }) else {
            break;
        };
        match event {
            Event::Resolved(parent, octets) => {
                let lookup: Vec<SocketAddr> =
                    octets.iter().take(4).map(|&o| SocketAddr::from(([127, 0, 0, o], 1))).collect();
                let candidates = match lookup.is_empty() {
                    true => Candidates::failed(Failure::NotFound),
                    false => Candidates::from_lookup(Ok::<_, std::io::Error>(lookup)),
                };
                attempt.handle_resolved(now, parent.map_or(asked_parent, usize::from), candidates);
            }
            Event::Connected => attempt.handle_connected(now, Ok(())),
            Event::ConnectFailed(timed_out) => {
                let failure = if *timed_out { Failure::TimedOut } else { Failure::Refused };
                attempt.handle_connected(now, Err(failure));
            }
            Event::Written(n) => attempt.handle_written(usize::from(*n)),
            Event::Bytes(n) => {
                let n = usize::from(*n).min(replies.len());
                let used = attempt.handle_input(now, &replies[..n]);
                assert!(used <= n, "used {used} of {n}");
                replies = &replies[n..];
            }
            Event::Eof => attempt.handle_eof(now),
            Event::Error(timed_out) => {
                attempt.handle_error(now, if *timed_out { Failure::TimedOut } else { Failure::Other });
            }
            Event::Later(ms) => {
                now += Duration::from_millis(u64::from(*ms));
                attempt.handle_timeout(now);
                if let Some(deadline) = attempt.deadline() {
                    assert!(deadline > now, "a deadline at or before the timeout it was given");
                }
            }
        }
    }

    // Answers in a valid order.
    match (case.bind, &answers[..]) {
        (_, []) => {}
        (false, [(AnswerTo::Connect, _)]) => {}
        (true, [(AnswerTo::Listen, _)]) => {}
        (true, [(AnswerTo::Listen, true), (AnswerTo::BindPeer, _)]) => {}
        (bind, answers) => panic!("answers {answers:?} (bind: {bind})"),
    }
    if let Some(via) = attempt.via() {
        assert!(route.parents.contains(via), "via {via} is not a parent of the route");
    }
});
