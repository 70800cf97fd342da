#!/usr/bin/env bash
# Packages every publishable crate as the registry would get it, and builds and installs the three
# servers from those packages alone, as `cargo install socks4-tokio` (smol, std) would once they
# are published: the .crate files are unpacked outside the workspace and each server is installed
# with `cargo install --path` from its package, its socks4-* dependencies patched to the unpacked
# packages of theirs (they are not in the registry), every other dependency from the registry.
# socks4-core's own package is also built alone, with default features (the no_std build) and with
# all features. socks4-tools and fuzz/ are not published (`publish = false`, own workspace).
#
# Debug builds (`cargo install --debug`) in the workspace's target dir ($PACKAGE_TARGET_DIR to
# choose another): the registry dependencies a workspace build made are reused (run after the tests,
# about 20 crates are built: the packages and the dependencies whose features differ; in a fresh
# target dir, every dependency: 270 s here). This checks what the packages contain and that they
# build; the release profile is the deb step's (`.ci/deb.sh --release`). cargo install copies the
# binaries out of <target>/debug, where they replace the workspace's (the same sources) until its
# next build.
#
# Usage: bash .ci/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
crates=(socks4-core socks4-server socks4-sys socks4-async socks4-dns socks4-tokio socks4-smol socks4-std)
servers=(socks4-tokio socks4-smol socks4-std)
# The packages' socks4-* dependencies, patched in for the install (not in the registry).
libraries=(socks4-core socks4-server socks4-sys socks4-async socks4-dns)

version=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="socks4-core"))')
target=${PACKAGE_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}

# The licence files are copies of the root ones in each publishable crate (a symlink is not packaged
# reliably everywhere); they must not drift. Each package carries them and its README.
for crate in "${crates[@]}"; do
    cmp LICENSE-MIT "$crate/LICENSE-MIT"
    cmp LICENSE-APACHE "$crate/LICENSE-APACHE"
    listing=$(cargo package -p "$crate" --allow-dirty --list)
    for file in LICENSE-MIT LICENSE-APACHE README.md Cargo.toml src/lib.rs; do
        grep -qx "$file" <<<"$listing" || { echo "$crate: $file is not in the package"; exit 1; }
    done
done

# One command for all: cargo resolves each package's socks4-* dependencies (by version, not in the
# registry) against the ones just packaged, through a temporary local registry, for their Cargo.lock.
# No verification build here: the install below builds every package from its .crate file.
# Drop cargo's extracted copies of earlier packages of the same version from that overlay (the
# `registry/src/-*` folders; the registry's own are not touched): cargo takes a registry crate of a
# known version as unchanged.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/socks4-*
rm -rf "$target/package"
cargo package --no-verify --allow-dirty --target-dir "$target" $(printf -- '-p %s ' "${crates[@]}")
echo "packaged in $(( $(date +%s) - start ))s:"
for crate in "${crates[@]}"; do
    ls -l "$target/package/$crate-$version.crate" | awk '{ print "  " $5 " bytes  " $NF }'
done

# Unpacked outside the workspace (a manifest under it would be taken for a member), at a fixed
# place so that the target dir's build of the registry dependencies is reused; touched, so that
# cargo rebuilds these sources rather than trusting an earlier run's (the files keep the packages'
# times).
unpacked="${TMPDIR:-/tmp}/socks4-package-$(printf %s "$PWD" | cksum | cut -d' ' -f1)"
rm -rf "$unpacked"
mkdir -p "$unpacked"
for crate in "${crates[@]}"; do
    tar -xzf "$target/package/$crate-$version.crate" -C "$unpacked"
done
find "$unpacked" -type f -exec touch {} +
root=$(mktemp -d)
trap 'rm -rf "$root" "$unpacked"' EXIT

# socks4-core alone, as a no_std dependent gets it, and with every feature.
core="$unpacked/socks4-core-$version"
cargo build -q --manifest-path "$core/Cargo.toml" --target-dir "$target"
cargo build -q --manifest-path "$core/Cargo.toml" --target-dir "$target" --all-features
echo "socks4-core's package builds alone (default and all features): $(( $(date +%s) - start ))s"

patches=()
for lib in "${libraries[@]}"; do
    patches+=(--config "patch.crates-io.$lib.path=\"$unpacked/$lib-$version\"")
done
for server in "${servers[@]}"; do
    t0=$(date +%s)
    cargo install -q --debug --path "$unpacked/$server-$version" --root "$root" --target-dir "$target" "${patches[@]}"
    bin="$root/bin/$server"
    [ -x "$bin" ] || { echo "$server: cargo install left no $bin"; exit 1; }
    out=$("$bin" --version)
    [ "$out" = "$server $version" ] || { echo "$server --version says '$out', not '$server $version'"; exit 1; }
    help=$("$bin" --help)
    for option in --listen --config --check-config --allow --deny --users; do
        grep -q -e "$option" <<<"$help" || { echo "$server --help does not mention $option"; exit 1; }
    done
    "$bin" --check-config --config contrib/debian/socks4.toml >/dev/null
    man=$("$bin" --generate-man)
    grep -q "^\.TH $server 1" <<<"$man" || { echo "$server --generate-man printed no man page"; exit 1; }
    echo "$server: installed from its package in $(( $(date +%s) - t0 ))s: $out"
done
echo "package step done in $(( $(date +%s) - start ))s"
