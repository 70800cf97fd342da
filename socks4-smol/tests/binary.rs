//! The shared checks of `socks4_tools::binary` against this adapter's real binary, one `#[test]`
//! each: the same command line gives the same behaviour, and the same event the same log words, on
//! every adapter.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

socks4_tools::binary_tests!(env!("CARGO_BIN_EXE_socks4-smol"));

/// Chained connects wait on the event loop, not on threads (socks4-std has threads of its own).
#[test]
fn chain_silent_parent() {
    socks4_tools::binary::run_as_test("chain_silent_parent", env!("CARGO_BIN_EXE_socks4-smol"));
}
