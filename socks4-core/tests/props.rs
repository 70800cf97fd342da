//! Property tests: codec round trips, split-anywhere equivalence, arbitrary input safety, and the
//! server state machine and the relay bookkeeping under arbitrary event sequences.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use proptest::prelude::*;
use socks4_core::rules::Rules;
use socks4_core::{
    Command, Dest, Failure, Fault, Limits, MAX_REQUEST_LEN, Output, Relay, RelayEnd, RelayOutput, Reply, ReplyCode,
    Request, ServerHandshake, Side, Status, Timeouts, parse_request,
};

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![Just(Command::Connect), Just(Command::Bind)]
}

/// An owned request description (proptest values cannot borrow).
#[derive(Debug, Clone)]
struct Req {
    command: Command,
    port: u16,
    ip: Option<Ipv4Addr>,
    host: String,
    user: Vec<u8>,
}

impl Req {
    fn as_request(&self) -> Request<'_> {
        let dest = match self.ip {
            Some(ip) => Dest::Ip(ip),
            None => Dest::Domain(&self.host),
        };
        Request { command: self.command, port: self.port, dest, user_id: &self.user }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0; MAX_REQUEST_LEN];
        let n = self.as_request().encode(&mut out).expect("valid by construction");
        out.truncate(n);
        out
    }
}

fn request() -> impl Strategy<Value = Req> {
    let ip = any::<[u8; 4]>()
        .prop_filter("not the 4a marker", |o| !(o[..3] == [0, 0, 0] && o[3] != 0))
        .prop_map(Ipv4Addr::from);
    (command(), any::<u16>(), proptest::option::of(ip), "[!-~]{1,255}", proptest::collection::vec(1u8..=255, 0..=255))
        .prop_map(|(command, port, ip, host, user)| Req { command, port, ip, host, user })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_round_trips(req in request(), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut bytes = req.bytes();
        let len = bytes.len();
        bytes.extend_from_slice(&tail);
        let parsed = parse_request(&bytes, &Limits::default());
        prop_assert_eq!(parsed, Ok(Status::Complete((req.as_request(), len))));
    }

    #[test]
    fn reply_round_trips(code in 90u8..=93, ip in any::<[u8; 4]>(), port in any::<u16>()) {
        let code = ReplyCode::from_code(code).unwrap();
        let reply = Reply::new(code, SocketAddrV4::new(ip.into(), port));
        prop_assert_eq!(Reply::parse(&reply.to_bytes()), Ok(Status::Complete(reply)));
    }

    #[test]
    fn every_strict_prefix_is_partial(req in request()) {
        let bytes = req.bytes();
        for end in 0..bytes.len() {
            prop_assert_eq!(parse_request(&bytes[..end], &Limits::default()), Ok(Status::Partial));
        }
    }

    /// Fed to the server split at any point (and with early data behind it), the request is
    /// consumed exactly and the same request comes out.
    #[test]
    fn split_anywhere_is_the_same_as_whole(req in request(), early in proptest::collection::vec(any::<u8>(), 0..32), split in any::<prop::sample::Index>()) {
        let mut wire = req.bytes();
        let len = wire.len();
        wire.extend_from_slice(&early);
        let at = split.index(wire.len() + 1);
        let mut hs = ServerHandshake::new(Duration::ZERO, Limits::default(), Timeouts::default());
        let first = hs.handle_input(Duration::ZERO, &wire[..at]);
        let second = hs.handle_input(Duration::ZERO, &wire[first..]);
        prop_assert_eq!(first + second, len);
        prop_assert_eq!(hs.request(), Some(req.as_request()));
    }

    /// Arbitrary bytes never panic, and a complete parse never claims more than it was given.
    #[test]
    fn arbitrary_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..600), user in any::<u8>(), host in any::<u8>()) {
        let limits = Limits::new(user, host);
        if let Ok(Status::Complete((req, used))) = parse_request(&bytes, &limits) {
            prop_assert!(used <= bytes.len());
            prop_assert!(req.user_id.len() <= user as usize);
            if let Dest::Domain(h) = req.dest { prop_assert!(h.len() <= host as usize && !h.is_empty()); }
        }
        let _ = Reply::parse(&bytes);
        let mut hs = ServerHandshake::new(Duration::ZERO, limits, Timeouts::default());
        prop_assert!(hs.handle_input(Duration::ZERO, &bytes) <= bytes.len());
    }
}

/// One thing that can happen to a server handshake.
#[derive(Debug, Clone)]
enum Event {
    Input(Vec<u8>),
    Eof,
    Advance(u16),
    Accept,
    Reject(u8),
    Authorize(bool),
    Resolved(Option<[u8; 4]>),
    Connected(bool),
    Listening(bool),
    Peer(Option<[u8; 4]>),
}

fn event() -> impl Strategy<Value = Event> {
    let ip = prop_oneof![Just([127, 0, 0, 1]), Just([10, 0, 0, 1]), any::<[u8; 4]>()];
    prop_oneof![
        4 => prop_oneof![
            Just(b"\x04\x01\x00\x50\x7f\x00\x00\x01u\0".to_vec()),
            Just(b"\x04\x02\x00\x50\x7f\x00\x00\x01\0".to_vec()),
            Just(b"\x04\x01\x00\x50\x00\x00\x00\x01\0host\0".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ].prop_map(Event::Input),
        1 => Just(Event::Eof),
        2 => (0u16..20_000).prop_map(Event::Advance),
        2 => Just(Event::Accept),
        1 => (89u8..=94).prop_map(Event::Reject),
        2 => any::<bool>().prop_map(Event::Authorize),
        2 => proptest::option::of(ip.clone()).prop_map(Event::Resolved),
        2 => any::<bool>().prop_map(Event::Connected),
        2 => any::<bool>().prop_map(Event::Listening),
        2 => proptest::option::of(ip).prop_map(Event::Peer),
    ]
}

fn ok_or(ok: bool, addr: SocketAddrV4) -> Result<std::net::SocketAddr, Failure> {
    if ok { Ok(addr.into()) } else { Err(Failure::Refused) }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Arbitrary event sequences never panic, and outputs respect the protocol: at most two replies,
    /// a rejection reply is followed only by `Closed`, terminal outputs stay terminal, each action is
    /// asked for at most once per phase, and a deadline is never handed out at or before `now`.
    #[test]
    fn server_state_machine_is_well_behaved(events in proptest::collection::vec(event(), 0..40)) {
        let timeouts = Timeouts::default().with_handshake(Duration::from_secs(5)).with_connect(Duration::from_secs(5)).with_bind(Duration::from_secs(5));
        let mut now = Duration::ZERO;
        let mut hs = ServerHandshake::new(now, Limits::new(8, 16), timeouts);
        let allow = Rules::default();
        let deny = Rules::parse("deny").unwrap();
        let addr = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9);
        let (mut replies, mut actions, mut terminal) = (0, 0, None::<String>);
        let mut rejected = false;
        for ev in events {
            match ev {
                Event::Input(b) => { let n = hs.handle_input(now, &b); prop_assert!(n <= b.len()); }
                Event::Eof => hs.handle_eof(now),
                Event::Advance(ms) => { now += Duration::from_millis(ms.into()); hs.handle_timeout(now); }
                Event::Accept => { let _ = hs.accept(now); }
                Event::Reject(c) => { let _ = ReplyCode::from_code(c).map(|c| hs.reject(c)); }
                Event::Authorize(ok) => { let _ = hs.authorize(now, if ok { &allow } else { &deny }, [127, 0, 0, 1].into()); }
                Event::Resolved(r) => { let _ = hs.handle_resolved(now, r.map(|o| Ipv4Addr::from(o).into()).ok_or(Failure::NotFound)); }
                Event::Connected(ok) => { let _ = hs.handle_connected(now, ok_or(ok, addr)); }
                Event::Listening(ok) => { let _ = hs.handle_listening(now, ok_or(ok, addr)); }
                Event::Peer(p) => { let _ = hs.handle_bind_peer(now, p.map(|ip| SocketAddrV4::new(ip.into(), 1).into()).ok_or(Failure::TimedOut)); }
            }
            for _ in 0..8 {
                let out = hs.poll_output();
                let text = format!("{out:?}");
                if let Some(t) = &terminal {
                    prop_assert_eq!(&text, t, "terminal output changed");
                    break;
                }
                match out {
                    Output::Send(reply) => {
                        replies += 1;
                        prop_assert!(replies <= 2, "more than two replies");
                        prop_assert!(!rejected, "a reply after a rejection");
                        rejected = reply.code != ReplyCode::Granted;
                    }
                    Output::Resolve { .. } | Output::Connect(_) | Output::Listen { .. } => {
                        prop_assert!(!rejected);
                        actions += 1;
                        prop_assert!(actions <= 2, "too many actions: {}", text);
                    }
                    Output::Wait { deadline } => {
                        prop_assert!(!rejected, "waiting after a rejection");
                        if let Some(d) = deadline { prop_assert!(d > now, "deadline {:?} not after now {:?}", d, now); }
                        break;
                    }
                    Output::Relay => { prop_assert!(!rejected); prop_assert!(replies >= 1); terminal = Some(text); break; }
                    Output::Closed(_) => { terminal = Some(text); break; }
                    Output::Authorize(_) => { prop_assert!(!rejected); break; }
                    _ => break,
                }
            }
        }
    }
}

/// One thing that can happen to a relay.
#[derive(Debug, Clone)]
enum RelayEvent {
    Read(Side, u16),
    Written(Side, u16),
    Eof(Side),
    Error(Side, bool),
    Advance(u16),
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Client), Just(Side::Upstream)]
}

fn relay_event() -> impl Strategy<Value = RelayEvent> {
    prop_oneof![
        6 => (side(), any::<u16>()).prop_map(|(s, n)| RelayEvent::Read(s, n)),
        6 => (side(), any::<u16>()).prop_map(|(s, n)| RelayEvent::Written(s, n)),
        2 => side().prop_map(RelayEvent::Eof),
        1 => (side(), any::<bool>()).prop_map(|(s, r)| RelayEvent::Error(s, r)),
        3 => (0u16..3_000).prop_map(RelayEvent::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Arbitrary relay event sequences: the counts are the sums of the bytes written (capped at
    /// what was read, nothing after an end of file or the end), a half-close is emitted once per
    /// direction and only with nothing in flight, `Done` comes only after both half-closes, an
    /// abort or the idle deadline, stays put, and a deadline is always after `now`.
    #[test]
    fn relay_bookkeeping_is_well_behaved(events in proptest::collection::vec(relay_event(), 0..60), idle_ms in 1u64..2_000) {
        let idle = Duration::from_millis(idle_ms);
        let mut now = Duration::from_secs(7);
        let mut relay = Relay::new(now, idle);
        // The model: per direction read, written, eof; shutdowns seen; the last progress.
        let (mut read, mut written, mut eof, mut shut) = ([0u64; 2], [0u64; 2], [false; 2], [false; 2]);
        let (mut last, mut aborted, mut errored, mut done) = (now, None::<Side>, None::<(Side, bool)>, None::<RelayEnd>);
        let ix = |s: Side| if s == Side::Client { 0 } else { 1 };
        for ev in events {
            let live = done.is_none() && errored.is_none();
            match ev {
                RelayEvent::Read(s, n) => {
                    relay.handle_read(now, s, n.into());
                    if live && !eof[ix(s)] && n > 0 { read[ix(s)] += u64::from(n); last = now; }
                }
                RelayEvent::Written(s, n) => {
                    relay.handle_written(now, s, n.into());
                    if live && n > 0 { written[ix(s)] += u64::from(n).min(read[ix(s)] - written[ix(s)]); last = now; }
                }
                RelayEvent::Eof(s) => {
                    relay.handle_eof(now, s);
                    if live && !eof[ix(s)] { eof[ix(s)] = true; last = now; }
                }
                RelayEvent::Error(s, reset) => {
                    relay.handle_error(now, s, if reset { Fault::Reset } else { Fault::Other });
                    if live { errored = Some((s, reset)); }
                }
                RelayEvent::Advance(ms) => { now += Duration::from_millis(ms.into()); relay.handle_timeout(now); }
            }
            prop_assert_eq!(relay.bytes(Side::Client), written[0]);
            prop_assert_eq!(relay.bytes(Side::Upstream), written[1]);
            for _ in 0..6 {
                match relay.poll_output() {
                    RelayOutput::Shutdown(to) => {
                        let from = ix(to.peer());
                        prop_assert!(done.is_none() && errored.is_none(), "a half-close after the end");
                        prop_assert!(!shut[from], "half-close emitted twice");
                        prop_assert!(eof[from] && read[from] == written[from], "half-close before EOF or with bytes in flight");
                        shut[from] = true;
                    }
                    RelayOutput::Abort(side) => {
                        let Some((failed, _)) = errored else { panic!("abort without an error") };
                        prop_assert_eq!(side, failed.peer());
                        prop_assert!(aborted.is_none(), "two aborts");
                        aborted = Some(side);
                    }
                    RelayOutput::Wait { deadline } => {
                        prop_assert!(done.is_none() && errored.is_none());
                        let Some(d) = deadline else { panic!("no deadline with an idle timeout") };
                        prop_assert!(d > now, "deadline {:?} not after now {:?}", d, now);
                        prop_assert_eq!(d, last + idle);
                        break;
                    }
                    RelayOutput::Done(end) => {
                        if let Some(prev) = done { prop_assert_eq!(prev, end, "Done changed"); break; }
                        match (end, errored) {
                            (RelayEnd::Closed, None) => prop_assert!(shut == [true; 2]),
                            (RelayEnd::Idle, None) => prop_assert!(now >= last + idle),
                            (RelayEnd::Reset(s), Some((f, true))) | (RelayEnd::Error(s), Some((f, false))) => {
                                prop_assert_eq!(s, f);
                                prop_assert_eq!(aborted, Some(f.peer()), "no abort before Done");
                            }
                            other => panic!("unexpected end {other:?}"),
                        }
                        done = Some(end);
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}
