//! `ClientHandshake` with arbitrary request parameters and arbitrary reply bytes in arbitrary chunks.
//!
//! Checks: no panic; a request that builds parses back to itself (and a CONNECT built with
//! `connect_to(request.target())` has the same bytes); `handle_input` uses at most its
//! input and only up to the end of a reply; events come in a valid order (BIND: `BindListening`
//! then a final one; CONNECT: one final event); once done (or after an error) nothing is consumed.
#![no_main]

use std::net::SocketAddrV4;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use socks4_core::{
    ClientEvent, ClientHandshake, Command, Dest, Limits, REPLY_LEN, Reply, Request, SOCKS4A_MARKER, Status,
    parse_request,
};

#[derive(Arbitrary, Debug)]
struct Case {
    bind: bool,
    port: u16,
    ip: [u8; 4],
    host: Option<String>,
    user: Vec<u8>,
    /// Chunk sizes to cut `replies` into (0 feeds an empty slice).
    chunks: Vec<u8>,
    eof: bool,
    replies: Vec<u8>,
}

fuzz_target!(|case: Case| {
    let command = if case.bind { Command::Bind } else { Command::Connect };
    let dest = match &case.host {
        Some(h) => Dest::Domain(h),
        None => Dest::Ip(case.ip.into()),
    };
    let req = Request::new(command, case.port, dest, &case.user);
    let mut hs = match ClientHandshake::new(&req) {
        Ok(hs) => hs,
        Err(e) => {
            assert!(req.validate().is_err(), "new failed with {e:?} on a valid request");
            return;
        }
    };

    // The request bytes parse back to the request; a CONNECT built from its target is the same.
    let wire = hs.request_bytes();
    if command == Command::Connect {
        let via_target = ClientHandshake::connect_to(req.target(), &case.user).expect("a valid request's target");
        assert_eq!(via_target.request_bytes(), wire, "connect_to(target) differs");
    }
    assert_eq!(wire.len(), req.encoded_len());
    match (dest, parse_request(wire, &Limits::default())) {
        (_, Ok(Status::Complete((parsed, used)))) => {
            assert_eq!(used, wire.len());
            assert_eq!(parsed, req);
            if let Dest::Domain(_) = dest {
                assert_eq!(wire[4..8], SOCKS4A_MARKER.octets());
            }
        }
        (_, other) => panic!("request bytes {wire:?} parse as {other:?}"),
    }

    // Feed the replies in chunks; whatever is unused after `is_done` is payload.
    let mut events = Vec::new();
    let mut used_total = 0;
    let mut rest: &[u8] = &case.replies;
    let mut sizes = case.chunks.iter().copied().chain(core::iter::repeat(u8::MAX));
    let mut failed = false;
    while !rest.is_empty() {
        let size = usize::from(sizes.next().unwrap_or(u8::MAX)).min(rest.len());
        let mut chunk = &rest[..size];
        rest = &rest[size..];
        loop {
            let done = hs.is_done();
            match hs.handle_input(chunk) {
                Ok((used, event)) => {
                    assert!(used <= chunk.len());
                    assert!(used <= REPLY_LEN);
                    if done {
                        assert_eq!((used, event), (0, None), "input used after done");
                    }
                    used_total += used;
                    if let Some(ev) = event {
                        // A reply ends exactly at a multiple of 8 bytes.
                        assert_eq!(used_total % REPLY_LEN, 0);
                        let start = used_total - REPLY_LEN;
                        let Ok(Status::Complete(reply)) = Reply::parse(&case.replies[start..used_total]) else {
                            panic!("event {ev:?} without a reply");
                        };
                        let expected = match ev {
                            ClientEvent::Granted(a) | ClientEvent::BindListening(a) => (90, a),
                            ClientEvent::Rejected(code) => (code.code(), SocketAddrV4::new(0.into(), 0)),
                            other => panic!("unknown event {other:?}"),
                        };
                        assert_eq!(reply.code.code(), expected.0);
                        if expected.0 == 90 {
                            assert_eq!(reply.addr, expected.1);
                        }
                        events.push(ev);
                    }
                    chunk = &chunk[used..];
                    if used == 0 || chunk.is_empty() {
                        break;
                    }
                }
                Err(_) => {
                    assert!(!done, "error after done");
                    assert!(hs.is_done(), "not done after an error");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            assert_eq!(hs.handle_input(rest), Ok((0, None)));
            break;
        }
    }

    // Event order.
    match (command, events.as_slice()) {
        (_, []) => {}
        (Command::Connect, [ClientEvent::Granted(_) | ClientEvent::Rejected(_)]) => {}
        (Command::Bind, [ClientEvent::BindListening(_)]) => {}
        (Command::Bind, [ClientEvent::Rejected(_)]) => {}
        (Command::Bind, [ClientEvent::BindListening(_), ClientEvent::Granted(_) | ClientEvent::Rejected(_)]) => {}
        (c, evs) => panic!("{c:?}: bad event order {evs:?}"),
    }
    let final_event = matches!(events.last(), Some(ClientEvent::Granted(_) | ClientEvent::Rejected(_)));
    if !failed {
        assert_eq!(hs.is_done(), final_event);
    }
    if case.eof {
        let done = hs.is_done();
        assert_eq!(hs.handle_eof().is_ok(), done);
        assert!(hs.is_done());
    }
});
