//! Behavioural scenarios for any SOCKS4/4a server, and the tools built on them.
//!
//! - [`targets`]: echo, sink and source destination servers on `127.0.0.1`.
//! - [`wire`]: hand-written request encoding and reply decoding (independent of `socks4-core`).
//! - [`scenarios`]: the named cases, the [`Profile`](scenarios::Profile) of the server under
//!   test, and [`scenario_tests!`] to turn them into `#[test]`s.
//! - [`report`]: run all or some scenarios and print `PASS`/`FAIL`/`SKIP` lines.
//! - [`checksum`]: deterministic payloads and FNV-1a.
//! - [`load`]: the load generator behind `socks4-load` (rate, bulk, hold).
//! - [`binary`]: checks run against an adapter's server binary (command line, log words).
//! - [`caps`]: checks of bandwidth caps and the BIND-wait cap through a proxy configured with them.
//! - [`dns`]: a tiny DNS server on `127.0.0.1` for the tests of `--resolver` and Happy Eyeballs.
//! - [`client_check`]: `socks4-check --client`, which judges SOCKS4 clients by playing their proxy.
//!
//! The `socks4-check PROXY_ADDR` binary runs the scenarios against any server; `socks4-load`
//! measures one; `socks4-chart RESULTS.jsonl OUT.svg` draws `bench/compare.sh`'s results.

pub mod binary;
pub mod caps;
pub mod chain;
pub mod checksum;
pub mod client_check;
pub mod dns;
pub mod load;
pub mod report;
pub mod scenarios;
pub mod targets;
pub mod wire;

/// Calls `callback! { (args) module::name ... }` with every scenario, in order (the callback
/// is given as a parenthesised path).
/// The single list behind both [`scenarios::all`] and [`scenario_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_scenario {
    (($($callback:tt)+) ($($args:tt)*)) => {
        $($callback)+! { ($($args)*)
            connect::connect_basic
            connect::connect_4a_localhost
            connect::connect_4a_unresolvable
            connect::connect_4a_empty_host
            connect::connect_refused
            connect::request_byte_at_a_time
            connect::early_data
            connect::user_id_at_limit
            connect::user_id_over_limit
            connect::rules_denied_user
            connect::rejected_client_drained
            destinations::connect_forbidden_destinations
            destinations::connect_4a_ipv6
            destinations::safe_socks_requires_names
            bind::bind_basic
            bind::bind_wrong_peer
            bind::bind_client_leaves
            robustness::garbage_input
            robustness::http_request
            robustness::mid_handshake_disconnects
            robustness::silent_client_timeout
            users::users_check_client_leaves
            streams::half_close_client_first
            streams::half_close_target_first
            streams::bulk_both_ways
            streams::urgent_data_both_ways
            faults::upstream_reset_reaches_client
            faults::client_reset_reaches_upstream
            load::concurrent_500
        }
    };
}

/// Generates one `#[test]` per scenario, named after it.
///
/// The argument is a function or closure `FnOnce() -> (SocketAddr, Profile, G)` that is called
/// at the start of every generated test; the `G` value (e.g. the server handle) is kept alive
/// until the scenario ends, then dropped.
///
/// ```ignore
/// fn start_server() -> (std::net::SocketAddr, socks4_tools::scenarios::Profile, MyServerHandle) {
///     let server = MyServerHandle::start("127.0.0.1:0");
///     (server.addr(), socks4_tools::scenarios::Profile::test_server(), server)
/// }
/// socks4_tools::scenario_tests!(start_server);
/// ```
///
/// The generated tests run in parallel threads of one test binary. The start function decides
/// whether each test gets its own server (simplest: return the new server as the guard) or all
/// share one (start it once in a `static OnceLock` and return `()` as the guard); the scenarios
/// are independent, so either works. Note `concurrent_500` holds 500 proxied connections open at
/// once: with the server in the same process that is about 2,000 file descriptors.
#[macro_export]
macro_rules! scenario_tests {
    ($start:expr $(,)?) => {
        $crate::__for_each_scenario!(($crate::__socks4_scenario_tests)($start));
    };
}

/// Implementation detail of [`scenario_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __socks4_scenario_tests {
    ( ($start:expr) $( $module:ident :: $name:ident )* ) => {
        $(
            #[test]
            fn $name() {
                $crate::scenarios::run_as_test(stringify!($name), $start);
            }
        )*
    };
}

/// Generates one `#[test]` per check of [`binary`] (run against an adapter's real binary: the same
/// command line must give the same behaviour, and the same event the same log words, everywhere).
///
/// ```ignore
/// socks4_tools::binary_tests!(env!("CARGO_BIN_EXE_socks4-tokio"));
/// ```
#[macro_export]
macro_rules! binary_tests {
    ($binary:expr) => {
        $crate::__socks4_binary_tests!(
            ($binary) mapped_listen_and_reset_words ident_rules ident_client_leaves per_client_limits default_limits_one_address bind_client_leaves users_file
            users_memory_bounded users_flood_fairness users_burst
            bandwidth_caps bind_wait_cap
            sighup_reload check_config names_itself route_to_self socket_activation notify_readiness
            metrics_count_what_was_sent readyz_while_draining healthz_beside_idle_sockets shutdown_cut_resets json_log_lines
            proxy_protocol proxy_reentry
            chain_two_hops chain_three_hops chain_failover_and_refusals chain_dante_parent chain_bind_wait_cap chain_numeric_names chain_stream_isolation
            chain_bind_by_name chain_stalled_parent
            outgoing_rotation outgoing_same_same outgoing_parent_and_reload outgoing_refused_at_start keepalive_on_relayed_sockets warn_unsafe_socks own_resolver happy_eyeballs
            rejected_reply_survives_loss
        );
    };
}

/// Implementation detail of [`binary_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __socks4_binary_tests {
    ( ($binary:expr) $( $name:ident )* ) => {
        $(
            #[test]
            fn $name() {
                $crate::binary::run_as_test(stringify!($name), $binary);
            }
        )*
    };
}
