//! The shared behavioural scenarios against socks4-smol running on async-std.
#![cfg(feature = "async-std")]
#![allow(clippy::unwrap_used)] // tests: a failed setup should panic

mod common;

use std::net::SocketAddr;

use socks4_smol::{AsyncStd, Server};
use socks4_tools::scenarios::Profile;

fn start() -> (SocketAddr, Profile, ()) {
    common::scenario_server(Server::spawn_on::<AsyncStd>)
}

socks4_tools::scenario_tests!(start);

/// A users file with a slow entry and one connection per client: the client leaving during its
/// users-file check ends the connection at once (async-std's `peek` watches it).
#[test]
fn users_check_client_leaves_server() {
    socks4_tools::scenarios::run_as_test("users_check_client_leaves", || {
        let dir = std::env::temp_dir().join(format!("socks4-async-std-slow-users-{}", std::process::id()));
        let (users, user) = socks4_tools::scenarios::slow_users_file(&dir).unwrap();
        let mut config = common::test_config();
        config.users = Some(users);
        config.client_limits.max_per_client = 1;
        let handle = Server::bind(config).unwrap().spawn_on::<AsyncStd>().unwrap();
        (handle.local_addrs()[0], Profile { slow_user: Some(user), ..Profile::test_server() }, handle)
    });
}

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

/// Chaining on async-std's event loop: an async-std server routes everything through a smol
/// parent with `socks4a://`; CONNECT by name and address, early data, half-close and BIND
/// (both of the parent's replies, and a client that leaves during the wait) pass through it.
#[test]
fn chain_through_a_parent_async_std() {
    let parent = Server::bind(common::test_config()).unwrap().spawn().unwrap();
    let mut config = common::test_config();
    let route = format!("allow via socks4a://{}", parent.local_addrs()[0]);
    config.rules = socks4_core::rules::Rules::parse(&route).unwrap();
    let child = Server::bind(config).unwrap().spawn_on::<AsyncStd>().unwrap();
    let ctx = socks4_tools::scenarios::Ctx { proxy: child.local_addrs()[0], profile: Profile::default() };
    let names = [
        "connect_basic",
        "connect_4a_localhost",
        "early_data",
        "half_close_client_first",
        "bind_basic",
        "bind_client_leaves",
    ];
    for name in names {
        let scenario = socks4_tools::scenarios::find(name).unwrap();
        match scenario.run_catching(&ctx) {
            Ok(socks4_tools::scenarios::Outcome::Pass) => {}
            other => panic!("{name} through an async-std server chaining to a smol parent: {other:?}"),
        }
    }
    // Through the parent indeed: without it, the same request fails.
    parent.shutdown();
    let basic = socks4_tools::scenarios::find("connect_basic").unwrap();
    assert!(
        !matches!(basic.run_catching(&ctx), Ok(socks4_tools::scenarios::Outcome::Pass)),
        "served without the parent"
    );
}
