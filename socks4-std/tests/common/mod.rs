//! Shared test helpers: the test server configuration and a running server.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socks4_core::rules::Rules;
use socks4_server::ServerConfig;
use socks4_std::{Server, ServerHandle};

/// The configuration `Profile::test_server()` describes, on 127.0.0.1:0.
pub fn test_config(workers: usize) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().expect("address")];
    config.workers = Some(workers);
    config.limits.user_id = 255;
    config.timeouts.handshake = Duration::from_secs(1);
    config.timeouts.bind = Duration::from_secs(5);
    config.timeouts.shutdown_grace = Duration::from_secs(1);
    config.rules = Rules::parse("deny user denied\nallow").expect("rules");
    config
}

/// Starts a server with `config`; returns its address and handle.
pub fn start_with(config: ServerConfig) -> (SocketAddr, ServerHandle) {
    let server = Server::bind(config).expect("bind");
    let addr = server.local_addrs()[0];
    (addr, server.spawn().expect("spawn"))
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not `u64` everywhere
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur as u64;
            }
        }
    }
    lim.rlim_cur as u64
}

/// Read timeout for test sockets.
pub const T: Duration = Duration::from_secs(10);

/// Writes `msg` through an established relay and expects it back from an echo target.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read");
    assert_eq!(back, msg);
}
