//! The shared behavioural scenarios against socks4-smol's pool on async-io's one reactor
//! (`spawn_on::<Smol>()`; `spawn` gives each worker a reactor of its own, see `scenarios.rs`).
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::net::SocketAddr;

use socks4_smol::{Server, Smol};
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ()) {
    common::scenario_server(Server::spawn_on::<Smol>)
}

socks4_tools::scenario_tests!(start);
