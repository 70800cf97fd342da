//! The self-test of `socks4-check --client`: the reference client (`socks4-bad-client`) passes
//! every case in its `good` mode, and each of its modes with a real client's bug is caught by the
//! cases that mode names.

use std::time::Duration;

use socks4_tools::client_check::fixture::Mode;
use socks4_tools::client_check::{self, Checker, Config};

fn config(mode: Mode) -> Config {
    let bin = env!("CARGO_BIN_EXE_socks4-bad-client");
    let m = mode.name();
    Config {
        command: Some(format!("'{bin}' {m} connect {{proxy}} {{host}} {{port}} '{{user}}' {{path}} 1")),
        bind_command: Some(format!("'{bin}' {m} bind {{proxy}} {{host}} {{port}} '{{user}}' 1")),
        client_timeout: Some(Duration::from_secs(1)),
        require_4a: true,
        ..Config::default()
    }
}

/// Runs `names` (all cases if empty) for `mode`; returns the report's lines.
fn run(mode: Mode, names: &[&str]) -> Vec<String> {
    let checker = Checker::new(config(mode)).expect("checker listens");
    let selected: Vec<_> = client_check::all().iter().filter(|c| names.is_empty() || names.contains(&c.name)).collect();
    let mut out = Vec::new();
    client_check::run(&checker, &selected, &mut out).expect("report");
    String::from_utf8(out).expect("utf-8 report").lines().map(str::to_owned).collect()
}

#[test]
fn good_client_passes_every_case() {
    let lines = run(Mode::Good, &[]);
    let summary = lines.last().expect("summary line");
    assert_eq!(summary, &format!("{} passed, 0 failed, 0 skipped", client_check::all().len()), "{lines:#?}");
}

macro_rules! caught {
    ($($test:ident: $mode:ident,)*) => {
        /// The bad modes this file tests.
        const TESTED: &[Mode] = &[$(Mode::$mode),*];
        $(
        #[test]
        fn $test() {
            let mode = Mode::$mode;
            let lines = run(mode, mode.caught_by());
            for name in mode.caught_by() {
                let prefix = format!("FAIL {name}: ");
                assert!(lines.iter().any(|l| l.starts_with(&prefix)), "{} not caught by {name}: {lines:#?}", mode.name());
            }
        }
    )*};
}

caught! {
    extra_nul: ExtraNul,
    host_in_user_id: HostInUserId,
    pad_260: Pad260,
    missing_nul: MissingNul,
    smuggled_nul: SmuggledNul,
    short_buffer: ShortBuffer,
    single_read_reply: SingleReadReply,
    drop_after_reply: DropAfterReply,
    ignore_rejection: IgnoreRejection,
    no_timeout: NoTimeout,
    reset_is_eof: ResetIsEof,
    bind_unspecified: BindUnspecified,
}

#[test]
fn every_mode_is_tested() {
    for mode in Mode::ALL.iter().filter(|m| **m != Mode::Good) {
        assert!(TESTED.contains(mode), "add {} to caught! above", mode.name());
        assert!(!mode.caught_by().is_empty(), "{} names no case that catches it", mode.name());
    }
}
