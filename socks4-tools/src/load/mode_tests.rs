//! Each load mode, tiny, through a trivial in-test SOCKS4 server and direct: zero errors.
//! Correctness only; nothing here asserts on speed.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use super::echo::EchoServer;
use super::*;

/// A minimal SOCKS4 CONNECT-only relay, a thread per connection. Runs until the test process
/// ends (the listener thread is detached).
fn start_proxy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = relay(conn);
            });
        }
    });
    addr
}

fn relay(mut client: TcpStream) -> io::Result<()> {
    let mut head = [0u8; 8];
    client.read_exact(&mut head)?;
    let mut b = [0u8; 1];
    loop {
        client.read_exact(&mut b)?;
        if b[0] == 0 {
            break;
        }
    }
    assert_eq!(&head[..2], &[4, 1], "CONNECT request");
    let dest =
        SocketAddrV4::new(Ipv4Addr::new(head[4], head[5], head[6], head[7]), u16::from_be_bytes([head[2], head[3]]));
    assert!(dest.ip().is_loopback());
    let upstream = match TcpStream::connect(dest) {
        Ok(s) => s,
        Err(_) => return client.write_all(&[0, 91, 0, 0, 0, 0, 0, 0]),
    };
    client.write_all(&[0, 90, 0, 0, 0, 0, 0, 0])?;
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let (mut client, mut upstream) = (client, upstream);
    let _ = io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

fn plan(proxy: Option<SocketAddr>, echo: &EchoServer) -> Plan {
    let mut plan = Plan::new(proxy, echo.addrs().to_vec(), loopback_range(Ipv4Addr::new(127, 0, 0, 2), 3));
    plan.timeout = Duration::from_secs(10);
    plan
}

fn echo() -> EchoServer {
    EchoServer::start(&loopback_range(Ipv4Addr::new(127, 0, 1, 1), 2), 2).expect("echo target")
}

fn routes() -> [Option<SocketAddr>; 2] {
    [Some(start_proxy()), None]
}

#[test]
fn rate_has_no_errors() {
    let echo = echo();
    for proxy in routes() {
        let cfg = RateConfig { concurrency: 3, duration: Duration::from_millis(300), payload: 64 };
        let r = run_rate("test", &plan(proxy, &echo), &cfg).expect("rate run");
        assert_eq!(r.common.errors, 0, "{}", r.human());
        assert!(r.handshakes > 0 && r.p50_us <= r.p99_us, "{}", r.human());
        assert!(r.common.source_ports > 0);
        assert!(r.json().starts_with("{\"mode\":\"rate\""));
    }
}

#[test]
fn bulk_has_no_errors() {
    let echo = echo();
    for proxy in routes() {
        let cfg = BulkConfig { streams: 2, bytes: 1024 * 1024 + 7 };
        let r = run_bulk("test", &plan(proxy, &echo), &cfg).expect("bulk run");
        assert_eq!(r.common.errors, 0, "{}", r.human());
        assert_eq!((r.sent, r.received), (2 * (1024 * 1024 + 7), 2 * (1024 * 1024 + 7)), "{}", r.human());
        assert!(r.json().contains("\"errors\":0"));
    }
}

#[test]
fn hold_has_no_errors() {
    let echo = echo();
    for proxy in routes() {
        let cfg = HoldConfig {
            connections: 40,
            concurrency: 4,
            server_pid: Some(std::process::id()),
            settle: Duration::ZERO,
        };
        let r = run_hold("test", &plan(proxy, &echo), &cfg).expect("hold run");
        assert_eq!(r.common.errors, 0, "{}", r.human());
        assert_eq!(r.held, 40, "{}", r.human());
        assert!(r.kib_per_conn.is_some(), "{}", r.human());
        assert!(r.json().contains("\"held\":40"));
    }
}

#[test]
fn bulk_notices_a_broken_route() {
    // A "proxy" that grants and then closes at once: every stream must fail, not hang.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut req = [0u8; 13]; // 8 + "load" + NUL
            let _ = conn.read_exact(&mut req);
            let _ = conn.write_all(&[0, 90, 0, 0, 0, 0, 0, 0]);
        }
    });
    let echo = echo();
    let mut plan = plan(Some(addr), &echo);
    plan.timeout = Duration::from_secs(3);
    let r = run_bulk("test", &plan, &BulkConfig { streams: 2, bytes: 4096 }).expect("bulk run");
    assert_eq!(r.common.errors, 2, "{}", r.human());
}
