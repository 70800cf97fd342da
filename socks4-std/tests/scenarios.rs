//! The shared behavioural scenarios (socks4-tools) against socks4-std.

mod common;

use std::net::SocketAddr;

use socks4_std::ServerHandle;
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ServerHandle) {
    common::raise_fd_limit();
    let (addr, handle) = common::start_with(common::test_config(2));
    (addr, Profile::test_server(), handle)
}

socks4_tools::scenario_tests!(start);

/// `--safe-socks`: the scenario that needs a server refusing requests by address.
#[test]
fn safe_socks_server_requires_names() {
    socks4_tools::scenarios::run_as_test("safe_socks_requires_names", || {
        let mut config = common::test_config(1);
        config.safe_socks = true;
        let (addr, handle) = common::start_with(config);
        (addr, Profile { safe_socks: true, ..Profile::test_server() }, handle)
    });
}
