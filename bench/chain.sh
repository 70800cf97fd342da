#!/usr/bin/env bash
# Measures chaining: one hop (client -> our server -> target) against two hops (client -> our
# server -> a parent of ours -> target, the first routing everything `via socks4://PARENT`), with
# socks4-load over loopback, alternating one, two, one, two ...; prints a Markdown table of medians.
#
# usage: bench/chain.sh            (appends nothing; paste the table into bench/results.md)
#
# environment (defaults in brackets):
#   ADAPTER=tokio       which server (tokio, smol, std) for both hops
#   ROUNDS=3            alternating rounds          RATE_SECS=3   rate: seconds per run
#   RATE_C=32           rate: concurrent clients    BULK_STREAMS=4  BULK_MIB=64  bulk: streams, MiB each
#   WORKERS=1           --workers for each server (two servers share the machine in the chain)
#   SKIP_BUILD=1        use the existing release binaries
#   CARGO_TARGET_DIR    where the release binaries are (default: target/ at the repo root)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ADAPTER=${ADAPTER:-tokio}
ROUNDS=${ROUNDS:-3}
RATE_SECS=${RATE_SECS:-3}
RATE_C=${RATE_C:-32}
BULK_STREAMS=${BULK_STREAMS:-4}
BULK_MIB=${BULK_MIB:-64}
WORKERS=${WORKERS:-1}
target=${CARGO_TARGET_DIR:-$root/target}
release=$target/release
server=$release/socks4-$ADAPTER
load=$release/socks4-load
log() { echo "chain.sh: $*" >&2; }
command -v jq >/dev/null || { log "jq is required (apt-get install -y jq)"; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${SKIP_BUILD:-}" ]; then
  log "building socks4-load and socks4-$ADAPTER (release)"
  cargo build --release -q -p socks4-tools --bin socks4-load
  cargo build --release -q -p "socks4-$ADAPTER" --bin "socks4-$ADAPTER"
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 10000))
    port_open "$p" || { echo "$p"; return 0; }
  done
  return 1
}
pids=()
start() { # port args... -> waits until it listens
  local port=$1
  shift
  "$server" --listen "127.0.0.1:$port" --workers "$WORKERS" --log-level warn --max-connections 20000 "$@" \
    >"$target/chain-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.05; done
  log "server on $port did not start"; return 1
}
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

raw=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  for hops in one two; do
    first=$(free_port)
    if [ "$hops" = one ]; then
      start "$first" --allow any
    else
      parent=$(free_port)
      start "$parent" --allow any
      start "$first" --allow "via socks4://127.0.0.1:$parent"
    fi
    for mode in bulk rate; do
      case $mode in
        bulk) args=(--streams "$BULK_STREAMS" --mib "$BULK_MIB") ;;
        rate) args=(--concurrency "$RATE_C" --secs "$RATE_SECS") ;;
      esac
      line=$("$load" "$mode" --proxy "127.0.0.1:$first" --label "$hops" --json "${args[@]}" 2>/dev/null) || line=""
      [ -n "$line" ] && echo "$line" >>"$raw"
      log "round $round $hops hop(s) $mode: $(jq -r 'if .mode=="rate" then "\(.handshakes_per_sec|floor)/s p50 \(.p50_us)us errors \(.errors)" else "\(.mib_per_sec|floor) MiB/s errors \(.errors)" end' <<<"${line:-{\}}" 2>/dev/null)"
    done
    stop_all
  done
done

jq -rs --arg rounds "$ROUNDS" --arg adapter "$ADAPTER" '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor]
    else (.[length/2 - 1] + .[length/2]) / 2 end;
  def med($l; $m; $f): [.[] | select(.label == $l and .mode == $m) | .[$f] | select(. != null)] | median;
  def errs($l): [.[] | select(.label == $l) | .errors] | add // 0;
  . as $all
  | "| \($adapter) | handshakes/s | p50 ms | bulk MiB/s | errors |",
    "|---|---:|---:|---:|---:|",
    (["one", "two"][] as $l | $all
      | "| \($l) hop\(if $l == "two" then "s" else "" end) | \(med($l; "rate"; "handshakes_per_sec") | floor) | \(med($l; "rate"; "p50_us") / 1000 * 100 | round / 100) | \(med($l; "bulk"; "mib_per_sec") | floor) | \(errs($l)) |"),
    "",
    "two hops / one hop: handshakes \((med("two"; "rate"; "handshakes_per_sec") / med("one"; "rate"; "handshakes_per_sec") * 100 | round / 100))×, bulk \((med("two"; "bulk"; "mib_per_sec") / med("one"; "bulk"; "mib_per_sec") * 100 | round / 100))× (medians of \($rounds) alternating rounds)"
' "$raw"
rm -f "$raw"
