//! The shared behavioural scenarios against socks4-smol on smol, the pool's default (`SmolLocal`: a
//! reactor per worker).
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::net::SocketAddr;

use socks4_smol::Server;
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ()) {
    common::scenario_server(Server::spawn)
}

socks4_tools::scenario_tests!(start);

/// `--safe-socks`: the scenario that needs a server refusing requests by address.
#[test]
fn safe_socks_server_requires_names() {
    socks4_tools::scenarios::run_as_test("safe_socks_requires_names", || {
        let mut config = common::test_config();
        config.safe_socks = true;
        let handle = Server::bind(config).unwrap().spawn().unwrap();
        (handle.local_addrs()[0], Profile { safe_socks: true, ..Profile::test_server() }, handle)
    });
}

/// A users file with a slow entry and one connection per client: the client leaving during its
/// users-file check ends the connection at once.
#[test]
fn users_check_client_leaves_server() {
    socks4_tools::scenarios::run_as_test("users_check_client_leaves", || {
        let dir = std::env::temp_dir().join(format!("socks4-smol-slow-users-{}", std::process::id()));
        let (users, user) = socks4_tools::scenarios::slow_users_file(&dir).unwrap();
        let mut config = common::test_config();
        config.users = Some(users);
        config.client_limits.max_per_client = 1;
        let handle = Server::bind(config).unwrap().spawn().unwrap();
        (handle.local_addrs()[0], Profile { slow_user: Some(user), ..Profile::test_server() }, handle)
    });
}
