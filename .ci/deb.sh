#!/usr/bin/env bash
# Builds the Debian package of each server with cargo-deb ([package.metadata.deb] in each adapter's
# Cargo.toml) and checks it: unpacked with dpkg-deb into a temporary tree (nothing is installed on
# this machine), the files are there (binary, systemd units, /etc/socks4/socks4.toml as a conffile,
# man page, bash/zsh/fish completions, README, copyright), `systemd-analyze verify` passes on the
# packaged units (their ExecStart= pointed at the unpacked binary), and the unpacked binary passes
# `--check-config` on the packaged config.
#
# Before `cargo deb`, this writes what the package carries besides the binary and the files of
# contrib/: under <target>/<profile>/deb/<server>/ (cargo-deb's `target/release/` in the assets),
# the man page (gzipped) and the bash, zsh and fish completions, which the binary renders from its
# clap definitions (`--generate-man`, `--generate-completions SHELL`); under
# target/deb-assets/<server>/ of the checkout (systemd-units' `unit-scripts`, a path cargo-deb
# does not map to the profile), the units cargo-deb installs and writes the maintainer scripts
# for: socks4.service with ExecStart=/usr/bin/<server> (from contrib/systemd/socks4.service, the
# one unit file) and contrib/systemd/socks4.socket as it is.
#
# Usage: bash .ci/deb.sh [--release] [SERVER...]      (default: socks4-tokio socks4-smol socks4-std)
#   default   packages the debug binaries the CI's test step built (cargo-deb `--profile dev`,
#             `--no-build`): checks the packages' contents and layout in seconds, not the optimised
#             binary; cargo-deb warns that it is meant for release builds.
#   --release builds the release binaries first (the workspace's release profile: thin LTO, one
#             codegen unit) and packages those: the .deb files to ship, in <target>/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# The cargo-deb this was written against; installed (`cargo install --locked`) when missing.
CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-3.8.0}

profile=dev
servers=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        socks4-tokio | socks4-smol | socks4-std) servers+=("$arg") ;;
        *) echo "usage: $0 [--release] [socks4-tokio|socks4-smol|socks4-std ...]" >&2; exit 2 ;;
    esac
done
[ ${#servers[@]} -gt 0 ] || servers=(socks4-tokio socks4-smol socks4-std)
profile_dir=$([ "$profile" = dev ] && echo debug || echo release)

if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)"
    t0=$(date +%s)
    cargo install -q cargo-deb --locked --version "$CARGO_DEB_VERSION"
    echo "installed cargo-deb in $(( $(date +%s) - t0 ))s"
fi
for tool in dpkg-deb systemd-analyze; do
    command -v "$tool" >/dev/null || { echo "deb check needs $tool"; exit 1; }
done

metadata=$(cargo metadata --format-version 1 --no-deps)
target=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' <<<"$metadata")
version=$(python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="socks4-core"))' <<<"$metadata")

t0=$(date +%s)
if [ "$profile" = dev ]; then
    # The same command as .ci/pool.sh's: after the test step, nothing to build.
    cargo build -q -p socks4-tokio -p socks4-smol -p socks4-std -p socks4-tools --bins
else
    cargo build -q --release $(printf -- '-p %s ' "${servers[@]}") --bins
fi
echo "binaries ($profile) ready in $(( $(date +%s) - t0 ))s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL $*" >&2; exit 1; }

for server in "${servers[@]}"; do
    t0=$(date +%s)
    bin="$target/$profile_dir/$server"
    assets="$target/$profile_dir/deb/$server"
    units="$PWD/target/deb-assets/$server"
    rm -rf "$assets" "$units"
    mkdir -p "$assets" "$units"
    "$bin" --generate-man | gzip -9n >"$assets/$server.1.gz"
    for shell in bash zsh fish; do
        "$bin" --generate-completions "$shell" >"$assets/$server.$shell"
    done
    sed -e "s|^ExecStart=/usr/local/bin/socks4 |ExecStart=/usr/bin/$server |" \
        -e "1i # Installed by the $server package (from contrib/systemd/socks4.service)." \
        contrib/systemd/socks4.service >"$units/socks4.service"
    cp contrib/systemd/socks4.socket "$units/socks4.socket"
    grep -q "^ExecStart=/usr/bin/$server --config /etc/socks4/socks4.toml$" "$units/socks4.service" \
        || fail "$server: contrib/systemd/socks4.service's ExecStart= is not /usr/local/bin/socks4 --config ..."

    # cargo-deb prints the package's path last.
    deb=$(cargo deb -p "$server" --no-build --profile "$profile" $([ "$profile" = dev ] && echo --fast --strip) | tail -n 1)
    [ -f "$deb" ] || fail "$server: cargo deb made no package ($deb)"

    tree="$work/$server"
    dpkg-deb -x "$deb" "$tree"
    dpkg-deb -e "$deb" "$tree/DEBIAN"
    # cargo-deb puts the units in /lib/systemd/system or /usr/lib/systemd/system (by version).
    unitdir=lib/systemd/system
    [ -d "$tree/$unitdir" ] || unitdir=usr/lib/systemd/system
    for file in usr/bin/$server $unitdir/socks4.service $unitdir/socks4.socket \
        etc/socks4/socks4.toml usr/share/man/man1/$server.1.gz \
        usr/share/bash-completion/completions/$server usr/share/zsh/vendor-completions/_$server \
        usr/share/fish/vendor_completions.d/$server.fish \
        usr/share/doc/$server/README.md usr/share/doc/$server/copyright usr/share/doc/$server/LICENSE-MIT; do
        [ -s "$tree/$file" ] || fail "$server: $file is missing or empty in $deb"
    done
    [ -x "$tree/usr/bin/$server" ] || fail "$server: /usr/bin/$server is not executable"
    zcat "$tree/usr/share/man/man1/$server.1.gz" | grep -q -e '^\.TH' || fail "$server: the man page is not roff"
    zcat "$tree/usr/share/man/man1/$server.1.gz" | grep -q -e '-\\-listen' || fail "$server: the man page lacks --listen"
    grep -q -e '--listen' "$tree/usr/share/bash-completion/completions/$server" || fail "$server: bash completion lacks --listen"
    grep -qx /etc/socks4/socks4.toml "$tree/DEBIAN/conffiles" || fail "$server: /etc/socks4/socks4.toml is not a conffile"
    control="$tree/DEBIAN/control"
    grep -qx "Package: $server" "$control" || fail "$server: control: $(cat "$control")"
    grep -qx "Version: $version-1" "$control" || fail "$server: control has not version $version-1"
    grep -qx "Conflicts: socks4-proxy" "$control" || fail "$server: control does not conflict on socks4-proxy"
    # The units are registered (daemon-reload) but neither enabled nor started by the package.
    grep -q "daemon-reload" "$tree/DEBIAN/postinst" || fail "$server: postinst does not reload systemd"
    # cargo-deb's "dont-enable" script re-enables a unit only if it was enabled (an upgrade keeps
    # the admin's choice), and restarts only on upgrade (try-restart).
    postinst="$tree/DEBIAN/postinst"
    [ "$(grep -c 'deb-systemd-helper enable' "$postinst")" = "$(grep -c 'was-enabled' "$postinst")" ] \
        && ! grep -qE '_dh_action=start|deb-systemd-invoke (start|restart)' "$postinst" \
        || fail "$server: postinst enables or starts a unit: $(cat "$postinst")"
    "$tree/usr/bin/$server" --version | grep -qx "$server $version" || fail "$server: --version"

    verified="$work/$server-units"
    mkdir -p "$verified"
    sed "s|^ExecStart=/usr/bin/$server |ExecStart=$tree/usr/bin/$server |" \
        "$tree/$unitdir/socks4.service" >"$verified/socks4.service"
    cp "$tree/$unitdir/socks4.socket" "$verified/"
    verify=$(systemd-analyze verify "$verified/socks4.socket" "$verified/socks4.service" 2>&1) \
        || fail "$server: systemd-analyze verify: $verify"
    [ -z "$verify" ] || fail "$server: systemd-analyze verify warns: $verify"

    "$tree/usr/bin/$server" --check-config --config "$tree/etc/socks4/socks4.toml" >"$work/check" \
        || fail "$server: --check-config on the packaged config"
    grep -q "valid" "$work/check" || fail "$server: --check-config: $(cat "$work/check")"
    echo "$server: $(basename "$deb") ($(stat -c %s "$deb") bytes) built and checked in $(( $(date +%s) - t0 ))s"
done
echo "deb step done in $(( $(date +%s) - start ))s"
