//! The shared behavioural scenarios against socks4-smol running on async-std.
#![cfg(feature = "async-std")]
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;

use socks4_smol::{AsyncStd, Server, ServerHandle};
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ()) {
    static SERVER: OnceLock<ServerHandle> = OnceLock::new();
    let handle = SERVER.get_or_init(|| {
        common::init_tracing();
        Server::bind(common::test_config()).unwrap().spawn_on::<AsyncStd>().unwrap()
    });
    (handle.local_addrs()[0], Profile::test_server(), ())
}

socks4_tools::scenario_tests!(start);

/// Bandwidth caps through the async-std build (the copy relay, reading without readiness): see
/// `socks4_tools::caps::bandwidth`.
#[test]
fn bandwidth_caps_async_std() {
    let mut args =
        vec!["socks4-smol".to_owned(), "--listen".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()];
    args.extend(socks4_tools::caps::bandwidth_args());
    let config = socks4_server::cli::ServerArgs::try_parse_from(args).unwrap().to_config().unwrap();
    let handle = Server::bind(config).unwrap().spawn_on::<AsyncStd>().unwrap();
    if let Err(f) = socks4_tools::caps::bandwidth(handle.local_addrs()[0]) {
        panic!("{f}");
    }
}
