//! The handshake and relay paths never allocate: codec, server handshake (CONNECT by IP and by name,
//! a name forwarded unresolved, an IPv6 resolution with a retry, BIND, rules, rejections including a
//! forbidden destination, ident), the ident query and reply parser, client handshake and the relay
//! bookkeeping, under a counting global allocator.
//!
//! Only allocations made by the current thread while it is counting are counted, so the test
//! harness's other threads cannot disturb the result.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socks4_core::rules::{Action, Rules};
use socks4_core::{
    ClientEvent, ClientHandshake, CloseReason, Fault, Limits, MAX_REQUEST_LEN, Names, Output, Relay, RelayEnd,
    RelayOutput, Reply, ReplyCode, Request, ServerHandshake, Side, Status, Target, Timeouts, parse_request,
};

/// `System`, counting this thread's allocations while [`COUNTING`] is set.
struct Counting;

thread_local! {
    // `const` initializers: no lazy initialization (which could allocate) inside the allocator.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the thread-locals may be gone while a thread is being torn down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping only touches `Cell`s.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`; `ptr` came from this allocator, that is from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the number of heap allocations it made on this thread.
fn count<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.with(Cell::get))
}

/// Asserts that `f` makes no heap allocation.
fn assert_no_alloc<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (out, n) = count(f);
    assert_eq!(n, 0, "{what}: {n} heap allocations");
    out
}

const CONNECT: &[u8] = b"\x04\x01\x00\x50\x7f\x00\x00\x01user\0early";
const CONNECT_4A: &[u8] = b"\x04\x01\x00\x50\x00\x00\x00\x01user\0example.com\0";
const BIND: &[u8] = b"\x04\x02\x00\x15\xc0\x00\x02\x07user\0";

fn rules() -> Rules {
    Rules::parse("deny to 169.254.0.0/16\nallow from 127.0.0.0/8 to *.example.com\nallow from 127.0.0.0/8 port 1-1024")
        .expect("rules parse")
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const NOW: Duration = Duration::from_secs(5);

#[test]
fn the_counter_counts() {
    let (_, n) = count(|| std::hint::black_box(vec![1u8; 16]));
    assert_eq!(n, 1);
}

#[test]
fn codec() {
    let limits = Limits::default();
    assert_no_alloc("parse_request (4)", || {
        assert!(matches!(parse_request(CONNECT, &limits), Ok(Status::Complete((_, 13)))));
    });
    assert_no_alloc("parse_request (4a)", || {
        assert!(matches!(parse_request(CONNECT_4A, &limits), Ok(Status::Complete((_, 25)))));
    });
    let reply = Reply::new(ReplyCode::Granted, SocketAddrV4::new([127, 0, 0, 1].into(), 1080));
    assert_no_alloc("Reply::to_bytes / Reply::parse", || {
        let bytes = reply.to_bytes();
        assert_eq!(Reply::parse(&bytes), Ok(Status::Complete(reply)));
    });
    assert_no_alloc("Request::encode", || {
        let mut out = [0u8; MAX_REQUEST_LEN];
        let n = Request::connect_host("example.com", 80, b"user").encode(&mut out);
        assert_eq!(n, Ok(25));
        let n = Request::connect(SocketAddrV4::new([127, 0, 0, 1].into(), 80), b"user").encode(&mut out);
        assert_eq!(n, Ok(13));
    });
}

#[test]
fn server_connect_by_ip() {
    let rules = rules();
    let bound = SocketAddrV4::new([127, 0, 0, 1].into(), 40000);
    assert_no_alloc("server CONNECT (4)", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        // In two pieces, the second carrying early data.
        let used = hs.handle_input(NOW, &CONNECT[..5]) + hs.handle_input(NOW, &CONNECT[5..]);
        assert_eq!(&CONNECT[used..], b"early");
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        assert_eq!(hs.authorize(NOW, &rules, CLIENT), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Connect(SocketAddrV4::new([127, 0, 0, 1].into(), 80).into()));
        assert!(matches!(hs.poll_output(), Output::Wait { deadline: Some(_) }));
        hs.handle_connected(NOW, Ok(bound.into())).expect("connecting");
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, bound)));
        assert_eq!(hs.poll_output(), Output::Relay);
    });
}

#[test]
fn server_connect_by_name() {
    let rules = rules();
    let bound = SocketAddrV4::new([127, 0, 0, 1].into(), 40001);
    assert_no_alloc("server CONNECT (4a)", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        assert_eq!(hs.handle_input(NOW, CONNECT_4A), CONNECT_4A.len());
        assert_eq!(hs.poll_output(), Output::Resolve { host: "example.com", port: 80 });
        hs.handle_resolved(NOW, Ok(Ipv4Addr::new(93, 184, 215, 14).into())).expect("resolving");
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        assert_eq!(hs.authorize(NOW, &rules, CLIENT), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Connect(SocketAddrV4::new([93, 184, 215, 14].into(), 80).into()));
        hs.handle_connected(NOW, Ok(bound.into())).expect("connecting");
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, bound)));
        assert_eq!(hs.poll_output(), Output::Relay);
    });
}

#[test]
fn server_connect_by_forwarded_name() {
    let rules = rules();
    let bound: SocketAddr = (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9), 40002).into();
    assert_no_alloc("server CONNECT (4a, name forwarded)", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default()).with_names(Names::Forward);
        assert_eq!(hs.handle_input(NOW, CONNECT_4A), CONNECT_4A.len());
        assert!(!hs.wants_input());
        let Output::Authorize(req) = hs.poll_output() else { panic!("no Authorize") };
        assert_eq!((req.addr, req.host), (None, Some("example.com")));
        assert_eq!(hs.authorize(NOW, &rules, CLIENT), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Connect(Target::Host("example.com", 80)));
        hs.handle_connected(NOW, Ok(bound)).expect("connecting");
        // An IPv6 local address goes out as 0.0.0.0 with its port.
        let zeros = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 40002);
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, zeros)));
        assert_eq!(hs.poll_output(), Output::Relay);
    });
}

#[test]
fn server_connect_ipv6_resolution_with_retry() {
    let rules = rules();
    let first = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let second = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
    let bound: SocketAddr = (Ipv6Addr::LOCALHOST, 40003).into();
    assert_no_alloc("server CONNECT (4a, IPv6, retried)", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        assert_eq!(hs.handle_input(NOW, CONNECT_4A), CONNECT_4A.len());
        assert_eq!(hs.poll_output(), Output::Resolve { host: "example.com", port: 80 });
        hs.handle_resolved(NOW, Ok(first)).expect("resolving");
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        assert_eq!(hs.authorize(NOW, &rules, CLIENT), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Connect(Target::Addr(SocketAddr::new(first, 80))));
        // The first address is unreachable: try the lookup's next one, authorized again.
        hs.retry_connect(NOW, second).expect("retrying");
        let Output::Authorize(req) = hs.poll_output() else { panic!("no Authorize for the retry") };
        assert_eq!(req.addr, Some(second));
        assert_eq!(hs.authorize(NOW, &rules, CLIENT), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Connect(Target::Addr(SocketAddr::new(second, 80))));
        hs.handle_connected(NOW, Ok(bound)).expect("connecting");
        let zeros = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 40003);
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, zeros)));
        assert_eq!(hs.poll_output(), Output::Relay);
    });
}

#[test]
fn server_bind() {
    let rules = rules();
    let listening = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 50000);
    let peer = SocketAddrV4::new([192, 0, 2, 7].into(), 20);
    assert_no_alloc("server BIND", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        assert_eq!(hs.handle_input(NOW, BIND), BIND.len());
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        assert_eq!(hs.authorize(NOW, &rules, CLIENT), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Listen { expected_peer: (*peer.ip()).into() });
        hs.handle_listening(NOW, Ok(listening.into())).expect("listening");
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, listening)));
        assert!(matches!(hs.poll_output(), Output::Wait { deadline: Some(_) }));
        hs.handle_bind_peer(NOW, Ok(peer.into())).expect("peer");
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, peer)));
        assert_eq!(hs.poll_output(), Output::Relay);
    });
}

#[test]
fn server_rejections() {
    let rules = rules();
    assert_no_alloc("server: denied by rules", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, CONNECT);
        assert!(matches!(hs.poll_output(), Output::Authorize(_)));
        let stranger = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(hs.authorize(NOW, &rules, stranger), Ok(Action::Deny));
        assert_eq!(hs.poll_output(), Output::Send(Reply::rejected()));
        assert_eq!(hs.poll_output(), Output::Closed(CloseReason::Denied(ReplyCode::Rejected)));
    });
    assert_no_alloc("server: malformed request", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, b"\x05\x01");
        assert_eq!(hs.poll_output(), Output::Send(Reply::rejected()));
        assert!(matches!(hs.poll_output(), Output::Closed(CloseReason::Invalid(_))));
    });
    assert_no_alloc("server: BIND from the wrong peer", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, BIND);
        hs.accept(NOW).expect("accepting");
        assert!(matches!(hs.poll_output(), Output::Listen { .. }));
        hs.handle_listening(NOW, Ok(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 50000).into())).expect("listening");
        assert!(matches!(hs.poll_output(), Output::Send(_)));
        hs.handle_bind_peer(NOW, Ok(SocketAddrV4::new([203, 0, 113, 9].into(), 20).into())).expect("peer");
        assert_eq!(hs.poll_output(), Output::Send(Reply::rejected()));
        assert!(matches!(hs.poll_output(), Output::Closed(CloseReason::WrongPeer(_))));
    });
    assert_no_alloc("server: forbidden literal destination", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, b"\x04\x01\x00\x50\x00\x00\x00\x00user\0");
        assert_eq!(hs.poll_output(), Output::Send(Reply::rejected()));
        assert_eq!(hs.poll_output(), Output::Closed(CloseReason::Forbidden(Ipv4Addr::UNSPECIFIED.into())));
    });
    assert_no_alloc("server: name resolved to a forbidden destination", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, CONNECT_4A);
        assert!(matches!(hs.poll_output(), Output::Resolve { .. }));
        hs.handle_resolved(NOW, Ok(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().into())).expect("resolving");
        assert_eq!(hs.poll_output(), Output::Send(Reply::rejected()));
        assert_eq!(hs.poll_output(), Output::Closed(CloseReason::Forbidden(Ipv4Addr::UNSPECIFIED.into())));
    });
    assert_no_alloc("server: retry to a forbidden destination", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, CONNECT_4A);
        assert!(matches!(hs.poll_output(), Output::Resolve { .. }));
        hs.handle_resolved(NOW, Ok(Ipv4Addr::new(93, 184, 215, 14).into())).expect("resolving");
        hs.accept(NOW).expect("accepting");
        assert!(matches!(hs.poll_output(), Output::Connect(_)));
        hs.retry_connect(NOW, Ipv6Addr::UNSPECIFIED.into()).expect("retrying");
        assert_eq!(hs.poll_output(), Output::Send(Reply::rejected()));
        assert_eq!(hs.poll_output(), Output::Closed(CloseReason::Forbidden(Ipv6Addr::UNSPECIFIED.into())));
    });
    assert_no_alloc("server: handshake timeout", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, &CONNECT[..3]);
        let Output::Wait { deadline: Some(deadline) } = hs.poll_output() else { panic!("no deadline") };
        hs.handle_timeout(deadline);
        assert_eq!(hs.poll_output(), Output::Closed(CloseReason::HandshakeTimeout));
    });
}

#[test]
fn client() {
    let granted = Reply::new(ReplyCode::Granted, SocketAddrV4::new([127, 0, 0, 1].into(), 40000)).to_bytes();
    assert_no_alloc("client CONNECT (4a)", || {
        let mut hs = ClientHandshake::connect_host("example.com", 80, b"user").expect("request");
        assert_eq!(hs.request_bytes(), CONNECT_4A);
        assert_eq!(hs.handle_input(&granted[..3]), Ok((3, None)));
        let (used, event) = hs.handle_input(&granted[3..]).expect("reply");
        assert_eq!((used, event), (5, Some(ClientEvent::Granted(SocketAddrV4::new([127, 0, 0, 1].into(), 40000)))));
        assert!(hs.is_done());
    });
    assert_no_alloc("client BIND", || {
        let mut hs = ClientHandshake::bind(SocketAddrV4::new([192, 0, 2, 7].into(), 21), b"user").expect("request");
        assert_eq!(hs.request_bytes(), BIND);
        let mut replies = [0u8; 16];
        replies[..8].copy_from_slice(&granted);
        replies[8..].copy_from_slice(&Reply::rejected().to_bytes());
        let (used, first) = hs.handle_input(&replies).expect("first reply");
        assert!(matches!(first, Some(ClientEvent::BindListening(_))));
        let (_, second) = hs.handle_input(&replies[used..]).expect("second reply");
        assert_eq!(second, Some(ClientEvent::Rejected(ReplyCode::Rejected)));
    });
}

#[test]
fn relay_bookkeeping() {
    let idle = Duration::from_secs(300);
    assert_no_alloc("relay: early data, half-closes both ways, done", || {
        let mut relay = Relay::new(NOW, idle);
        relay.handle_read(NOW, Side::Client, 5);
        relay.handle_written(NOW, Side::Client, 5);
        for _ in 0..100 {
            relay.handle_read(NOW, Side::Upstream, 16 * 1024);
            relay.handle_written(NOW, Side::Upstream, 16 * 1024);
            assert!(matches!(relay.poll_output(), RelayOutput::Wait { .. }));
        }
        relay.handle_eof(NOW, Side::Upstream);
        assert_eq!(relay.poll_output(), RelayOutput::Shutdown(Side::Client));
        relay.handle_eof(NOW, Side::Client);
        assert_eq!(relay.poll_output(), RelayOutput::Shutdown(Side::Upstream));
        assert_eq!(relay.poll_output(), RelayOutput::Done(RelayEnd::Closed));
        let _ = format_args!("{}", RelayEnd::Closed);
        relay.bytes(Side::Upstream)
    });
    assert_no_alloc("relay: reset and idle", || {
        let mut relay = Relay::new(NOW, idle);
        relay.handle_error(NOW, Side::Upstream, Fault::Reset);
        assert_eq!(relay.poll_output(), RelayOutput::Abort(Side::Client));
        let mut quiet = Relay::new(NOW, idle);
        quiet.handle_timeout(NOW + idle);
        assert_eq!(quiet.poll_output(), RelayOutput::Done(RelayEnd::Idle));
    });
}

#[test]
fn ident() {
    use socks4_core::ident::{self, IdentReply, Query};
    let rules = Rules::parse("allow from 127.0.0.0/8 ident").expect("rules parse");
    let bound = SocketAddrV4::new([127, 0, 0, 1].into(), 40002);
    assert_no_alloc("ident query and reply parser", || {
        let query = Query::new(40000, 1080);
        assert_eq!(query.as_bytes(), b"40000, 1080\r\n");
        let reply = b"40000 , 1080 : USERID : UNIX , UTF-8 : us:er \r\n";
        let Ok(socks4_core::Status::Complete((parsed, used))) = ident::parse_reply(reply, &query) else {
            panic!("reply parses")
        };
        assert_eq!((parsed, used), (IdentReply::User { os: "UNIX", charset: Some("UTF-8"), user: b"us:er" }, 47));
        assert!(ident::parse_reply(&reply[..20], &query).is_ok());
        assert!(ident::parse_reply(b"1, 2 : ERROR : NO-USER\r\n", &query).is_err());
    });
    assert_no_alloc("server CONNECT with ident", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, CONNECT);
        assert_eq!(hs.authorize(NOW, &rules, CLIENT), Ok(Action::Allow));
        assert_eq!(hs.poll_output(), Output::Ident);
        assert!(matches!(hs.poll_output(), Output::Wait { deadline: Some(_) }));
        let query = Query::new(40000, 1080);
        let Ok(socks4_core::Status::Complete((reply, _))) =
            ident::parse_reply(b"40000,1080:USERID:UNIX:user\n", &query)
        else {
            panic!("reply parses")
        };
        hs.handle_ident(NOW, Ok(reply)).expect("asking identd");
        assert_eq!(hs.poll_output(), Output::Connect(SocketAddrV4::new([127, 0, 0, 1].into(), 80).into()));
        hs.handle_connected(NOW, Ok(bound.into())).expect("connecting");
        assert_eq!(hs.poll_output(), Output::Send(Reply::new(ReplyCode::Granted, bound)));
        assert_eq!(hs.poll_output(), Output::Relay);
    });
    assert_no_alloc("server: identd names another user (93) or is unreachable (92)", || {
        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, CONNECT);
        hs.accept_with_ident(NOW).expect("deciding");
        assert_eq!(hs.poll_output(), Output::Ident);
        hs.handle_ident(NOW, Ok(IdentReply::User { os: "UNIX", charset: None, user: b"root" })).expect("asking");
        assert_eq!(hs.poll_output(), Output::Send(Reply { code: ReplyCode::IdentMismatch, ..Reply::rejected() }));
        assert_eq!(hs.poll_output(), Output::Closed(CloseReason::IdentMismatch));

        let mut hs = ServerHandshake::new(NOW, Limits::default(), Timeouts::default());
        hs.handle_input(NOW, CONNECT);
        hs.accept_with_ident(NOW).expect("deciding");
        assert_eq!(hs.poll_output(), Output::Ident);
        let Output::Wait { deadline: Some(deadline) } = hs.poll_output() else { panic!("no deadline") };
        hs.handle_timeout(deadline);
        assert_eq!(hs.poll_output(), Output::Send(Reply { code: ReplyCode::IdentUnreachable, ..Reply::rejected() }));
        assert!(matches!(hs.poll_output(), Output::Closed(CloseReason::IdentUnavailable(_))));
    });
}
