//! Property tests: codec round trips, split-anywhere equivalence, arbitrary input safety, the
//! server state machine under arbitrary event sequences (both name modes, IPv4/IPv6/mapped/forbidden
//! addresses, retries, upstream refusals), the relay bookkeeping under arbitrary event sequences and,
//! with `std`, `driver::connect_candidates`.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;

use proptest::prelude::*;
use socks4_core::rules::{Rules, is_forbidden_destination};
use socks4_core::{
    ClientHandshake, CloseReason, Command, Dest, Failure, Fault, Limits, MAX_REQUEST_LEN, Names, Output, Relay,
    RelayEnd, RelayOutput, Reply, ReplyCode, Request, ServerHandshake, Side, Status, Target, Timeouts, parse_request,
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
        Request::new(self.command, self.port, dest, &self.user)
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

    /// `ClientHandshake::bind_to` sends the BIND a server parses back to the same destination
    /// (the IPv4 address, or the SOCKS4a name), port and user id, as `connect_to` does for CONNECT.
    #[test]
    fn bind_to_and_connect_to_round_trip(req in request()) {
        let r = req.as_request();
        for (command, hs) in [
            (Command::Bind, ClientHandshake::bind_to(r.target(), r.user_id)),
            (Command::Connect, ClientHandshake::connect_to(r.target(), r.user_id)),
        ] {
            let hs = hs.expect("a valid request encodes");
            let parsed = parse_request(hs.request_bytes(), &Limits::default());
            let expected = Request::new(command, r.port, r.dest, r.user_id);
            prop_assert_eq!(parsed, Ok(Status::Complete((expected, hs.request_bytes().len()))));
        }
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

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(a: u16, b: u16, h: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(a, b, 0, 0, 0, 0, 0, h))
}

const fn mapped(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V6(Ipv4Addr::new(a, b, c, d).to_ipv6_mapped())
}

/// Never real destinations, in each spelling.
const FORBIDDEN: [IpAddr; 10] = [
    v4(0, 0, 0, 0),
    v4(0, 9, 9, 9),
    v4(255, 255, 255, 255),
    v4(224, 0, 0, 1),
    v6(0, 0, 0),
    v6(0xff02, 0, 1),
    mapped(0, 0, 0, 0),
    mapped(0, 0, 0, 7),
    mapped(255, 255, 255, 255),
    mapped(239, 1, 2, 3),
];

/// Addresses rules single out, and a few that repeat (so lookups have duplicates).
const SPECIAL: [IpAddr; 9] = [
    v4(127, 0, 0, 1),
    v6(0, 0, 1),
    mapped(127, 0, 0, 1),
    v4(10, 0, 0, 1),
    v6(0xfd00, 0, 1),
    v4(192, 0, 2, 1),
    mapped(192, 0, 2, 1),
    v6(0x2001, 0xdb8, 1),
    v6(0x2001, 0xdb8, 2),
];

/// Any address a resolver or a socket could hand over: IPv4, IPv6, IPv4-mapped, forbidden.
fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => any::<[u8; 4]>().prop_map(IpAddr::from),
        2 => any::<[u16; 8]>().prop_map(IpAddr::from),
        1 => any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        3 => prop::sample::select(FORBIDDEN.to_vec()),
        3 => prop::sample::select(SPECIAL.to_vec()),
    ]
}

fn sock() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        Just(Failure::TimedOut),
        Just(Failure::Refused),
        Just(Failure::Unreachable),
        Just(Failure::NotFound),
        Just(Failure::Other),
        (90u8..=93).prop_map(|c| Failure::Rejected(ReplyCode::from_code(c).expect("90..=93"))),
    ]
}

/// One thing that can happen to a server handshake.
#[derive(Debug, Clone)]
enum Event {
    Input(Vec<u8>),
    Eof,
    Advance(u16),
    Accept,
    Reject(u8),
    Authorize(usize, IpAddr),
    Resolved(Result<IpAddr, Failure>),
    Connected(Result<SocketAddr, Failure>),
    Retry(IpAddr),
    Listening(Result<SocketAddr, Failure>),
    /// `Ok(None)`: the expected peer, as the handshake announced it.
    Peer(Result<Option<SocketAddr>, Failure>),
    /// Answers what the handshake last asked for with this address and port (the flag picks
    /// `authorize` over `accept`, `retry_connect` over `handle_connected`, another peer over the
    /// expected one), so that deep states (retries, BIND's second reply) are reached often.
    Answer(IpAddr, u16, bool),
}

/// What the handshake last asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Resolve,
    Decide,
    Connect,
    Listen,
    Peer,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => prop_oneof![
            Just(b"\x04\x01\x00\x50\x7f\x00\x00\x01u\0".to_vec()),
            Just(b"\x04\x02\x00\x50\x7f\x00\x00\x01\0".to_vec()),
            Just(b"\x04\x01\x00\x50\x00\x00\x00\x01\0host\0".to_vec()),
            Just(b"\x04\x01\x01\xbb\x00\x00\x00\x01u\0dual.example\0".to_vec()),
            Just(b"\x04\x02\x00\x15\x00\x00\x00\x01\0peer\0".to_vec()),
            Just(b"\x04\x01\x00\x50\x00\x00\x00\x00u\0".to_vec()),
            Just(b"\x04\x01\x00\x50\xff\xff\xff\xff\0".to_vec()),
            Just(b"\x04\x01\x00\x50\xe0\x00\x00\x01\0".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ].prop_map(Event::Input),
        1 => Just(Event::Eof),
        2 => (0u16..20_000).prop_map(Event::Advance),
        2 => Just(Event::Accept),
        1 => (89u8..=94).prop_map(Event::Reject),
        2 => (0..RULES.len(), ip()).prop_map(|(r, client)| Event::Authorize(r, client)),
        3 => prop_oneof![3 => ip().prop_map(Ok), 1 => failure().prop_map(Err)].prop_map(Event::Resolved),
        3 => prop_oneof![2 => sock().prop_map(Ok), 1 => failure().prop_map(Err)].prop_map(Event::Connected),
        2 => ip().prop_map(Event::Retry),
        2 => prop_oneof![2 => sock().prop_map(Ok), 1 => failure().prop_map(Err)].prop_map(Event::Listening),
        2 => prop_oneof![
            2 => Just(Ok(None)),
            2 => sock().prop_map(|a| Ok(Some(a))),
            1 => failure().prop_map(Err),
        ].prop_map(Event::Peer),
        4 => (ip(), any::<u16>(), any::<bool>()).prop_map(|(ip, port, alt)| Event::Answer(ip, port, alt)),
    ]
}

const RULES: [&str; 4] =
    ["", "deny", "deny to loopback\ndeny to ::/0\nallow to 0.0.0.0/0\nallow to *", "allow to *.example"];

/// What the next outputs must be, after a call whose outcome is known.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Send(Reply),
    Closed(CloseReason),
    /// `Authorize` for this address.
    Authorize(IpAddr),
}

/// 91, then `Closed(reason)`.
fn refused(reason: CloseReason) -> Vec<Want> {
    vec![Want::Send(Reply::rejected()), Want::Closed(reason)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Arbitrary event sequences, in either name mode, never panic, and outputs respect the protocol:
    /// at most two replies, a rejection reply is followed only by `Closed`, terminal outputs stay
    /// terminal, `Resolve` and `Listen` at most once and `Connect` once per address tried, a deadline
    /// is never handed out at or before `now`, and a `Misuse` changes nothing. Addresses: no forbidden
    /// CONNECT destination reaches `Authorize` or `Connect` (literal, resolved and retried ones are
    /// refused with 91 and `Forbidden`); a forwarded name never resolves, is authorized without an
    /// address and connected to as `Target::Host`; `retry_connect` works exactly while a resolved
    /// name's `Connect` is pending, authorizes the next address and keeps the first connect's deadline;
    /// an upstream's `Rejected(code)` is replied with that code (91 for 90); `wants_input()` is true
    /// exactly while no request is complete and the handshake is open.
    #[test]
    fn server_state_machine_is_well_behaved(forward in any::<bool>(), events in proptest::collection::vec(event(), 0..40)) {
        let timeouts = Timeouts::default().with_handshake(Duration::from_secs(5)).with_connect(Duration::from_secs(5)).with_bind(Duration::from_secs(5));
        let mut now = Duration::ZERO;
        let names = if forward { Names::Forward } else { Names::Resolve };
        let mut hs = ServerHandshake::new(now, Limits::new(8, 16), timeouts).with_names(names);
        let rules: Vec<Rules> = RULES.iter().map(|r| Rules::parse(r).unwrap()).collect();
        let mut terminal = None::<String>;
        let (mut replies, mut rejected, mut closed) = (0, false, false);
        let (mut resolves, mut listens, mut connects, mut retries) = (0, 0, 0, 0);
        let mut connect_pending = false;
        let mut asked = None::<Ask>;
        let mut first_connect_deadline = None;
        let mut connected_to = Vec::new();
        let mut want: Vec<Want> = Vec::new();
        for ev in events {
            let before = format!("{hs:?}");
            let had_request = hs.request().is_some();
            let connect = hs.request().is_some_and(|r| r.command == Command::Connect);
            let by_name = hs.request().is_some_and(|r| matches!(r.dest, Dest::Domain(_)));
            let ev = match (ev, asked) {
                (Event::Answer(_, port, _), None) => Event::Advance(port % 1000),
                (Event::Answer(ip, _, _), Some(Ask::Resolve)) => Event::Resolved(Ok(ip)),
                (Event::Answer(ip, port, true), Some(Ask::Decide)) => Event::Authorize(usize::from(port) % RULES.len(), ip),
                (Event::Answer(..), Some(Ask::Decide)) => Event::Accept,
                (Event::Answer(ip, _, true), Some(Ask::Connect)) => Event::Retry(ip),
                (Event::Answer(ip, port, false), Some(Ask::Connect)) => Event::Connected(Ok(SocketAddr::new(ip, port))),
                (Event::Answer(ip, port, _), Some(Ask::Listen)) => Event::Listening(Ok(SocketAddr::new(ip, port))),
                (Event::Answer(ip, port, true), Some(Ask::Peer)) => Event::Peer(Ok(Some(SocketAddr::new(ip, port)))),
                (Event::Answer(..), Some(Ask::Peer)) => Event::Peer(Ok(None)),
                (ev, _) => ev,
            };
            let result = match ev {
                Event::Input(b) => {
                    let n = hs.handle_input(now, &b);
                    prop_assert!(n <= b.len());
                    if let (false, Some(req)) = (had_request, hs.request()) {
                        if let (Command::Connect, Dest::Ip(ip)) = (req.command, req.dest) {
                            if is_forbidden_destination(ip.into()) {
                                want = refused(CloseReason::Forbidden(ip.into()));
                            }
                        }
                    }
                    Ok(())
                }
                Event::Eof => { hs.handle_eof(now); Ok(()) }
                Event::Advance(ms) => { now += Duration::from_millis(ms.into()); hs.handle_timeout(now); Ok(()) }
                Event::Accept => hs.accept(now),
                Event::Reject(c) => ReplyCode::from_code(c).map_or(Ok(()), |c| hs.reject(c)),
                Event::Authorize(r, client) => hs.authorize(now, &rules[r], client).map(drop),
                Event::Resolved(r) => {
                    let res = hs.handle_resolved(now, r);
                    match r {
                        Ok(ip) if res.is_ok() && connect && is_forbidden_destination(ip) => {
                            want = refused(CloseReason::Forbidden(ip.to_canonical()));
                        }
                        Ok(ip) if res.is_ok() => want = vec![Want::Authorize(ip.to_canonical())],
                        _ => {}
                    }
                    res
                }
                Event::Connected(r) => {
                    let res = hs.handle_connected(now, r);
                    if res.is_ok() {
                        connect_pending = false;
                        if let Err(Failure::Rejected(code)) = r {
                            let code = if code == ReplyCode::Granted { ReplyCode::Rejected } else { code };
                            want = vec![
                                Want::Send(Reply { code, ..Reply::rejected() }),
                                Want::Closed(CloseReason::ConnectFailed(Failure::Rejected(code))),
                            ];
                        }
                    }
                    res
                }
                Event::Retry(next) => {
                    let deadline = hs.deadline();
                    let res = hs.retry_connect(now, next);
                    prop_assert_eq!(res.is_ok(), connect_pending && by_name && !forward, "retry_connect: {:?}", res);
                    if res.is_ok() {
                        connect_pending = false;
                        retries += 1;
                        if is_forbidden_destination(next) {
                            want = refused(CloseReason::Forbidden(next.to_canonical()));
                        } else {
                            prop_assert_eq!(hs.deadline(), deadline, "retry_connect moved the deadline");
                            want = vec![Want::Authorize(next.to_canonical())];
                        }
                    }
                    res
                }
                Event::Listening(r) => hs.handle_listening(now, r),
                Event::Peer(p) => {
                    let expected = hs.access_request().and_then(|r| r.addr).unwrap_or(Ipv4Addr::UNSPECIFIED.into());
                    hs.handle_bind_peer(now, p.map(|p| p.unwrap_or(SocketAddr::new(expected, 1))))
                }
                Event::Answer(..) => unreachable!("mapped above"),
            };
            if result.is_err() {
                prop_assert_eq!(format!("{hs:?}"), before, "Misuse changed the state");
            }
            let req_command = hs.request().map(|r| r.command);
            let req_name = hs.request().and_then(|r| match r.dest {
                Dest::Domain(name) => Some(name.to_owned()),
                Dest::Ip(_) => None,
            });
            for _ in 0..8 {
                let out = hs.poll_output();
                let text = format!("{out:?}");
                if let Some(t) = &terminal {
                    prop_assert_eq!(&text, t, "terminal output changed");
                    break;
                }
                if !want.is_empty() {
                    let ok = match (want.remove(0), &out) {
                        (Want::Send(r), Output::Send(got)) => r == *got,
                        (Want::Closed(r), Output::Closed(got)) => r == *got,
                        (Want::Authorize(ip), Output::Authorize(req)) => req.addr == Some(ip),
                        _ => false,
                    };
                    prop_assert!(ok, "unexpected output {}", text);
                }
                match out {
                    Output::Send(reply) => {
                        asked = (replies == 0 && listens == 1 && reply.code == ReplyCode::Granted).then_some(Ask::Peer);
                        replies += 1;
                        prop_assert!(replies <= 2, "more than two replies");
                        prop_assert!(!rejected, "a reply after a rejection");
                        rejected = reply.code != ReplyCode::Granted;
                    }
                    Output::Resolve { .. } => {
                        asked = Some(Ask::Resolve);
                        prop_assert!(!rejected);
                        resolves += 1;
                        prop_assert!(resolves <= 1, "Resolve twice");
                        prop_assert!(!(forward && req_command == Some(Command::Connect)), "a forwarded name resolved");
                    }
                    Output::Listen { .. } => {
                        asked = Some(Ask::Listen);
                        prop_assert!(!rejected);
                        listens += 1;
                        prop_assert!(listens <= 1, "Listen twice");
                    }
                    Output::Connect(target) => {
                        prop_assert!(!rejected);
                        connects += 1;
                        prop_assert!(connects <= 1 + retries, "Connect {} times after {} retries", connects, retries);
                        match target {
                            Target::Addr(a) => {
                                prop_assert!(!is_forbidden_destination(a.ip()), "Connect to forbidden {}", a);
                                connected_to.push(a.ip());
                            }
                            Target::Host(..) => prop_assert!(forward, "Connect to a name without Names::Forward"),
                        }
                        connect_pending = true;
                        asked = Some(Ask::Connect);
                        let d = hs.deadline();
                        match first_connect_deadline {
                            None => first_connect_deadline = d,
                            Some(first) => prop_assert!(d.is_some_and(|d| d <= first), "retry deadline {:?} after the first {:?}", d, first),
                        }
                    }
                    Output::Wait { deadline } => {
                        prop_assert!(!rejected, "waiting after a rejection");
                        let Some(d) = deadline else { panic!("Wait without a deadline before the relay") };
                        prop_assert!(d > now, "deadline {:?} not after now {:?}", d, now);
                        break;
                    }
                    Output::Relay => { prop_assert!(!rejected); prop_assert!(replies >= 1); terminal = Some(text); break; }
                    Output::Closed(reason) => {
                        if let CloseReason::Forbidden(ip) = reason {
                            prop_assert!(is_forbidden_destination(ip) && ip == ip.to_canonical());
                            prop_assert_eq!(req_command, Some(Command::Connect));
                        }
                        closed = true;
                        connect_pending = false;
                        asked = None;
                        terminal = Some(text);
                        break;
                    }
                    Output::Authorize(access) => {
                        asked = Some(Ask::Decide);
                        prop_assert!(!rejected);
                        prop_assert_eq!(req_command, Some(access.command), "Authorize without a request");
                        if let (true, Command::Connect, Some(name)) = (forward, access.command, &req_name) {
                            prop_assert_eq!((access.addr, access.host), (None, Some(name.as_str())), "forwarded name");
                        }
                        if let (Command::Connect, Some(ip)) = (access.command, access.addr) {
                            prop_assert!(!is_forbidden_destination(ip), "Authorize for forbidden {}", ip);
                        }
                        break;
                    }
                    _ => break,
                }
            }
            prop_assert!(want.is_empty(), "outputs not seen: {:?}", want);
            prop_assert_eq!(hs.wants_input(), hs.request().is_none() && !closed, "wants_input");
        }
        prop_assert!(connected_to.iter().all(|&ip| !is_forbidden_destination(ip)));
    }
}

/// Lookup results with duplicates across spellings (mapped and plain) and families.
#[cfg(feature = "std")]
fn lookup() -> impl Strategy<Value = Vec<SocketAddr>> {
    let ip = prop_oneof![
        3 => prop::sample::select(SPECIAL.to_vec()),
        2 => prop::sample::select(FORBIDDEN.to_vec()),
        1 => any::<[u8; 4]>().prop_map(IpAddr::from),
        1 => any::<[u16; 8]>().prop_map(IpAddr::from),
    ];
    proptest::collection::vec((ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port)), 0..12)
}

#[cfg(feature = "std")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// `connect_candidates`: no duplicates; no forbidden address unless it is the only one (and
    /// then every input was forbidden and it is the first); IPv4 before IPv6; the lookup's order
    /// within each family; every non-forbidden input present (canonical); empty only for no input.
    #[test]
    fn connect_candidates_orders_and_filters(lookup in lookup()) {
        let out = socks4_core::driver::connect_candidates(lookup.iter().copied());
        let canonical: Vec<IpAddr> = lookup.iter().map(|a| a.ip().to_canonical()).collect();
        let mut usable: Vec<IpAddr> = Vec::new();
        for &ip in &canonical {
            if !is_forbidden_destination(ip) && !usable.contains(&ip) {
                usable.push(ip);
            }
        }
        for (i, ip) in out.iter().enumerate() {
            prop_assert!(!out[..i].contains(ip), "duplicate {} in {:?}", ip, out);
            prop_assert_eq!(*ip, ip.to_canonical());
        }
        if out.iter().any(|&ip| is_forbidden_destination(ip)) {
            prop_assert_eq!(out.len(), 1, "a forbidden address among others: {:?}", out);
            prop_assert!(usable.is_empty());
            prop_assert_eq!(out[0], canonical[0]);
        }
        prop_assert_eq!(out.is_empty(), lookup.is_empty());
        let first_v6 = out.iter().position(IpAddr::is_ipv6).unwrap_or(out.len());
        prop_assert!(out[first_v6..].iter().all(IpAddr::is_ipv6), "IPv4 after IPv6: {:?}", out);
        for family in [IpAddr::is_ipv4, IpAddr::is_ipv6] {
            let got: Vec<IpAddr> = out.iter().copied().filter(|ip| family(ip) && !is_forbidden_destination(*ip)).collect();
            let want: Vec<IpAddr> = usable.iter().copied().filter(family).collect();
            prop_assert_eq!(got, want, "order within a family, every usable input present");
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
        // Zero bytes often: a zero-byte read or write is no progress (the model does not move `last`).
        6 => (side(), prop_oneof![1 => Just(0u16), 5 => any::<u16>()]).prop_map(|(s, n)| RelayEvent::Read(s, n)),
        6 => (side(), prop_oneof![1 => Just(0u16), 5 => any::<u16>()]).prop_map(|(s, n)| RelayEvent::Written(s, n)),
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
                        prop_assert!(shut != [true; 2], "Wait after the second Shutdown: Done belongs to the same drain");
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

// ---- ident (RFC 1413) ---------------------------------------------------------------------------

mod ident_props {
    use core::time::Duration;

    use proptest::prelude::*;
    use socks4_core::ident::{self, ErrorKind, IdentReply, Query};
    use socks4_core::{CloseReason, Failure, Limits, Output, Reply, ReplyCode, ServerHandshake, Status, Timeouts};

    /// An owned ident reply and the text identd would send for it.
    #[derive(Debug, Clone)]
    enum Answer {
        User { os: String, charset: Option<String>, user: Vec<u8> },
        Error(String),
    }

    /// 1 to 64 printable ASCII characters without `:` (and, for an operating system, without `,`).
    fn token(comma: bool) -> impl Strategy<Value = String> {
        if comma { "[!-9;-~]{1,64}" } else { "[!-+\\--9;-~]{1,64}" }
    }

    fn answer() -> impl Strategy<Value = Answer> {
        // A user id: any octets but NUL, CR and LF, not starting or ending with white space.
        let octet = any::<u8>().prop_map(|b| if matches!(b, 0 | b'\r' | b'\n') { b'x' } else { b });
        let user = proptest::collection::vec(octet, 1..=ident::MAX_USER_LEN).prop_map(|mut u| {
            for i in [0, u.len() - 1] {
                if matches!(u[i], b' ' | b'\t') {
                    u[i] = b'u';
                }
            }
            u
        });
        let error = prop_oneof![
            Just("NO-USER".to_string()),
            Just("hidden-user".to_string()),
            Just("INVALID-PORT".to_string()),
            Just("UNKNOWN-ERROR".to_string()),
            token(true),
        ];
        prop_oneof![
            (token(false), proptest::option::of(token(true)), user).prop_map(|(os, charset, user)| Answer::User {
                os,
                charset,
                user
            }),
            error.prop_map(Answer::Error),
        ]
    }

    /// The reply line for `answer` with the white space `ws` (cycled) between the fields.
    fn encode(q: &Query, answer: &Answer, ws: &[String], keyword_case: u8, lf_only: bool) -> Vec<u8> {
        let mut gaps = ws.iter().cycle();
        let mut gap = || gaps.next().cloned().unwrap_or_default();
        let case = |s: &str| if keyword_case % 2 == 0 { s.to_string() } else { s.to_ascii_lowercase() };
        let mut line = format!("{}{}{},{}{}{}:{}", gap(), q.client_port(), gap(), gap(), q.server_port(), gap(), gap())
            .into_bytes();
        match answer {
            Answer::User { os, charset, user } => {
                line.extend(format!("{}{}:{}{}{}", case("USERID"), gap(), gap(), os, gap()).bytes());
                if let Some(cs) = charset {
                    line.extend(format!(",{}{}{}", gap(), cs, gap()).bytes());
                }
                line.extend(format!(":{}", gap()).bytes());
                line.extend_from_slice(user);
                line.extend(gap().bytes());
            }
            Answer::Error(token) => {
                line.extend(format!("{}{}:{}{}{}", case("ERROR"), gap(), gap(), token, gap()).bytes())
            }
        }
        line.extend_from_slice(if lf_only { b"\n" } else { b"\r\n" });
        line
    }

    fn matches_answer(reply: &IdentReply<'_>, answer: &Answer) -> bool {
        match (reply, answer) {
            (IdentReply::User { os, charset, user }, Answer::User { os: o, charset: c, user: u }) => {
                os == o && charset.as_deref() == c.as_deref() && user == u
            }
            (IdentReply::Error { kind, token }, Answer::Error(t)) => {
                let known = [ErrorKind::InvalidPort, ErrorKind::NoUser, ErrorKind::HiddenUser, ErrorKind::UnknownError]
                    .into_iter()
                    .find(|k| k.to_string().eq_ignore_ascii_case(t))
                    .unwrap_or(ErrorKind::Other);
                token == t && *kind == known
            }
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Encoded with any white space, keyword case and line end, a reply parses back to itself and
        /// uses exactly its line; every strict prefix is `Partial`; split anywhere, the halves give
        /// `Partial` and then the same reply.
        #[test]
        fn ident_reply_round_trips(
            ports in any::<(u16, u16)>(),
            answer in answer(),
            ws in proptest::collection::vec("[ \t]{0,2}", 1..8),
            keyword_case in any::<u8>(),
            lf_only in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
            split in any::<prop::sample::Index>(),
        ) {
            let q = Query::new(ports.0, ports.1);
            let mut wire = encode(&q, &answer, &ws, keyword_case, lf_only);
            let len = wire.len();
            prop_assert!(len <= ident::MAX_REPLY_LEN);
            wire.extend_from_slice(&tail);
            let parsed = ident::parse_reply(&wire, &q);
            let Ok(Status::Complete((reply, used))) = parsed else {
                return Err(TestCaseError::fail(format!("{parsed:?} for {:?}", String::from_utf8_lossy(&wire[..len]))));
            };
            prop_assert_eq!(used, len);
            prop_assert!(matches_answer(&reply, &answer), "{:?} != {:?}", reply, answer);
            for end in 0..len {
                prop_assert_eq!(ident::parse_reply(&wire[..end], &q), Ok(Status::Partial), "prefix {}", end);
            }
            let at = split.index(wire.len() + 1);
            let first = ident::parse_reply(&wire[..at], &q);
            if at < len {
                prop_assert_eq!(first, Ok(Status::Partial));
            } else {
                prop_assert_eq!(first, parsed);
            }
            prop_assert_eq!(ident::parse_reply(&wire[..len], &q), parsed, "the tail changes nothing");
            // The same reply about other ports is refused.
            let other = Query::new(ports.0.wrapping_add(1), ports.1);
            prop_assert_eq!(
                ident::parse_reply(&wire, &other),
                Err(ident::IdentError::WrongPorts { client_port: ports.0, server_port: ports.1 })
            );
        }

        /// Arbitrary bytes never panic; a verdict is final (longer input keeps it); a complete reply
        /// uses at most the input and its user id respects the protocol's limits.
        #[test]
        fn ident_arbitrary_bytes_are_safe(
            ports in prop_oneof![Just((6191u16, 23u16)), any::<(u16, u16)>()],
            head in prop_oneof![Just(b"6191, 23 : ".to_vec()), Just(Vec::new())],
            body in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b':'), Just(b'\n'), Just(b' ')], 0..1100),
            more in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let q = Query::new(ports.0, ports.1);
            let mut bytes = head;
            bytes.extend_from_slice(&body);
            let result = ident::parse_reply(&bytes, &q);
            match result {
                Ok(Status::Complete((reply, used))) => {
                    prop_assert!(used <= bytes.len() && used <= ident::MAX_REPLY_LEN);
                    prop_assert_eq!(bytes[used - 1], b'\n');
                    if let IdentReply::User { user, .. } = reply {
                        prop_assert!(!user.is_empty() && user.len() <= ident::MAX_USER_LEN);
                        prop_assert!(!user.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')));
                    }
                }
                Ok(Status::Partial) => prop_assert!(bytes.len() < ident::MAX_REPLY_LEN),
                Err(_) => {}
            }
            let mut longer = bytes.clone();
            longer.extend_from_slice(&more);
            if result != Ok(Status::Partial) {
                prop_assert_eq!(ident::parse_reply(&longer, &q), result);
            }
        }

        /// In the ident phase the answer alone decides: the request's user id, byte for byte, goes
        /// on to `Connect`; another user or an `ERROR` gets 93; no answer gets 92.
        #[test]
        fn ident_answer_decides_the_reply(
            user_id in proptest::collection::vec(1u8..=255, 0..12),
            identd in proptest::collection::vec(1u8..=255, 1..12),
            same in any::<bool>(),
            outcome in 0u8..4,
        ) {
            let now = Duration::from_secs(1);
            let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
            let mut wire = b"\x04\x01\x00\x50\x0a\x00\x00\x01".to_vec();
            wire.extend_from_slice(&user_id);
            wire.push(0);
            hs.handle_input(now, &wire);
            hs.accept_with_ident(now).unwrap();
            prop_assert_eq!(hs.poll_output(), Output::Ident);
            let named: &[u8] = if same { &user_id } else { &identd };
            let rejected = |code| Output::Send(Reply { code, ..Reply::rejected() });
            match outcome {
                0 => {
                    hs.handle_ident(now, Ok(IdentReply::User { os: "UNIX", charset: None, user: named })).unwrap();
                    if named == user_id.as_slice() {
                        prop_assert!(matches!(hs.poll_output(), Output::Connect(_)));
                    } else {
                        prop_assert_eq!(hs.poll_output(), rejected(ReplyCode::IdentMismatch));
                        prop_assert_eq!(hs.poll_output(), Output::Closed(CloseReason::IdentMismatch));
                    }
                }
                1 => {
                    hs.handle_ident(now, Ok(IdentReply::Error { kind: ErrorKind::HiddenUser, token: "HIDDEN-USER" })).unwrap();
                    prop_assert_eq!(hs.poll_output(), rejected(ReplyCode::IdentMismatch));
                }
                2 => {
                    hs.handle_ident(now, Err(Failure::Refused)).unwrap();
                    prop_assert_eq!(hs.poll_output(), rejected(ReplyCode::IdentUnreachable));
                }
                _ => {
                    let Output::Wait { deadline: Some(d) } = hs.poll_output() else { panic!("no deadline") };
                    prop_assert!(d > now);
                    hs.handle_timeout(d);
                    prop_assert_eq!(hs.poll_output(), rejected(ReplyCode::IdentUnreachable));
                    prop_assert_eq!(hs.poll_output(), Output::Closed(CloseReason::IdentUnavailable(Failure::TimedOut)));
                }
            }
        }
    }
}
