//! The behavioural scenarios: what every SOCKS4/4a server must do, checked over loopback.
//!
//! A [`Scenario`] is a name and a function run against a [`Ctx`] (the proxy's address and a
//! [`Profile`] of what it is configured with). Each scenario starts its own destination targets
//! on `127.0.0.1`, uses blocking std sockets with timeouts and bounded loops, and either passes,
//! skips (the profile does not say enough, e.g. the user id limit is unknown) or fails with a
//! message. Scenarios are independent, so they may run in parallel against one server.

use std::net::SocketAddr;
use std::time::Duration;

mod bind;
mod connect;
mod destinations;
mod faults;
mod load;
mod robustness;
mod streams;
mod support;
mod users;

pub use users::slow_users_file;

pub use support::Failure;

/// The default size of the bulk transfer, each way: 64 MiB.
pub const DEFAULT_BULK_BYTES: u64 = 64 << 20;

/// What the server under test is configured with. Everything is optional, so the same scenarios
/// run against an unknown server; the cases that need a missing fact skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The longest user id (bytes, without the NUL) the server accepts; ours: 255.
    pub user_id_limit: Option<usize>,
    /// How long the server waits for a complete request before closing (tests use ~1 s).
    pub handshake_timeout: Option<Duration>,
    /// A user id the server's rules deny (every other user id being allowed); ours: `denied`.
    pub denied_user: Option<String>,
    /// Whether to run the BIND scenarios.
    pub bind: bool,
    /// Whether the server can resolve `localhost` for SOCKS4a requests.
    pub resolves_localhost: bool,
    /// Bytes sent each way by the bulk scenario.
    pub bulk_bytes: u64,
    /// Whether the server refuses CONNECT by IP address (names required, like Tor's SafeSocks).
    pub safe_socks: bool,
    /// A user id whose users-file check takes about a second (see [`slow_users_file`]), on a
    /// server that admits one connection per client: for `users_check_client_leaves`.
    pub slow_user: Option<String>,
}

impl Default for Profile {
    /// An unknown server: no limits known, BIND and `localhost` resolution assumed, 64 MiB bulk.
    fn default() -> Self {
        Profile {
            user_id_limit: None,
            handshake_timeout: None,
            denied_user: None,
            bind: true,
            resolves_localhost: true,
            bulk_bytes: DEFAULT_BULK_BYTES,
            safe_socks: false,
            slow_user: None,
        }
    }
}

impl Profile {
    /// What this project's adapters' test servers are configured with: user id limit 255,
    /// handshake timeout 1 s, user id `denied` denied (everything else allowed), BIND on,
    /// `localhost` resolvable, 64 MiB bulk.
    pub fn test_server() -> Self {
        Profile {
            user_id_limit: Some(255),
            handshake_timeout: Some(Duration::from_secs(1)),
            denied_user: Some("denied".to_owned()),
            ..Profile::default()
        }
    }
}

/// What a scenario runs against.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The SOCKS4 server under test.
    pub proxy: SocketAddr,
    /// What it is configured with.
    pub profile: Profile,
}

/// How a scenario ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// Not run, for the given reason (usually: the profile lacks a fact the case needs).
    Skip(String),
}

/// One named behavioural case.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// A stable `snake_case` name, also the name of the generated `#[test]`.
    pub name: &'static str,
    /// Runs the case.
    pub run: fn(&Ctx) -> Result<Outcome, Failure>,
}

macro_rules! build_all {
    ( () $( $module:ident :: $name:ident )* ) => {
        static ALL: &[Scenario] = &[ $( Scenario { name: stringify!($name), run: $module::$name } ),* ];
    };
}
crate::__for_each_scenario!((build_all)());

/// Every scenario, in a sensible order (quick protocol checks first, heavy ones last).
pub fn all() -> &'static [Scenario] {
    ALL
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

impl Scenario {
    /// Runs the case, turning a panic inside it into a [`Failure`].
    pub fn run_catching(&self, ctx: &Ctx) -> Result<Outcome, Failure> {
        let run = self.run;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(ctx))) {
            Ok(r) => r,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(Failure::new(format!("panicked: {msg}")))
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one, once per process: `concurrent_500` with the server
/// in the test process needs about 2,000 descriptors, more than a common default soft limit of 1,024.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
            let limit = getrlimit(Resource::Nofile);
            if limit.current < limit.maximum {
                let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, ..limit });
            }
        });
    }
}

/// The body of a test generated by [`scenario_tests!`](crate::scenario_tests): starts the
/// server with `start`, runs scenario `name`, keeps the guard alive until the end, prints the
/// reason of a skip and panics with the message of a failure.
///
/// # Panics
/// If `name` is not a scenario, or the scenario fails.
pub fn run_as_test<G>(name: &str, start: impl FnOnce() -> (SocketAddr, Profile, G)) {
    let Some(scenario) = find(name) else {
        panic!("no scenario named {name:?}");
    };
    raise_fd_limit();
    let (proxy, profile, guard) = start();
    let ctx = Ctx { proxy, profile };
    let result = scenario.run_catching(&ctx);
    drop(guard);
    match result {
        Ok(Outcome::Pass) => {}
        Ok(Outcome::Skip(reason)) => println!("SKIP {name}: {reason}"),
        Err(f) => panic!("FAIL {name}: {f}"),
    }
}
