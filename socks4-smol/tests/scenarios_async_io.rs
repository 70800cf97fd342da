//! The shared behavioural scenarios against socks4-smol's pool on async-io's one reactor
//! (`spawn_on::<Smol>()`; `spawn` gives each worker a reactor of its own, see `scenarios.rs`).
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;

use socks4_smol::{Server, ServerHandle, Smol};
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ()) {
    static SERVER: OnceLock<ServerHandle> = OnceLock::new();
    let handle = SERVER.get_or_init(|| {
        common::init_tracing();
        Server::bind(common::test_config()).unwrap().spawn_on::<Smol>().unwrap()
    });
    (handle.local_addrs()[0], Profile::test_server(), ())
}

socks4_tools::scenario_tests!(start);
