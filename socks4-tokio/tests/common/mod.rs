//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use socks4_core::Limits;
use socks4_core::rules::Rules;
use socks4_server::ServerConfig;
use socks4_tokio::{Server, ServerHandle};

/// The configuration `Profile::test_server()` describes, on 127.0.0.1:0 with two workers.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.workers = Some(2);
    config.limits = Limits::new(255, 255);
    let t = &mut config.timeouts;
    (t.handshake, t.connect, t.bind) = (Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(5));
    (t.idle, t.shutdown_grace) = (Duration::from_secs(60), Duration::from_secs(5));
    config.rules = Rules::parse("deny user denied\nallow").unwrap();
    config
}

/// Binds and spawns a server with `config`; returns its first address and its handle.
pub fn start_with(config: ServerConfig) -> (SocketAddr, ServerHandle) {
    let server = Server::bind(config).unwrap();
    let addr = server.local_addrs()[0];
    (addr, server.spawn().unwrap())
}

/// Opens a SOCKS4 CONNECT through `proxy` to `target` with blocking std sockets and checks the
/// reply is 90.
pub fn open_connect(proxy: SocketAddr, target: std::net::SocketAddrV4) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&socks4_tools::wire::connect(target, b"test")).unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 90, "reply {reply:?}");
    s
}

/// Writes `msg` and reads it back (through an echo target).
pub fn echo(s: &mut std::net::TcpStream, msg: &[u8]) {
    use std::io::{Read, Write};
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// Reads until EOF or error, with `limit` as the read timeout; returns whether the peer closed
/// (EOF or reset) rather than timing out.
pub fn closes_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A users file in the temporary directory (named after `tag` and this process) with one line:
/// `user`'s Argon2id hash of `token`; the caller removes it.
pub fn users_file(tag: &str, user: &str, token: &str) -> std::path::PathBuf {
    let hash = socks4_server::users::hash_token(token.as_bytes()).unwrap();
    let file = std::env::temp_dir().join(format!("socks4-tokio-{tag}-{}", std::process::id()));
    std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
    file
}
