#!/usr/bin/env bash
# A pool behind a real load balancer: Debian's HAProxy with contrib/haproxy/haproxy.cfg (TCP mode,
# send-proxy-v2, health checks on the SOCKS port) in front of socks4-tokio (s1), socks4-smol (s2)
# and socks4-std (s3), each started with --proxy-protocol 127.0.0.1/32. Checks, in order:
#   1. curl --socks4 and --socks4a through HAProxy, and socks4-check; every server served, and its
#      log shows the original client (127.0.0.5), not HAProxy;
#   2. `--deny 'from 127.0.0.9'` refuses a client connecting from 127.0.0.9 through HAProxy;
#   3. s2 is killed (SIGKILL) under load: new connections keep succeeding, and every failure was a
#      connection HAProxy had given to s2;
#   4. s3 is drained (SIGTERM): HAProxy marks it DOWN and sends it nothing new, its in-flight
#      downloads finish with the right checksum, and it exits on its own.
# Everything on 127.0.0.x with ephemeral ports; about 30 s. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v haproxy >/dev/null 2>&1 || ! command -v socat >/dev/null 2>&1; then
    echo "installing: haproxy socat"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq haproxy socat >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq haproxy socat >/dev/null; }
fi
haproxy -v | sed -n 1p

cargo build -q -p socks4-tokio -p socks4-smol -p socks4-std -p socks4-tools --bins
bin="${CARGO_TARGET_DIR:-target}/debug"

# shellcheck source=lib.sh
. .ci/lib.sh

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }

# A web server with a page holding a unique token, and a 4 MiB file it sends slowly (32 KiB every
# 25 ms: about 3 s), so that a download holds its connection through the servers for that long
# (a client-side rate limit would not: the servers and HAProxy would buffer it all at once).
token="socks4-pool-$RANDOM$RANDOM"
mkdir -p "$work/www"
printf '<p>%s</p>\n' "$token" > "$work/www/page.html"
head -c $((4 << 20)) /dev/urandom > "$work/www/big.bin"
big_sum=$(sha256sum < "$work/www/big.bin" | cut -d' ' -f1)
cat > "$work/www.py" <<'PY'
import http.server, sys, time
class Slow(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, src, dst):
        if not self.path.endswith("big.bin"):
            return super().copyfile(src, dst)
        while chunk := src.read(32768):
            dst.write(chunk)
            dst.flush()
            time.sleep(0.025)
    def log_message(self, *args):
        pass
handler = lambda *a, **k: Slow(*a, directory=sys.argv[2], **k)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
PY
http_port=$(free_port)
/usr/bin/python3 "$work/www.py" "$http_port" "$work/www" >/dev/null 2>&1 &
pids+=($!)
wait_port "$http_port"

# The three servers.
declare -A pid port
for s in s1:tokio s2:smol s3:std; do
    name=${s%%:*} adapter=${s#*:}
    port[$name]=$(free_port)
    "$bin/socks4-$adapter" --listen "127.0.0.1:${port[$name]}" --workers 2 --proxy-protocol 127.0.0.1/32 \
        --handshake-timeout 2s --shutdown-grace 30s --deny 'from 127.0.0.9' --allow any --log-level info \
        >"$work/$name.log" 2>&1 &
    pid[$name]=$!
    pids+=($!)
done
for name in s1 s2 s3; do wait_port "${port[$name]}"; done

# HAProxy, with the config users get.
front=$(free_port)
export SOCKS4_FRONTEND="127.0.0.1:$front" HAPROXY_STATS="$work/haproxy.sock"
export SOCKS4_SERVER_1="127.0.0.1:${port[s1]}" SOCKS4_SERVER_2="127.0.0.1:${port[s2]}" SOCKS4_SERVER_3="127.0.0.1:${port[s3]}"
haproxy -db -f contrib/haproxy/haproxy.cfg >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$front" 60 # a loaded machine's disk can hold HAProxy's start for seconds

status() { echo "show stat" | socat stdio "unix:$HAPROXY_STATS" | awk -F, -v s="$1" '$1=="socks4_pool" && $2==s {print $18}'; }
wait_status() { # server, status, seconds: waits until HAProxy shows the server in that state
    local i
    for i in $(seq $(($3 * 10))); do [ "$(status "$1" 2>/dev/null)" = "$2" ] && return 0; sleep 0.1; done
    return 1
}
for name in s1 s2 s3; do wait_status "$name" UP 10 || fail "HAProxy never saw $name UP: $(status "$name")"; done
# Which server HAProxy gave the connection from IP:PORT (its tcplog line: client, date, frontend, backend/server).
server_of() { awk -v c="$1" '$1==c {split($4, b, "/"); s=b[2]} END {print s}' "$work/haproxy.log"; }
get() { # client ip, url, extra curl args...: prints "local_port exit_status"; the body goes to $work/body
    local ip=$1 url=$2; shift 2
    local out rc=0
    out=$(curl -sS --max-time 20 --interface "$ip" --socks4 "127.0.0.1:$front" -o "$work/body" -w '%{local_port}' "$@" "$url" 2>/dev/null) || rc=$?
    echo "$out $rc"
}

echo "=== 1. clients through HAProxy"
page="http://127.0.0.1:$http_port/page.html"
for i in 1 2 3; do
    curl -sS --max-time 20 --interface 127.0.0.5 --socks4 "127.0.0.1:$front" "$page" | grep -q "$token" \
        && pass "curl --socks4 #$i" || fail "curl --socks4 #$i"
    curl -sS --max-time 20 --interface 127.0.0.5 --socks4a "127.0.0.1:$front" "http://localhost:$http_port/page.html" \
        | grep -q "$token" && pass "curl --socks4a #$i" || fail "curl --socks4a #$i"
done
for name in s1 s2 s3; do
    if grep -q "conn client=127.0.0.5:[0-9]* cmd=CONNECT dest=.* result=ok" "$work/$name.log"; then
        pass "$name served, and logged the original client 127.0.0.5"
    else
        fail "$name: no 'conn client=127.0.0.5:... result=ok' line: $(tail -3 "$work/$name.log")"
    fi
done
# HAProxy turns a reset into a close: the reset scenario cannot pass through it. It also drops
# TCP urgent bytes (2.6 here: a byte sent with MSG_OOB never reaches the server), so the
# urgent-data scenario cannot either.
# From 127.0.0.5: a header naming 127.0.0.1, the servers' own address, is refused as a re-entry.
if timeout 300 "$bin/socks4-check" "127.0.0.1:$front" --source 127.0.0.5 --skip upstream_reset_reaches_client \
    --skip urgent_data_both_ways --user-id-limit 255 \
    --handshake-timeout 2 --bulk-mib 8 >"$work/check.txt" 2>&1 && tail -1 "$work/check.txt" | grep -q ' 0 failed'; then
    pass "socks4-check through HAProxy: $(tail -1 "$work/check.txt")"
else
    fail "socks4-check through HAProxy: $(grep -v '^PASS' "$work/check.txt" | tr '\n' ' ')"
fi

echo "=== 2. deny from 127.0.0.9, through HAProxy"
read -r _ rc <<<"$(get 127.0.0.9 "$page")"
if [ "$rc" = 97 ] && grep -q "conn client=127.0.0.9:[0-9]* cmd=CONNECT .*result=denied by rules (91)" "$work"/s?.log; then
    pass "a client from 127.0.0.9 is refused by 'deny from 127.0.0.9' (curl exit 97), and logged as 127.0.0.9"
else
    fail "127.0.0.9 through HAProxy: curl exit $rc; logs: $(grep -h 'client=127.0.0.9' "$work"/s?.log)"
fi

echo "=== 3. SIGKILL s2 (socks4-smol) under load"
dl() { # client ip, tag: the slow 4 MiB download; writes "port exit sha" to $work/dl-TAG
    local out rc=0
    out=$(curl -sS --max-time 30 --interface "$1" --socks4 "127.0.0.1:$front" -o "$work/dl-$2.bin" \
        -w '%{local_port}' "http://127.0.0.1:$http_port/big.bin" 2>/dev/null) || rc=$?
    echo "$out $rc $(sha256sum < "$work/dl-$2.bin" 2>/dev/null | cut -d' ' -f1)" > "$work/dl-$2"
}
loop() { # client ip, tag, seconds: page after page; one "port exit" line each
    local end=$((SECONDS + $3))
    while [ "$SECONDS" -lt "$end" ]; do get "$1" "$page" >>"$work/loop-$2"; done
}
jobs_=()
for i in 1 2 3 4 5 6; do dl 127.0.0.6 "kill-$i" & jobs_+=($!); sleep 0.1; done
for i in 1 2 3; do loop 127.0.0.7 "$i" 4 & jobs_+=($!); done
sleep 1
kill -KILL "${pid[s2]}"
wait "${jobs_[@]}" 2>/dev/null || true
on_s2=0 bad=0
for i in 1 2 3 4 5 6; do
    read -r p rc sum < "$work/dl-kill-$i"
    srv=$(server_of "127.0.0.6:$p")
    ok=no; [ "$rc" = 0 ] && [ "$sum" = "$big_sum" ] && ok=yes
    [ "$srv" = s2 ] && on_s2=$((on_s2 + 1))
    if { [ "$srv" = s2 ] && [ "$ok" = yes ]; } || { [ "$srv" != s2 ] && [ "$ok" = no ]; }; then
        bad=$((bad + 1)); echo "  download $i via ${srv:-?}: curl exit $rc, checksum ok: $ok"
    fi
done
if [ "$on_s2" -gt 0 ] && [ "$bad" -eq 0 ]; then
    pass "downloads in flight: the $on_s2 on the killed s2 failed, the $((6 - on_s2)) on s1/s3 finished intact"
else
    fail "downloads across the kill: $on_s2 went to s2, $bad ended against expectation"
fi
total=0 errors=0 strays=0
while read -r p rc; do
    total=$((total + 1))
    if [ "$rc" != 0 ]; then
        errors=$((errors + 1))
        srv=$(server_of "127.0.0.7:$p")
        [ "$srv" = s2 ] || { strays=$((strays + 1)); echo "  failed request from port $p went to ${srv:-?}"; }
    fi
done < <(cat "$work"/loop-*)
if [ "$total" -gt 20 ] && [ "$strays" -eq 0 ] && [ "$errors" -le 3 ]; then
    pass "page requests across the kill: $total made, $errors failed (only ones HAProxy had given to s2)"
else
    fail "page requests across the kill: $total made, $errors failed, $strays not on s2"
fi
wait_status s2 DOWN 5 && pass "HAProxy marks the killed s2 DOWN" || fail "s2 is $(status s2) after the kill"

echo "=== 4. SIGTERM s3 (socks4-std): drain"
jobs_=()
for i in 1 2 3 4; do dl 127.0.0.8 "drain-$i" & jobs_+=($!); sleep 0.1; done
sleep 0.5
kill -TERM "${pid[s3]}"
t0=$SECONDS
if wait_status s3 DOWN 5; then
    pass "HAProxy marks the draining s3 DOWN within $((SECONDS - t0 + 1)) s"
else
    fail "s3 is $(status s3) 5 s after SIGTERM"
fi
after_ok=0 after_s3=0
for i in $(seq 6); do
    read -r p rc <<<"$(get 127.0.0.10 "$page")"
    [ "$rc" = 0 ] && grep -q "$token" "$work/body" && after_ok=$((after_ok + 1))
done
wait "${jobs_[@]}" 2>/dev/null || true
sleep 0.5 # HAProxy writes a connection's log line when it ends
for p in $(awk '$1 ~ /^127\.0\.0\.10:/ {print $1}' "$work/haproxy.log"); do
    [ "$(server_of "$p")" = s3 ] && after_s3=$((after_s3 + 1))
done
if [ "$after_ok" -eq 6 ] && [ "$after_s3" -eq 0 ]; then
    pass "6 new requests after the drain began: all served, none by s3"
else
    fail "after the drain began: $after_ok of 6 served, $after_s3 sent to s3"
fi
drained=0 bad=0
for i in 1 2 3 4; do
    read -r p rc sum < "$work/dl-drain-$i"
    [ "$(server_of "127.0.0.8:$p")" = s3 ] && drained=$((drained + 1))
    if [ "$rc" != 0 ] || [ "$sum" != "$big_sum" ]; then bad=$((bad + 1)); echo "  download $i: curl exit $rc"; fi
done
if [ "$drained" -gt 0 ] && [ "$bad" -eq 0 ]; then
    pass "downloads in flight during the drain: all 4 intact ($drained on the draining s3)"
else
    fail "downloads during the drain: $bad failed, $drained were on s3"
fi
exited=no
for _ in $(seq 50); do kill -0 "${pid[s3]}" 2>/dev/null || { exited=yes; break; }; sleep 0.1; done
if [ "$exited" = yes ] && grep -q "shutting down" "$work/s3.log"; then
    pass "s3 exited on its own once its transfers ended"
else
    fail "s3 still running after its transfers ended: $(tail -3 "$work/s3.log")"
fi

echo "pool: $passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
    for f in haproxy s1 s2 s3; do echo "--- $f.log (last 15 lines)"; tail -15 "$work/$f.log"; done
fi
[ "$failed" -eq 0 ]
