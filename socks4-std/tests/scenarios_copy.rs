//! The shared behavioural scenarios (socks4-tools) against socks4-std with splicing off: the
//! portable copy relay that every platform but Linux uses.

mod common;

use std::net::SocketAddr;

use socks4_std::{Server, ServerHandle};
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ServerHandle) {
    common::raise_fd_limit();
    let server = Server::bind(common::test_config(2)).expect("bind").splice(false);
    let addr = server.local_addrs()[0];
    (addr, Profile::test_server(), server.spawn().expect("spawn"))
}

socks4_tools::scenario_tests!(start);
