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
