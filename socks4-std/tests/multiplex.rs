//! 2,000 concurrent relayed connections on 2 workers: each worker's poll loop multiplexes
//! about 1,000 connections (2,000 sockets) at once.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use socks4_tools::targets::EchoTarget;

const CONNS: usize = 2000;
const THREADS: usize = 20;
/// Descriptors needed: per connection the client, the proxy's two sockets and the target's; plus slack.
const FDS_NEEDED: u64 = (CONNS as u64) * 4 + 200;

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read echo");
    assert_eq!(back, msg);
}

#[test]
fn two_thousand_connections_on_two_workers() {
    let limit = common::raise_fd_limit();
    if limit < FDS_NEEDED {
        println!("SKIP: RLIMIT_NOFILE hard limit is {limit}, this test needs {FDS_NEEDED} descriptors");
        return;
    }
    let mut config = common::test_config(2);
    config.max_connections = CONNS + 100;
    config.client_limits.max_per_client = 0; // all from 127.0.0.1
    let (proxy, handle) = common::start_with(config);
    let target = EchoTarget::start().expect("echo target");
    let dest = target.addr();
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut conns = Vec::with_capacity(CONNS / THREADS);
                    for i in 0..CONNS / THREADS {
                        let mut s = socks4_std::connect(
                            socks4_std::ProxyAddr::from(proxy).with_timeout(Duration::from_secs(30)),
                            dest,
                            b"many",
                        )
                        .unwrap_or_else(|e| panic!("connection {t}.{i}: {e}"));
                        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
                        echo(&mut s, format!("hello {t}.{i}").as_bytes());
                        conns.push(s);
                    }
                    // Everything is open at once here.
                    barrier.wait();
                    for (i, s) in conns.iter_mut().enumerate() {
                        echo(s, format!("bye {t}.{i}").as_bytes());
                    }
                    for s in &conns {
                        s.shutdown(Shutdown::Write).expect("shutdown");
                    }
                    for s in &mut conns {
                        let mut rest = Vec::new();
                        s.read_to_end(&mut rest).expect("read to EOF");
                        assert!(rest.is_empty());
                    }
                })
                .expect("spawn")
        })
        .collect();
    barrier.wait();
    let live = handle.stats().active;
    assert!(live >= CONNS, "the proxy should hold all {CONNS} connections at once, has {live}");
    for t in threads {
        t.join().expect("client thread");
    }
    handle.shutdown();
}
