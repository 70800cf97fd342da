#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_SECONDS (default 30) seconds each, after replaying
# the kept reproducers in regressions/; exits non-zero on the first crash.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(request_parser reply_parser server_handshake client_handshake relay ident_reply users_file proxy_header rules_parser numeric_host metrics_endpoint chain_attempt proxy_url)
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    echo "smoke.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
cargo +nightly fuzz build
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    shopt -s nullglob
    kept=(regressions/"$t"-*)
    shopt -u nullglob
    if [ ${#kept[@]} -gt 0 ] && ! cargo +nightly fuzz run "$t" "${kept[@]}" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "smoke.sh: $t fails on a kept reproducer in fuzz/regressions/" >&2
        exit 1
    fi
    echo "== $t: ${#kept[@]} reproducers pass; fuzzing ${seconds}s"
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "smoke.sh: $t crashed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)' "$log" || tail -n 3 "$log"
done
echo "smoke.sh: ${#targets[@]} targets, ${seconds}s each, no crash"
