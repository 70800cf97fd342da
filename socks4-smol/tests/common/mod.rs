//! Shared test helpers: the test server's configuration.
#![allow(dead_code, clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use socks4_core::rules::Rules;
use socks4_server::ServerConfig;
use socks4_smol::{Server, ServerHandle};
use socks4_tools::scenarios::Profile;

/// The configuration `Profile::test_server()` describes, on 127.0.0.1 port 0.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.workers = Some(2);
    config.rules = Rules::parse("deny user denied\nallow").unwrap();
    config.limits.user_id = 255;
    config.timeouts.handshake = Duration::from_secs(1);
    config.timeouts.bind = Duration::from_secs(5);
    config.timeouts.shutdown_grace = Duration::from_secs(2);
    config
}

/// The server's one address.
pub fn addr_of(addrs: &[SocketAddr]) -> SocketAddr {
    addrs[0]
}

/// Logs to the test output (once per test binary).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
}

/// The shared scenarios' server of this test binary: bound to [`test_config`] and started by
/// `spawn` (the runtime under test) on first use, then kept; its address and profile.
pub fn scenario_server(spawn: impl FnOnce(Server) -> io::Result<ServerHandle>) -> (SocketAddr, Profile, ()) {
    static SERVER: OnceLock<ServerHandle> = OnceLock::new();
    let handle = SERVER.get_or_init(|| {
        init_tracing();
        spawn(Server::bind(test_config()).unwrap()).unwrap()
    });
    (handle.local_addrs()[0], Profile::test_server(), ())
}
