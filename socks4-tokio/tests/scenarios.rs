//! The shared behavioural scenarios from `socks4-tools`, one `#[test]` each.

mod common;

use std::net::SocketAddr;

use socks4_tokio::ServerHandle;
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ServerHandle) {
    let (addr, handle) = common::start_with(common::test_config());
    (addr, Profile::test_server(), handle)
}

socks4_tools::scenario_tests!(start);
