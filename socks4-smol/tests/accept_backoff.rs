//! Accept errors (EMFILE) pause the acceptor instead of crashing or spinning, and it recovers.
//! Its own test binary: it lowers the process's file descriptor limit.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use socks4_smol::Server;
use socks4_tools::targets::EchoTarget;

#[test]
fn accept_errors_pause_and_recover() {
    common::init_tracing();
    let mut config = common::test_config();
    config.workers = Some(1);
    let handle = Server::bind(config).unwrap().spawn().unwrap();
    let proxy = handle.local_addrs()[0];
    let echo = EchoTarget::start().unwrap();

    // Everything (reactor, worker, targets) is up before the descriptors run out.
    assert!(roundtrip(proxy, echo.addr()).unwrap());

    let used = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(64);
    let old = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(used + 16), maximum: old.maximum }).unwrap();
    // Exhaust the descriptors: clients (and the server's accepted ends) use them up.
    let mut clients = Vec::new();
    while clients.len() < 200 {
        match TcpStream::connect(proxy) {
            Ok(s) => clients.push(s),
            Err(_) => break,
        }
    }
    // The backlog now holds connections the acceptor cannot take; let it hit EMFILE a while.
    thread::sleep(Duration::from_millis(400));
    drop(clients);
    setrlimit(Resource::Nofile, old).unwrap();

    // It recovers: a CONNECT through the proxy works again (bounded retries).
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = echo.addr();
    loop {
        let attempt = roundtrip(proxy, target);
        if let Ok(true) = attempt {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover: {attempt:?}");
        thread::sleep(Duration::from_millis(50));
    }
    handle.shutdown();
}

/// A CONNECT through `proxy` to the echo `target` and back.
fn roundtrip(proxy: std::net::SocketAddr, target: std::net::SocketAddrV4) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = vec![4, 1];
    req.extend_from_slice(&target.port().to_be_bytes());
    req.extend_from_slice(&target.ip().octets());
    req.push(0);
    s.write_all(&req)?;
    let mut reply = [0; 8];
    s.read_exact(&mut reply)?;
    s.write_all(b"ok?")?;
    let mut back = [0; 3];
    s.read_exact(&mut back)?;
    Ok(reply[1] == 90 && &back == b"ok?")
}
