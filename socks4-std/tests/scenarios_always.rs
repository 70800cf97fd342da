//! The shared behavioural scenarios (socks4-tools) against socks4-std splicing every chunk from
//! the first byte (`SplicePolicy::Always`): with `scenarios` (the default policy, `Streaming`:
//! copy, then splice once a direction streams) and `scenarios_copy` (`Never`), every policy runs
//! them.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

mod common;

use std::net::SocketAddr;

use socks4_std::{Server, ServerHandle, SplicePolicy};
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ServerHandle) {
    common::raise_fd_limit();
    let server = Server::bind(common::test_config(2)).expect("bind").splice_policy(SplicePolicy::Always);
    let addr = server.local_addrs()[0];
    (addr, Profile::test_server(), server.spawn().expect("spawn"))
}

socks4_tools::scenario_tests!(start);
