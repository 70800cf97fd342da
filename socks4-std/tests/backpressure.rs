//! Back-pressure: when the receiving side reads nothing, the proxy stops reading the sender, so
//! the bytes it accepts stay below the socket buffers on the way plus its own per-connection
//! bound (`MAX_PENDING` per direction), however much the sender offers.
//!
//! Measured by bytes written before the sender's socket stays full, with a generous margin
//! (the kernel's socket buffers autotune up to `tcp_rmem`/`tcp_wmem` maxima), not by timing.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use socks4_tools::checksum::pattern;

const SMALL_BUF: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;
/// Without back-pressure the proxy would take all of this on top of the bound.
const EXTRA_OFFERED: u64 = 128 << 20;

/// The third value of a `/proc/sys/net/ipv4/tcp_[rw]mem` triple, or `fallback`.
fn sysctl_max(name: &str, fallback: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(fallback)
}

/// A target listener whose accepted sockets have a small receive buffer.
fn small_listener() -> TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(SMALL_BUF).expect("SO_RCVBUF");
    s.set_send_buffer_size(SMALL_BUF).expect("SO_SNDBUF");
    s.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into()).expect("bind");
    s.listen(16).expect("listen");
    s.into()
}

/// Writes without blocking until the socket has accepted nothing for a while; returns the total.
fn fill(writer: &mut TcpStream, limit: u64) -> u64 {
    writer.set_nonblocking(true).expect("non-blocking");
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut idle_since: Option<Instant> = None;
    while total < limit {
        pattern(7, total, &mut buf);
        match writer.write(&buf) {
            Ok(n) => {
                total += n as u64;
                idle_since = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write failed after {total} bytes: {e}"),
        }
    }
    writer.set_nonblocking(false).expect("blocking");
    total
}

/// Reads exactly `len` bytes and checks them against the pattern.
fn drain_and_check(reader: &mut TcpStream, len: u64) {
    reader.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < len {
        let max = (len - got).min(CHUNK as u64) as usize;
        let n = reader.read(&mut buf[..max]).expect("read");
        assert!(n > 0, "EOF after {got} of {len} bytes");
        pattern(7, got, &mut want[..n]);
        assert_eq!(buf[..n], want[..n], "wrong bytes at offset {got}");
        got += n as u64;
    }
}

fn check(direction_up: bool) {
    let (proxy, handle) = common::start_with(common::test_config(1));
    let listener = small_listener();
    let SocketAddr4(dest) = SocketAddr4::of(&listener);
    let client =
        socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(Duration::from_secs(10)), dest, b"slow")
            .expect("CONNECT");
    let (target, _) = listener.accept().expect("accept");
    socket2::SockRef::from(&client).set_send_buffer_size(SMALL_BUF).expect("SO_SNDBUF");
    socket2::SockRef::from(&client).set_recv_buffer_size(SMALL_BUF).expect("SO_RCVBUF");

    // What may legitimately sit between writer and reader: the writer's send buffer, the proxy's
    // receive buffer on the writer's side, its own pending bytes, its send buffer on the reader's
    // side, and the reader's receive buffer; the proxy's two buffers may autotune to the maxima.
    let (rmem, wmem) = (sysctl_max("tcp_rmem", 6 << 20), sysctl_max("tcp_wmem", 4 << 20));
    let kernel = 4 * SMALL_BUF as u64 + 2 * (rmem + wmem);
    let bound = kernel + socks4_std::MAX_PENDING as u64;
    let limit = bound + EXTRA_OFFERED;

    let (mut writer, mut reader) = if direction_up { (client, target) } else { (target, client) };
    let accepted = fill(&mut writer, limit);
    println!("accepted {accepted} bytes with the reader stalled (bound {bound}, offered up to {limit})");
    assert!(
        accepted <= bound,
        "the proxy took {accepted} bytes while the reader read nothing; the bound is {bound} \
         (socket buffers {kernel} + MAX_PENDING {})",
        socks4_std::MAX_PENDING
    );
    assert!(accepted > 0, "nothing was accepted at all");
    // Nothing was lost on the way: the reader now gets exactly what was accepted.
    drain_and_check(&mut reader, accepted);
    drop(writer);
    drop(reader);
    handle.shutdown();
}

/// `SocketAddrV4` of a listener bound to 127.0.0.1.
struct SocketAddr4(SocketAddrV4);

impl SocketAddr4 {
    fn of(l: &TcpListener) -> Self {
        match l.local_addr().expect("local addr") {
            std::net::SocketAddr::V4(a) => SocketAddr4(a),
            other => panic!("expected IPv4, got {other}"),
        }
    }
}

#[test]
fn slow_target_bounds_what_the_proxy_takes_from_the_client() {
    check(true);
}

#[test]
fn slow_client_bounds_what_the_proxy_takes_from_the_target() {
    check(false);
}
