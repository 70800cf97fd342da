//! `parse_request` on arbitrary bytes with arbitrary limits.
//!
//! The first two bytes are the limits (user id, host); the rest is the input. Checks: no panic;
//! parsing every prefix gives `Partial`… then either the same `Complete` for good or an error for
//! good (errors are final, completes are stable); a `Complete` uses at most the input, respects the
//! limits and re-encodes to exactly the bytes it used (up to the 4a marker, see below).
#![no_main]

use libfuzzer_sys::fuzz_target;
use socks4_core::{Dest, Limits, MAX_REQUEST_LEN, Status, parse_request};

fuzz_target!(|data: &[u8]| {
    let (limits, buf) = match data {
        [u, h, rest @ ..] => (Limits::new(*u, *h), rest),
        _ => (Limits::default(), data),
    };
    let result = parse_request(buf, &limits);

    if let Ok(Status::Complete((req, used))) = result {
        assert!(used <= buf.len(), "used {used} > input {}", buf.len());
        assert!(req.user_id.len() <= limits.user_id as usize);
        assert!(!req.user_id.contains(&0));
        if let Dest::Domain(host) = req.dest {
            assert!(!host.is_empty() && host.len() <= limits.host as usize);
        }
        assert_eq!(req.encoded_len(), used);
        let mut out = [0u8; MAX_REQUEST_LEN];
        let n = req.encode(&mut out).expect("a parsed request encodes");
        assert_eq!(n, used);
        let mut expected = [0u8; MAX_REQUEST_LEN];
        expected[..used].copy_from_slice(&buf[..used]);
        if matches!(req.dest, Dest::Domain(_)) {
            // Known: the wire may mark 4a with any 0.0.0.x (x != 0); `encode` always writes 0.0.0.1.
            expected[7] = 1;
        }
        assert_eq!(&out[..n], &expected[..used], "re-encoding differs");
        // Exactly the used bytes parse to the same request.
        assert_eq!(parse_request(&buf[..used], &limits), result);
    }

    // Prefixes: Partial*, then one verdict that longer inputs keep. Bounded: no request is longer
    // than MAX_REQUEST_LEN, so a verdict is always reached by then.
    let end = buf.len().min(MAX_REQUEST_LEN + 1);
    let mut verdict = None;
    for k in 0..=end {
        let r = parse_request(&buf[..k], &limits);
        match (&verdict, &r) {
            (None, Ok(Status::Partial)) => {}
            (None, _) => verdict = Some(r),
            (Some(Ok(Status::Complete(first))), Ok(Status::Complete(now))) => assert_eq!(first, now),
            (Some(Err(_)), Err(_)) => {}
            (Some(v), _) => panic!("prefix {k}: {r:?} after verdict {v:?}"),
        }
    }
    if buf.len() > MAX_REQUEST_LEN {
        assert_ne!(result, Ok(Status::Partial), "partial past the longest possible request");
    }
});
