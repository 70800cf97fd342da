#!/usr/bin/env bash
# Compares our three SOCKS4 servers with Dante and with the direct (no proxy) ceiling, using
# socks4-load over loopback, and writes a Markdown table of medians to bench/results.md.
#
# usage: bench/compare.sh
#
# Each round runs every server in turn (tokio, smol, std, dante, then direct), so the runs
# alternate A B C D A B C D ...; every server is started fresh for each round and runs hold,
# bulk, rate in that order (rate last: it leaves the most TIME_WAIT sockets behind). A server
# whose binary cannot be built or found is skipped, with the reason printed. Dante comes from
# socks4-tools/scripts/dante.sh (apt-get install dante-server is tried if it is missing).
#
# environment (defaults in brackets):
#   ROUNDS=3            rounds of alternating runs
#   RATE_SECS=5         rate: seconds per run        RATE_C=64      rate: concurrent clients
#   BULK_STREAMS=8      bulk: streams                BULK_MIB=256   bulk: MiB each stream sends
#   HOLD_K=10000        hold: connections (capped so the server's 2 fds each fit the fd limit)
#   WORKERS=2           --workers for our servers
#   DANTE_COOLDOWN=60   seconds to wait after each Dante run: Dante binds every outgoing port before
#                       connecting, and those ports stay reserved in TIME_WAIT (60 s on Linux) for
#                       every address, so without the wait the next runs fail with EADDRNOTAVAIL
#   SERVERS="tokio smol std dante direct"   which to run, in this order
#   SERVER_ARGS=""      more options for our servers, e.g. SERVER_ARGS="--max-per-client 2000
#                       --max-rate-per-client 20000/s" for a run with per-client limits on
#   VARIANT_ARGS=""     more options still for a server listed with a trailing +: SERVERS="tokio tokio+"
#                       VARIANT_ARGS="--metrics 127.0.0.1:0" runs tokio without and with them, alternating
#   VARIANT_ENV=""      an environment variable for servers listed as NAME@VALUE, which run NAME with
#                       VARIANT_ENV=VALUE: SERVERS="std@never std@always" VARIANT_ENV=SOCKS4_SPLICE_POLICY
#                       alternates socks4-std's splice policies (labels keep the @VALUE)
#   OLD=DIR             release binaries of another build, for servers listed as NAME%old:
#                       SERVERS="tokio%old tokio std%old std" OLD=/tmp/old-target/release alternates
#                       an old and a new build (a before/after measurement of a change)
#   SKIP_BUILD=1        use the existing release binaries
#   OUT=bench/results.md                    the report; raw JSON lines go to OUT with .jsonl, and
#                                           the chart of its tables (socks4-chart) to OUT with .svg
#   CARGO_TARGET_DIR    where the release binaries are (default: target/ at the repo root)
#
# quick run: ROUNDS=1 RATE_SECS=2 BULK_MIB=32 HOLD_K=2000 bench/compare.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ROUNDS=${ROUNDS:-3}
RATE_SECS=${RATE_SECS:-5}
RATE_C=${RATE_C:-64}
BULK_STREAMS=${BULK_STREAMS:-8}
BULK_MIB=${BULK_MIB:-256}
HOLD_K=${HOLD_K:-10000}
WORKERS=${WORKERS:-2}
DANTE_COOLDOWN=${DANTE_COOLDOWN:-60}
SERVERS=${SERVERS:-"tokio smol std dante direct"}
SERVER_ARGS=${SERVER_ARGS:-}
VARIANT_ARGS=${VARIANT_ARGS:-}
OUT=${OUT:-$root/bench/results.md}
RAW=${OUT%.md}.jsonl
target=${CARGO_TARGET_DIR:-$root/target}
release=$target/release
load=$release/socks4-load

log() { echo "compare.sh: $*" >&2; }

command -v jq >/dev/null || { log "jq is required (apt-get install -y jq)"; exit 1; }

# Raise the fd limit: soft to hard.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)
# Holding K relayed connections costs the server 2 descriptors each (client + upstream).
max_k=$(((fd_limit - 200) / 2))
if [ "$HOLD_K" -gt "$max_k" ]; then
  log "HOLD_K=$HOLD_K needs ~$((2 * HOLD_K + 200)) fds in the server; the limit is $fd_limit: using HOLD_K=$max_k"
  HOLD_K=$max_k
fi

# --- build ------------------------------------------------------------------------------------
declare -A skip=()
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building socks4-load and socks4-chart (release)"
  cargo build --release -q -p socks4-tools --bin socks4-load --bin socks4-chart
  for s in tokio smol std; do
    case " $SERVERS " in *" $s "* | *" $s+ "* | *" $s@"*) ;; *) continue ;; esac
    log "building socks4-$s (release)"
    if ! cargo build --release -q -p "socks4-$s" --bin "socks4-$s" 2>"$target/compare-build-$s.log"; then
      skip[$s]="cargo build -p socks4-$s failed (see $target/compare-build-$s.log)"
    fi
  done
fi
[ -x "$load" ] || { log "$load not found"; exit 1; }
for s in tokio smol std; do
  if [ -z "${skip[$s]:-}" ] && [ ! -x "$release/socks4-$s" ]; then
    skip[$s]="$release/socks4-$s does not exist"
  fi
done
case " $SERVERS " in
  *" dante "*)
    if ! command -v danted >/dev/null && ! command -v sockd >/dev/null && [ ! -x /usr/sbin/danted ]; then
      log "danted not found: trying apt-get install -y dante-server"
      (apt-get install -y dante-server >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y dante-server >/dev/null 2>&1)) ||
        skip[dante]="dante-server is not installed and apt-get could not install it"
    fi
    ;;
esac
for s in "${!skip[@]}"; do log "skipping $s: ${skip[$s]}"; done

# --- servers ----------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the ephemeral range, so no outgoing connection can be holding the port.
eph_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$eph_low" -gt 20100 ] || eph_low=32768
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % (eph_low - 20000)))
    port_open "$p" || { echo "$p"; return 0; }
  done
  return 1
}

# A listed server's binary: "std+" and "std@never" run socks4-std.
base() { local b=${1%%@*}; b=${b%%%old}; echo "${b%+}"; }
# The binary a listed server runs: "tokio%old" runs $OLD/socks4-tokio (the build being compared with).
binary() { case $1 in *%old*) echo "${OLD:?OLD names the directory of the old release binaries}/socks4-$(base "$1")" ;; *) echo "$release/socks4-$(base "$1")" ;; esac; }

server_pid=""
server_addr=""
dante_dir=""
start_server() { # name -> sets server_pid, server_addr
  local name=$1 port
  case $name in
    dante)
      dante_dir=$(mktemp -d "${TMPDIR:-/tmp}/compare-dante.XXXXXX")
      port=$(free_port) || return 1
      server_addr=$(DANTE_PORT=$port DANTE_DIR=$dante_dir "$root/socks4-tools/scripts/dante.sh" \
        2>"$target/compare-dante.log") || return 1
      # dante.sh prints "danted pid N, ..." on stderr (the pid file may not be written yet).
      server_pid=$(sed -n 's/.*danted pid \([0-9]*\).*/\1/p' "$target/compare-dante.log" | head -1)
      [ -n "$server_pid" ] || return 1
      ;;
    *)
      port=$(free_port) || return 1
      local variant="" env=()
      [ "${name%+}" = "$name" ] || variant=$VARIANT_ARGS
      [ "${name#*@}" = "$name" ] || env=("${VARIANT_ENV:?VARIANT_ENV names the variable for $name}=${name#*@}")
      # shellcheck disable=SC2086 # SERVER_ARGS and VARIANT_ARGS are lists of options
      env "${env[@]}" "$(binary "$name")" --listen "127.0.0.1:$port" --workers "$WORKERS" --log-level warn \
        --max-connections 20000 $SERVER_ARGS $variant >"$target/compare-$name.log" 2>&1 &
      server_pid=$!
      server_addr=127.0.0.1:$port
      for _ in $(seq 1 100); do
        port_open "$port" && return 0
        kill -0 "$server_pid" 2>/dev/null || return 1
        sleep 0.05
      done
      return 1
      ;;
  esac
}
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  [ -n "$dante_dir" ] && rm -rf "$dante_dir"
  server_pid="" dante_dir=""
}
trap stop_server EXIT

# One socks4-load run; appends its JSON line (or an error object) to $RAW.
run_load() { # label route mode args...
  local label=$1 route=$2 mode=$3 line
  shift 3
  line=$("$load" "$mode" $route --label "$label" --json "$@" 2>"$target/compare-load.err") || true
  if [ -z "$line" ] || ! jq -e . >/dev/null 2>&1 <<<"$line"; then
    line=$(jq -cn --arg l "$label" --arg m "$mode" --arg e "$(head -c 300 "$target/compare-load.err")" \
      '{mode:$m,label:$l,failed:true,errors:1,first_errors:[$e]}')
  fi
  echo "$line" >>"$RAW"
  jq -r '"  \(.mode) \(.label): " + (if .failed then "FAILED: \(.first_errors[0])"
    elif .mode=="rate" then "\(.handshakes_per_sec|floor)/s p50 \(.p50_us)us p99 \(.p99_us)us errors \(.errors) ports \(.source_ports)"
    elif .mode=="bulk" then "\(.mib_per_sec|floor) MiB/s errors \(.errors)"
    else "held \(.held)/\(.requested) \(.kib_per_conn // "-") KiB/conn (PSS \(.pss_kib_per_conn // "-")) errors \(.errors)" end)' <<<"$line" >&2
}

: >"$RAW"
started=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  for s in $SERVERS; do
    [ -z "${skip[$(base "$s")]:-}" ] || continue
    log "round $round/$ROUNDS: $s (TIME_WAIT sockets now: $(ss -Htan state time-wait 2>/dev/null | wc -l))"
    if [ "$s" = direct ]; then
      route=--direct
      pid_args=()
    else
      started_ok=0
      for _ in 1 2 3; do
        if start_server "$s"; then started_ok=1; break; fi
        stop_server
      done
      if [ "$started_ok" = 0 ]; then
        log "$s did not start (3 tries); see $target/compare-$s.log"
        continue
      fi
      route="--proxy $server_addr"
      pid_args=(--server-pid "$server_pid")
    fi
    run_load "$s" "$route" hold --connections "$HOLD_K" "${pid_args[@]}"
    run_load "$s" "$route" bulk --streams "$BULK_STREAMS" --mib "$BULK_MIB"
    run_load "$s" "$route" rate --concurrency "$RATE_C" --secs "$RATE_SECS"
    stop_server
    if [ "$s" = dante ] && [ "$DANTE_COOLDOWN" -gt 0 ]; then
      log "waiting ${DANTE_COOLDOWN} s for the ports Dante bound (now in TIME_WAIT) to be released"
      sleep "$DANTE_COOLDOWN"
    fi
  done
done
elapsed=$(($(date +%s) - started))

# --- report -----------------------------------------------------------------------------------
sysctl_val() { cat "/proc/sys/net/ipv4/$1" 2>/dev/null | tr '\t' ' ' || echo "?"; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)

# jq program: medians per (label, mode) of a field, over runs without "failed".
medians='
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor]
    else (.[length/2 - 1] + .[length/2]) / 2 end;
  def med($l; $m; $f): [.[] | select(.label == $l and .mode == $m and (.failed | not)) | .[$f]
    | select(. != null)] | median;
  def errs($l; $m): [.[] | select(.label == $l and .mode == $m) | .errors] | add // 0;
  def runs($l; $m): [.[] | select(.label == $l and .mode == $m)] | length;
  def fmt($d): if . == null then "–" else (. * pow(10; $d) | round / pow(10; $d) | tostring) end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then "–"
    else ($a / $b) as $r | (if $r < 0.1 then 1000 else 100 end) as $p | ($r * $p | round / $p | tostring) + "×" end;
  . as $all
  | [$all[] | .label] | unique as $labels
  | ($servers | split(" ") | map(select(. as $s | $labels | index($s)))) as $order
  | "### Handshake rate (connect + CONNECT + 64-byte echo + close, C=\($C), \($T) s)\n",
    "| server | handshakes/s | vs Dante | vs direct | p50 ms | p99 ms | errors (all runs) | runs |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    ($order[] as $l | $all | "| \($l) | \(med($l; "rate"; "handshakes_per_sec") | fmt(0)) | \(ratio(med($l; "rate"; "handshakes_per_sec"); med("dante"; "rate"; "handshakes_per_sec"))) | \(ratio(med($l; "rate"; "handshakes_per_sec"); med("direct"; "rate"; "handshakes_per_sec"))) | \(med($l; "rate"; "p50_us") | if . == null then null else . / 1000 end | fmt(2)) | \(med($l; "rate"; "p99_us") | if . == null then null else . / 1000 end | fmt(2)) | \(errs($l; "rate")) | \(runs($l; "rate")) |"),
    "",
    "### Bulk (\($S) streams × \($N) MiB each way through an echo target, verified; MiB/s counts both directions)\n",
    "| server | MiB/s | vs Dante | vs direct | errors (all runs) | runs |",
    "|---|---:|---:|---:|---:|---:|",
    ($order[] as $l | $all | "| \($l) | \(med($l; "bulk"; "mib_per_sec") | fmt(0)) | \(ratio(med($l; "bulk"; "mib_per_sec"); med("dante"; "bulk"; "mib_per_sec"))) | \(ratio(med($l; "bulk"; "mib_per_sec"); med("direct"; "bulk"; "mib_per_sec"))) | \(errs($l; "bulk")) | \(runs($l; "bulk")) |"),
    "",
    "### Held connections (K=\($K), each proven by one echo; server memory summed over its processes)\n",
    "| server | held | KiB/conn (VmRSS) | vs Dante | KiB/conn (PSS) | vs Dante | processes | open s | errors (all runs) | runs |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ($order[] as $l | $all | "| \($l) | \(med($l; "hold"; "held") | fmt(0)) | \(med($l; "hold"; "kib_per_conn") | fmt(2)) | \(ratio(med($l; "hold"; "kib_per_conn"); med("dante"; "hold"; "kib_per_conn"))) | \(med($l; "hold"; "pss_kib_per_conn") | fmt(2)) | \(ratio(med($l; "hold"; "pss_kib_per_conn"); med("dante"; "hold"; "pss_kib_per_conn"))) | \(med($l; "hold"; "server_processes") | fmt(0)) | \(med($l; "hold"; "open_secs") | fmt(2)) | \(errs($l; "hold")) | \(runs($l; "hold")) |")
'

{
  echo "# socks4 benchmark: our servers vs Dante vs direct"
  echo
  echo "Generated by \`bench/compare.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "in ${elapsed} s. Medians of $ROUNDS alternating round(s) (each server started fresh per round);"
  echo "ratios are median / median (above 1× is better for rates, below 1× is better for memory)."
  echo "Raw runs: \`$(basename "$RAW")\`."
  echo
  echo "Settings: ROUNDS=$ROUNDS RATE_SECS=$RATE_SECS RATE_C=$RATE_C BULK_STREAMS=$BULK_STREAMS BULK_MIB=$BULK_MIB HOLD_K=$HOLD_K WORKERS=$WORKERS DANTE_COOLDOWN=$DANTE_COOLDOWN"
  echo "(our servers: \`--listen 127.0.0.1:PORT --workers $WORKERS --log-level warn --max-connections 20000${SERVER_ARGS:+ $SERVER_ARGS}\`${VARIANT_ARGS:+, and \`$VARIANT_ARGS\` added for the servers marked +}${VARIANT_ENV:+; a server NAME@VALUE runs with \`$VARIANT_ENV=VALUE\`};"
  echo "Dante: \`socks4-tools/scripts/dante.sh\`; the load generator and its echo targets share the same $(nproc) CPUs)."
  echo
  if [ "${#skip[@]}" -gt 0 ]; then
    echo "Skipped:"
    for s in "${!skip[@]}"; do echo "- $s: ${skip[$s]}"; done
    echo
  fi
  jq -rs --arg C "$RATE_C" --arg T "$RATE_SECS" --arg S "$BULK_STREAMS" --arg N "$BULK_MIB" --arg K "$HOLD_K" --arg servers "$SERVERS" \
    "$medians" "$RAW"
  echo
  echo "### Machine"
  echo
  echo "| fact | value |"
  echo "|---|---|"
  echo "| nproc | $(nproc) |"
  echo "| CPU | ${cpu:-?} |"
  echo "| kernel | $(uname -sr) |"
  echo "| net.ipv4.tcp_tw_reuse | $(sysctl_val tcp_tw_reuse) |"
  echo "| net.ipv4.ip_local_port_range | $(sysctl_val ip_local_port_range) |"
  echo "| fd limit (ulimit -n) | $fd_limit |"
  echo "| memory | $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
  echo
  echo "Clients bind 127.0.0.2–127.0.0.17 with IP_BIND_ADDRESS_NO_PORT and the echo targets listen on"
  echo "127.0.1.1–127.0.1.4, so the ephemeral port range is per (source, destination) pair; each run's"
  echo "\`source_ports\` in the raw file says how many source ports it used. Errors are counted, never"
  echo "retried. Dante binds each outgoing connection's port before connecting; on Linux such a port stays"
  echo "reserved (for every address) while in TIME_WAIT, so after each Dante run the script waits"
  echo "DANTE_COOLDOWN s. \"Cannot assign requested address\" errors in the raw file mean the machine's"
  echo "ephemeral ports were exhausted (by Dante or by other processes binding ports), not a server fault."
  echo
  echo "Chart: [\`$(basename "${OUT%.md}.svg")\`]($(basename "${OUT%.md}.svg")) (the tables' medians, drawn by \`socks4-chart\`)."
} >"$OUT"
if [ -x "$release/socks4-chart" ] && "$release/socks4-chart" "$RAW" "${OUT%.md}.svg"; then
  log "wrote $OUT, $RAW and ${OUT%.md}.svg"
else
  log "wrote $OUT and $RAW (no chart: $release/socks4-chart is missing or failed)"
fi
cat "$OUT"
