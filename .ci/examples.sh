#!/usr/bin/env bash
# The socks4-core examples against real clients: mio_server, chain (through our socks4-tokio as the
# upstream) and sniff, exercised with curl and socks4-check. Everything on 127.0.0.1, every client
# bounded in time. Prints PASS/FAIL per check; exits non-zero on any FAIL. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v curl >/dev/null 2>&1; then
    echo "installing curl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq curl >/dev/null
fi
# socks4-check's concurrent_500 holds 500 proxied connections: ~1,000 descriptors in the example.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build -q -p socks4-core --examples --all-features
cargo build -q -p socks4-tokio --bins --examples
cargo build -q -p socks4-tools --bins
bin="${CARGO_TARGET_DIR:-target}/debug"

# shellcheck source=lib.sh
. .ci/lib.sh
start() { # log name, port, command...: runs it in the background, logs to $work/NAME.log
    local name=$1 port=$2; shift 2
    "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
}

passed=0
failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }
# Waits (up to 5 s) for a fixed string in a log file; the servers write their line when a connection ends.
log_has() { for _ in $(seq 50); do grep -qF -- "$2" "$1" && return 0; sleep 0.1; done; return 1; }

# A local web server with a page holding a unique token.
token="socks4-examples-$RANDOM$RANDOM"
mkdir -p "$work/www"
printf '<!doctype html><html><body><p>%s</p></body></html>\n' "$token" > "$work/www/page.html"
http=$(free_port)
start http "$http" /usr/bin/python3 -m http.server "$http" --bind 127.0.0.1 --directory "$work/www"

fetch() { # name, curl options...: the page (by the URL at the end of the options) must arrive
    local name=$1; shift
    local out rc=0
    out=$(curl -sS --max-time 10 "$@" 2>"$work/curl.err") || rc=$?
    if [ "$rc" -eq 0 ] && grep -qF "$token" <<<"$out"; then
        pass "$name"
    else
        fail "$name: curl exit $rc, page not received; $(head -c 300 "$work/curl.err" | tr '\n' ' ')"
    fi
}

checker() { # name, proxy port, socks4-check options...: must report 0 failed
    local name=$1 port=$2; shift 2
    local summary
    timeout 300 "$bin/socks4-check" "127.0.0.1:$port" "$@" >"$work/check-$name.txt" 2>&1 || true
    grep -v '^PASS' "$work/check-$name.txt" | sed 's/^/    /' || true
    summary=$(tail -1 "$work/check-$name.txt")
    if grep -qE '^[0-9]+ passed, 0 failed' <<<"$summary"; then
        pass "$name: $summary"
    else
        fail "$name: $summary"
    fi
}

# --- (a) mio_server: SOCKS4 and SOCKS4a CONNECT with curl ---------------------------------------
mio=$(free_port)
start mio_server "$mio" "$bin/examples/mio_server" "127.0.0.1:$mio" --handshake-timeout 2 \
    --deny 'user denied' --allow 'from 127.0.0.0/8'
echo "=== mio_server on 127.0.0.1:$mio"
fetch "mio_server curl --socks4" --socks4 "127.0.0.1:$mio" "http://127.0.0.1:$http/page.html"
fetch "mio_server curl --socks4a" --socks4a "127.0.0.1:$mio" "http://localhost:$http/page.html"

# --- (b) chain -> socks4-tokio: the name reaches the upstream unresolved -------------------------
upstream=$(free_port)
start upstream "$upstream" "$bin/socks4-tokio" --listen "127.0.0.1:$upstream" --log-level info
chain=$(free_port)
start chain "$chain" "$bin/examples/chain" --upstream "127.0.0.1:$upstream" --listen "127.0.0.1:$chain"
echo "=== chain on 127.0.0.1:$chain, upstream socks4-tokio on 127.0.0.1:$upstream"
fetch "chain curl --socks4a" --socks4a "127.0.0.1:$chain" "http://localhost:$http/page.html"
if log_has "$work/upstream.log" "dest=localhost:$http "; then
    pass "chain: the upstream logged dest=localhost:$http (the name was not resolved by the chain)"
else
    fail "chain: no 'dest=localhost:$http' in the upstream's log: $(grep 'conn client=' "$work/upstream.log" | tail -2)"
fi
fetch "chain curl --socks4 (by address)" --socks4 "127.0.0.1:$chain" "http://127.0.0.1:$http/page.html"
# chain and sniff keep the core's default handshake timeout, 10 s (silent_client_timeout waits for it).
checker "chain socks4-check" "$chain" --user-id-limit 255 --handshake-timeout 10 --no-bind

# --- (c) chain -> socks4-tokio that denies everything: the refusal reaches curl -------------------
denying=$(free_port)
start denying "$denying" "$bin/socks4-tokio" --listen "127.0.0.1:$denying" --deny any --log-level info
chain_denied=$(free_port)
start chain-denied "$chain_denied" "$bin/examples/chain" --upstream "127.0.0.1:$denying" \
    --listen "127.0.0.1:$chain_denied"
echo "=== chain on 127.0.0.1:$chain_denied, upstream denying on 127.0.0.1:$denying"
rc=0
out=$(curl -sS --max-time 10 --socks4a "127.0.0.1:$chain_denied" "http://localhost:$http/page.html" 2>"$work/curl.err") || rc=$?
# curl's exit code 97 is CURLE_PROXY: the SOCKS4 proxy refused (its message names the code).
if [ "$rc" -eq 97 ] && ! grep -qF "$token" <<<"$out" && grep -qF "(91)" "$work/curl.err"; then
    pass "chain with a denying upstream: curl exit 97, $(tr -d '\n' <"$work/curl.err")"
else
    fail "chain with a denying upstream: curl exit $rc (expected 97 and no page); $(tr -d '\n' <"$work/curl.err")"
fi
if log_has "$work/denying.log" "dest=localhost:$http user=- result=denied" \
    && log_has "$work/chain-denied.log" "rejected by upstream (91)"; then
    pass "chain with a denying upstream: the upstream denied localhost:$http, the chain passed its 91 on"
else
    fail "chain with a denying upstream: logs do not show the upstream's refusal passed on"
fi

# --- (d) sniff: SOCKS4 served, HTTP answered 400, anything else closed ---------------------------
sniff=$(free_port)
start sniff "$sniff" "$bin/examples/sniff" "127.0.0.1:$sniff"
echo "=== sniff on 127.0.0.1:$sniff"
fetch "sniff curl --socks4a" --socks4a "127.0.0.1:$sniff" "http://localhost:$http/page.html"
fetch "sniff curl --socks4" --socks4 "127.0.0.1:$sniff" "http://127.0.0.1:$http/page.html"
rc=0
code=$(curl -sS --max-time 10 -o "$work/sniff-body" -w '%{http_code}' "http://127.0.0.1:$sniff/" 2>"$work/curl.err") || rc=$?
if [ "$rc" -eq 0 ] && [ "$code" = 400 ] && grep -q 'SOCKS4' "$work/sniff-body"; then
    pass "sniff plain HTTP: 400, body: $(tr -d '\n' <"$work/sniff-body")"
else
    fail "sniff plain HTTP: curl exit $rc, status $code, body: $(head -c 200 "$work/sniff-body" 2>/dev/null)"
fi
# A TLS-looking hello and a SOCKS5 greeting: nothing comes back, the connection closes (no reset).
other=$(/usr/bin/python3 - "$sniff" <<'PY'
import socket, sys
results = []
for hello in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x05\x01\x00"):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    s.sendall(hello)
    try:
        data = s.recv(100)
        results.append("closed" if data == b"" else "got %r" % data)
    except Exception as e:
        results.append("error %s" % type(e).__name__)
print(" ".join(results))
PY
) || other="python failed"
if [ "$other" = "closed closed" ]; then
    pass "sniff TLS and SOCKS5 first bytes: closed without an answer"
else
    fail "sniff TLS and SOCKS5 first bytes: $other"
fi
# Every case but http_request, which expects a SOCKS answer where sniff gives an HTTP one by design.
only=()
while read -r name; do [ "$name" = http_request ] || only+=(--only "$name"); done < <("$bin/socks4-check" --list)
checker "sniff socks4-check (all but http_request)" "$sniff" --user-id-limit 255 --handshake-timeout 10 --no-bind \
    "${only[@]}"

# --- (e) socks4-check against mio_server ---------------------------------------------------------
# mio_server answers BIND with 91 by design, so the BIND cases are skipped (--no-bind).
# rejected_client_drained is skipped: the example closes at once after a rejection (no drain after
# the final reply, as the servers do with socks4_server::linger); a client that sent much after its
# request sees a reset.
checker "mio_server socks4-check" "$mio" --user-id-limit 255 --handshake-timeout 2 --denied-user denied --no-bind \
    --skip rejected_client_drained
bind=$(/usr/bin/python3 - "$mio" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"\x04\x02\x00\x15\x7f\x00\x00\x01\x00")  # BIND, expecting a peer from 127.0.0.1
data = b""
while True:
    chunk = s.recv(100)
    if not chunk:
        break
    data += chunk
print(data.hex())
PY
) || bind="python failed"
if [ "$bind" = 005b000000000000 ]; then
    pass "mio_server BIND: refused with 91, then closed (BIND is not implemented by the example)"
else
    fail "mio_server BIND: expected reply 005b000000000000 and a close, got '$bind'"
fi

# --- (f) socks4-tokio's hooks example: the shared driver on an embedder's accept loop --------------
hooks=$(free_port)
start hooks "$hooks" "$bin/examples/hooks" "127.0.0.1:$hooks"
echo "=== hooks example on 127.0.0.1:$hooks"
fetch "hooks curl --socks4a" --socks4a "127.0.0.1:$hooks" "http://localhost:$http/page.html"
if log_has "$work/hooks.log" "audit #1: conn client=127.0.0.1:" && log_has "$work/hooks.log" "dest=localhost:$http "; then
    pass "hooks: the embedder's closed hook recorded the connection"
else
    fail "hooks: no audit line in its output: $(tail -2 "$work/hooks.log")"
fi
rc=0
curl -sS --max-time 10 --socks4 "127.0.0.1:$hooks" "http://127.0.0.1:25/" >/dev/null 2>"$work/curl.err" || rc=$?
if [ "$rc" -eq 97 ] && grep -qF "(91)" "$work/curl.err" && log_has "$work/hooks.log" "dest=127.0.0.1:25 user=- result=refused by hook (91)"; then
    pass "hooks: the embedder's check hook refused port 25 with 91"
else
    fail "hooks: port 25 not refused by the check hook: curl exit $rc, $(tr -d '\n' <"$work/curl.err")"
fi
# Its listener is socks4-server's: urgent data crosses the driver with the byte in its place.
checker "hooks socks4-check (early data, half-close, urgent data)" "$hooks" --only early_data \
    --only half_close_client_first --only half_close_target_first --only urgent_data_both_ways

echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
