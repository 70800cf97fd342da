//! Criterion benchmarks of the codec and of one whole server handshake.
//!
//! Run with `cargo bench -p socks4-core --bench codec`.
#![allow(missing_docs, reason = "criterion_main! generates an undocumented `main`")]

use core::net::{IpAddr, SocketAddrV4};
use core::time::Duration;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use socks4_core::rules::Rules;
use socks4_core::{Limits, MAX_REQUEST_LEN, Output, Reply, ReplyCode, Request, ServerHandshake, Status, Timeouts};

const CONNECT: &[u8] = b"\x04\x01\x00\x50\x7f\x00\x00\x01user\0";
const CONNECT_4A: &[u8] = b"\x04\x01\x00\x50\x00\x00\x00\x01user\0example.com\0";

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    c.bench_function("parse_request/connect", |b| {
        b.iter(|| socks4_core::parse_request(black_box(CONNECT), black_box(&limits)))
    });
    c.bench_function("parse_request/connect_4a", |b| {
        b.iter(|| socks4_core::parse_request(black_box(CONNECT_4A), black_box(&limits)))
    });
    let reply = Reply::new(ReplyCode::Granted, SocketAddrV4::new([127, 0, 0, 1].into(), 1080)).to_bytes();
    c.bench_function("reply/parse", |b| b.iter(|| Reply::parse(black_box(&reply))));
}

fn encode(c: &mut Criterion) {
    let connect = Request::connect(SocketAddrV4::new([127, 0, 0, 1].into(), 80), b"user");
    let connect_4a = Request::connect_host("example.com", 80, b"user");
    let mut out = [0u8; MAX_REQUEST_LEN];
    c.bench_function("encode/connect", |b| b.iter(|| black_box(&connect).encode(black_box(&mut out))));
    c.bench_function("encode/connect_4a", |b| b.iter(|| black_box(&connect_4a).encode(black_box(&mut out))));
    let reply = Reply::new(ReplyCode::Granted, SocketAddrV4::new([127, 0, 0, 1].into(), 1080));
    c.bench_function("reply/to_bytes", |b| b.iter(|| black_box(reply).to_bytes()));
}

/// One CONNECT handshake from accept to `Relay`: request in, rules, connect result, reply out.
fn handshake(c: &mut Criterion) {
    let rules = Rules::parse("deny to 169.254.0.0/16\nallow from 127.0.0.0/8 port 1-1024").expect("rules parse");
    let client = IpAddr::from([127, 0, 0, 1]);
    let bound = SocketAddrV4::new([127, 0, 0, 1].into(), 40000);
    let now = Duration::from_secs(1);
    c.bench_function("server_handshake/connect_to_relay", |b| {
        b.iter(|| {
            let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default());
            let used = hs.handle_input(now, black_box(CONNECT));
            assert!(matches!(hs.poll_output(), Output::Authorize(_)));
            hs.authorize(now, black_box(&rules), client).expect("authorizing");
            assert!(matches!(hs.poll_output(), Output::Connect(_)));
            hs.handle_connected(now, Ok(bound.into())).expect("connecting");
            let Output::Send(reply) = hs.poll_output() else { panic!("no reply") };
            assert!(matches!(hs.poll_output(), Output::Relay));
            (used, reply.to_bytes())
        })
    });
    // Sanity: the inputs are what the names say.
    assert!(matches!(socks4_core::parse_request(CONNECT_4A, &Limits::default()), Ok(Status::Complete(_))));
}

criterion_group!(benches, parse, encode, handshake);
criterion_main!(benches);
