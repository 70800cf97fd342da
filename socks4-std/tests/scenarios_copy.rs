//! The shared behavioural scenarios (socks4-tools) against socks4-std with splicing off: the
//! portable copy relay that every platform but Linux uses.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

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

/// Bandwidth caps through the copy relay (the binary check covers splice): see
/// `socks4_tools::caps::bandwidth`.
#[test]
fn bandwidth_caps_copy() {
    let mut args =
        vec!["socks4-std".to_owned(), "--listen".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()];
    args.extend(socks4_tools::caps::bandwidth_args());
    let config = socks4_server::cli::ServerArgs::try_parse_from(args).expect("args").to_config().expect("config");
    let server = Server::bind(config).expect("bind").splice(false);
    let addr = server.local_addrs()[0];
    let _handle = server.spawn().expect("spawn");
    if let Err(f) = socks4_tools::caps::bandwidth(addr) {
        panic!("{f}");
    }
}
