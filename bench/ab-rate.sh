#!/usr/bin/env bash
# A/B of the handshake rate of two builds of our servers, alternating old/new per round, same
# conditions: starts each server fresh (--workers 2), runs `socks4-load rate --secs 4`, stops it.
#
# usage: OLD=/path/to/old/release NEW=target/release bench/ab-rate.sh    (prints one line per run)
#   e.g. git worktree add /tmp/old dbef043 && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target \
#        cargo build --release -p socks4-tokio -p socks4-smol -p socks4-std) && OLD=/tmp/old-target/release bench/ab-rate.sh
# environment: SERVERS="tokio smol std", ROUNDS=3, LOAD=target/release/socks4-load
set -u
cd "$(dirname "$0")/.."
: "${OLD:?set OLD to the directory of the old release binaries}"
NEW=${NEW:-target/release}
LOAD=${LOAD:-target/release/socks4-load}
for s in ${SERVERS:-tokio smol std}; do
  for round in $(seq "${ROUNDS:-3}"); do
    for v in old new; do
      bin="$OLD/socks4-$s"; [ "$v" = new ] && bin="$NEW/socks4-$s"
      port=$((21000 + RANDOM % 2000))
      "$bin" --listen "127.0.0.1:$port" --workers 2 --log-level warn --max-connections 20000 >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
      rate=$("$LOAD" rate --proxy "127.0.0.1:$port" --secs 4 2>&1 | grep -oE "[0-9]+/s" | head -1)
      kill "$pid"; wait "$pid" 2>/dev/null
      echo "$s $v round $round: $rate"
      sleep 2
    done
  done
done
