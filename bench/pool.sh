#!/usr/bin/env bash
# socks4-load through a pool: HAProxy (contrib/haproxy/haproxy.cfg: TCP mode, send-proxy-v2,
# health checks) in front of socks4-tokio, socks4-smol and socks4-std (--proxy-protocol), beside
# a single socks4-tokio reached directly and HAProxy in front of that single server (to tell
# HAProxy's own cost from the pool's). Rounds alternate: single, haproxy-1, pool, single, ...
# Writes a Markdown table of medians to bench/pool.md (raw runs: bench/pool.jsonl).
#
# environment (defaults in brackets):
#   ROUNDS=3  RATE_SECS=3  RATE_C=64  BULK_STREAMS=8  BULK_MIB=64
#   WORKERS=2          --workers of the single server; each pool member gets POOL_WORKERS [1]
#   SKIP_BUILD=1       use the existing release binaries
#   OUT=bench/pool.md
#   CARGO_TARGET_DIR   where the release binaries are (default: target/ at the repo root)
# Needs haproxy, socat and jq.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ROUNDS=${ROUNDS:-3}
RATE_SECS=${RATE_SECS:-3}
RATE_C=${RATE_C:-64}
BULK_STREAMS=${BULK_STREAMS:-8}
BULK_MIB=${BULK_MIB:-64}
WORKERS=${WORKERS:-2}
POOL_WORKERS=${POOL_WORKERS:-1}
OUT=${OUT:-$root/bench/pool.md}
RAW=${OUT%.md}.jsonl
target=${CARGO_TARGET_DIR:-$root/target}
release=$target/release
load=$release/socks4-load
log() { echo "pool.sh: $*" >&2; }
for c in haproxy socat jq; do command -v "$c" >/dev/null || { log "$c is required"; exit 1; }; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries"
    cargo build --release -q -p socks4-tools --bin socks4-load
    cargo build --release -q -p socks4-tokio -p socks4-smol -p socks4-std --bins
fi

# shellcheck source=../.ci/lib.sh
. "$root/.ci/lib.sh"
trap 'stop_all; cleanup' EXIT

started=()
stop_all() {
    for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${started[@]}"; do wait "$p" 2>/dev/null || true; done
    started=()
}
server() { # adapter, listen address, workers, extra args...
    local adapter=$1 addr=$2 workers=$3
    shift 3
    "$release/socks4-$adapter" --listen "$addr" --workers "$workers" --log-level warn --max-connections 20000 \
        --allow any "$@" >>"$work/$adapter.log" 2>&1 &
    started+=($!)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && return 0; sleep 0.1; done
    log "socks4-$adapter did not listen on $addr"
    return 1
}
haproxy_for() { # three server addresses
    export SOCKS4_FRONTEND="127.0.0.1:$front" HAPROXY_STATS="$work/haproxy.sock"
    export SOCKS4_SERVER_1=$1 SOCKS4_SERVER_2=$2 SOCKS4_SERVER_3=$3
    haproxy -db -f contrib/haproxy/haproxy.cfg >>"$work/haproxy.log" 2>&1 &
    started+=($!)
    wait_port "$front" 60 || { tail -5 "$work/haproxy.log" >&2; return 1; }
    # Until every server is UP (health checks every second, rise 2).
    for _ in $(seq 50); do
        [ "$(echo "show stat" | socat stdio "unix:$HAPROXY_STATS" 2>/dev/null | grep -c ',UP,')" -ge 4 ] && return 0
        sleep 0.1
    done
}
run_load() { # label proxy mode args...
    local label=$1 proxy=$2 mode=$3 line
    shift 3
    line=$("$load" "$mode" --proxy "$proxy" --label "$label" --json "$@" 2>"$work/load.err") || true
    if [ -z "$line" ] || ! jq -e . >/dev/null 2>&1 <<<"$line"; then
        line=$(jq -cn --arg l "$label" --arg m "$mode" --arg e "$(head -c 300 "$work/load.err")" \
            '{mode:$m,label:$l,failed:true,errors:1,first_errors:[$e]}')
    fi
    echo "$line" >>"$RAW"
    jq -r '"  \(.mode) \(.label): " + (if .failed then "FAILED: \(.first_errors[0])"
        elif .mode=="rate" then "\(.handshakes_per_sec|floor)/s p99 \(.p99_us)us errors \(.errors)"
        else "\(.mib_per_sec|floor) MiB/s errors \(.errors)" end)' <<<"$line" >&2
}
measure() { # label proxy
    run_load "$1" "$2" bulk --streams "$BULK_STREAMS" --mib "$BULK_MIB"
    run_load "$1" "$2" rate --concurrency "$RATE_C" --secs "$RATE_SECS"
}

: >"$RAW"
begin=$(date +%s)
for round in $(seq "$ROUNDS"); do
    # The servers listen on their own loopback addresses, so each server's connections from
    # HAProxy have their own 4-tuple space (HAProxy connects from 127.0.0.1).
    p1=$(free_port) p2=$(free_port) p3=$(free_port) front=$(free_port)
    log "round $round/$ROUNDS: single (socks4-tokio --workers $WORKERS)"
    server tokio "127.0.0.1:$p1" "$WORKERS"
    measure single "127.0.0.1:$p1"
    stop_all
    log "round $round/$ROUNDS: haproxy-1 (HAProxy -> that single server)"
    server tokio "127.0.0.21:$p1" "$WORKERS" --proxy-protocol 127.0.0.0/8
    haproxy_for "127.0.0.21:$p1" "127.0.0.21:$p1" "127.0.0.21:$p1"
    measure haproxy-1 "127.0.0.1:$front"
    stop_all
    log "round $round/$ROUNDS: pool (HAProxy -> tokio, smol, std; --workers $POOL_WORKERS each)"
    server tokio "127.0.0.21:$p1" "$POOL_WORKERS" --proxy-protocol 127.0.0.0/8
    server smol "127.0.0.22:$p2" "$POOL_WORKERS" --proxy-protocol 127.0.0.0/8
    server std "127.0.0.23:$p3" "$POOL_WORKERS" --proxy-protocol 127.0.0.0/8
    haproxy_for "127.0.0.21:$p1" "127.0.0.22:$p2" "127.0.0.23:$p3"
    measure pool "127.0.0.1:$front"
    stop_all
done
elapsed=$(($(date +%s) - begin))

medians='
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor]
    else (.[length/2 - 1] + .[length/2]) / 2 end;
  def med($l; $m; $f): [.[] | select(.label == $l and .mode == $m and (.failed | not)) | .[$f] | select(. != null)] | median;
  def errs($l; $m): [.[] | select(.label == $l and .mode == $m) | .errors] | add // 0;
  def fmt: if . == null then "–" else (. | round | tostring) end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then "–" else (($a / $b) * 100 | round / 100 | tostring) + "×" end;
  . as $all
  | "| route | handshakes/s | vs single | p99 ms | bulk MiB/s | vs single | errors (rate, bulk) |",
    "|---|---:|---:|---:|---:|---:|---:|",
    (["single", "haproxy-1", "pool"][] as $l | $all
      | "| \($l) | \(med($l; "rate"; "handshakes_per_sec") | fmt) | \(ratio(med($l; "rate"; "handshakes_per_sec"); med("single"; "rate"; "handshakes_per_sec"))) | \(med($l; "rate"; "p99_us") | if . == null then "–" else (. / 10 | round / 100 | tostring) end) | \(med($l; "bulk"; "mib_per_sec") | fmt) | \(ratio(med($l; "bulk"; "mib_per_sec"); med("single"; "bulk"; "mib_per_sec"))) | \(errs($l; "rate")), \(errs($l; "bulk")) |")
'
{
    echo "# socks4 through a pool: HAProxy in front of three servers"
    echo
    echo "Generated by \`bench/pool.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') in ${elapsed} s;"
    echo "medians of $ROUNDS alternating rounds. Settings: ROUNDS=$ROUNDS RATE_SECS=$RATE_SECS RATE_C=$RATE_C BULK_STREAMS=$BULK_STREAMS BULK_MIB=$BULK_MIB WORKERS=$WORKERS POOL_WORKERS=$POOL_WORKERS;"
    echo "$(haproxy -v | sed -n 1p | cut -d' ' -f1-3), contrib/haproxy/haproxy.cfg; $(nproc) CPUs shared by the load generator, its echo targets, HAProxy and the servers."
    echo
    echo "- single: socks4-tokio --workers $WORKERS, reached directly;"
    echo "- haproxy-1: HAProxy (send-proxy-v2) in front of that one server (its cost alone);"
    echo "- pool: HAProxy in front of socks4-tokio, socks4-smol and socks4-std, --workers $POOL_WORKERS each."
    echo
    jq -rs "$medians" "$RAW"
} >"$OUT"
cat "$OUT"
