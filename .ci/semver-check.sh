#!/usr/bin/env bash
# cargo-semver-checks on socks4-core against the last release (0.2.0, commit b7064a8): lists every
# breaking change of the public API since then, and fails when the workspace version does not allow
# them (on 0.x a breaking change needs the minor number bumped: 0.2.x -> 0.3.0). Additions alone
# pass with any version. .ci/run runs it when cargo-semver-checks is installed and does not install
# it: building cargo-semver-checks 0.51 took 66 minutes here (niced, on a loaded 2-CPU machine), too
# long to pay in every CI run; once installed a check takes seconds (rustdoc JSON of both revisions; 5 s for both feature sets here).
#
# Usage: bash .ci/semver-check.sh [BASELINE_REV]   (default: $SEMVER_BASELINE or b7064a8)
set -euo pipefail
cd "$(dirname "$0")/.."
baseline="${1:-${SEMVER_BASELINE:-b7064a8}}"

if ! cargo semver-checks --version >/dev/null 2>&1; then
    echo "semver check needs cargo-semver-checks: cargo install --locked cargo-semver-checks (slow to build)" >&2
    exit 1
fi
if ! git rev-parse --verify --quiet "$baseline^{commit}" >/dev/null; then
    echo "SKIP semver check: baseline $baseline is not in this clone (a shallow clone?)"
    exit 0
fi

version=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="socks4-core"))')
echo "socks4-core $version against the release at $baseline ($(git show -s --format='%h %ad' --date=short "$baseline"))"
# Default features (the no_std build) and all features: a change behind a feature is API too.
# With the version bumped enough (0.3.0, or 0.3.0-dev, over 0.2.0) the tool checks nothing, so a
# second pass as a minor release lists the (intentional) breaking changes without failing.
for features in --default-features --all-features; do
    cargo semver-checks check-release -p socks4-core --baseline-rev "$baseline" "$features"
    echo "breaking changes since $baseline ($features), allowed by the version bump:"
    cargo semver-checks check-release -p socks4-core --baseline-rev "$baseline" "$features" --release-type minor || true
done
