//! Accept back-off: when the process runs out of file descriptors the server logs, pauses and
//! retries (no crash, no busy loop), and serves again once descriptors are free.
//!
//! In its own test binary because it lowers the process's RLIMIT_NOFILE.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use socks4_tools::targets::EchoTarget;

const T: Duration = Duration::from_secs(10);

#[allow(clippy::unnecessary_cast)] // `rlim_t` is not `u64` everywhere
fn set_soft_limit(n: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = n as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old as u64
    }
}

#[test]
fn accept_pauses_on_emfile_and_recovers() {
    let (proxy, handle) = common::start_with(common::test_config(1));
    let echo = EchoTarget::start().expect("echo");
    // Use up nearly every descriptor: the proxy cannot accept (or its client connect cannot
    // even get a socket), then free them.
    let old = set_soft_limit(256);
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    // Keep two descriptors for the client socket; the proxy's accept then hits EMFILE.
    hog.truncate(hog.len().saturating_sub(1));
    let mut waiting = TcpStream::connect_timeout(&proxy, T).ok();
    let waiting_sent = waiting.is_some();
    if let Some(s) = &mut waiting {
        let _ = s.write_all(b"\x04\x01\x00\x07\x7f\x00\x00\x01\0");
    }
    thread::sleep(Duration::from_millis(400));
    let pauses = handle.accept_pauses();
    println!("accept pauses while out of descriptors: {pauses} (client connected: {})", waiting.is_some());
    drop(hog);
    set_soft_limit(old);
    // Served again once descriptors are free (the pending connection is accepted on a retry).
    let deadline = Instant::now() + T;
    let mut s = loop {
        match socks4_std::connect(socks4_std::ProxyAddr::from(proxy).with_timeout(T), echo.addr(), b"") {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "the server did not recover: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(b"alive").expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"alive");
    drop(waiting);
    // It paused (the connection above hit EMFILE), and paused rather than spun: about one
    // pause per ACCEPT_BACKOFF (100 ms) over 400 ms, far fewer than a busy loop's thousands.
    if waiting_sent {
        assert!(pauses >= 1, "no accept pause recorded while out of descriptors");
    }
    assert!(pauses <= 50, "{pauses} accept pauses in 400 ms: a busy loop");
    handle.shutdown();
}
