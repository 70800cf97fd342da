//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use socks4_core::rules::Rules;
use socks4_core::{Limits, ServerConfig, Timeouts};
use socks4_tokio::{Server, ServerHandle};

/// The configuration `Profile::test_server()` describes, on 127.0.0.1:0 with two workers.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: Some(2),
        limits: Limits { user_id: 255, host: 255 },
        timeouts: Timeouts {
            handshake: Duration::from_secs(1),
            connect: Duration::from_secs(5),
            bind: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        },
        rules: Rules::parse("deny user denied\nallow").unwrap(),
        ..ServerConfig::default()
    }
}

/// Binds and spawns a server with `config`; returns its first address and its handle.
pub fn start_with(config: ServerConfig) -> (SocketAddr, ServerHandle) {
    let server = Server::bind(config).unwrap();
    let addr = server.local_addrs()[0];
    (addr, server.spawn().unwrap())
}
