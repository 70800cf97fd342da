//! Property tests: codec round trips, split-anywhere equivalence, arbitrary input safety, and the
//! server state machine under arbitrary event sequences.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use proptest::prelude::*;
use socks4_core::rules::Rules;
use socks4_core::{
    Command, Dest, Failure, Limits, MAX_REQUEST_LEN, Output, Reply, ReplyCode, Request, ServerHandshake, Status,
    Timeouts, parse_request,
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
