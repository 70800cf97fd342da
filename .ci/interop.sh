#!/usr/bin/env bash
# Interoperability: real SOCKS4 clients (curl, socat, ncat, PySocks, proxychains4, headless Chromium,
# HAProxy reaching a backend through the proxy)
# and the socks4-check conformance checker against each of our three servers, plus socks4-check
# against Dante as the reference. Everything runs on 127.0.0.1. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=(curl socat ncat proxychains4 chromium danted haproxy)
missing=()
for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
/usr/bin/python3 -c 'import socks' 2>/dev/null || missing+=(python3-socks)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: curl socat ncat python3-socks proxychains4 chromium dante-server haproxy (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq curl socat ncat python3-socks proxychains4 chromium dante-server haproxy >/dev/null
fi

cargo build -q $(for s in ${INTEROP_SERVERS:-tokio smol std}; do printf -- "-p socks4-%s " "$s"; done) -p socks4-tools --bins
bin="${CARGO_TARGET_DIR:-target}/debug"

# shellcheck source=lib.sh
. .ci/lib.sh

# A local web server with a page holding a unique token.
token="socks4-interop-$RANDOM$RANDOM"
mkdir -p "$work/www"
printf '<!doctype html><html><body><p id="t">%s</p></body></html>\n' "$token" > "$work/www/page.html"
http_port=$(free_port)
/usr/bin/python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
wait_port "$http_port"

# PySocks client: GET the page through the proxy (rdns, i.e. SOCKS4a, for a host name).
cat > "$work/pysocks.py" <<'PY'
import socks, sys
proxy, port, host = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socks.socksocket()
s.set_proxy(socks.SOCKS4, "127.0.0.1", proxy, rdns=(host != "127.0.0.1"))
s.settimeout(20)
s.connect((host, port))
s.sendall(b"GET /page.html HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace"))
PY

passed=0
failed=0
server_log=""
conn_lines() { if [ -n "$server_log" ]; then grep -c 'conn client=' "$server_log" || true; else echo 0; fi; }
check() { # name, command...: the output must contain the token, and the proxy must log a connection
    local name=$1; shift
    local out before after
    before=$(conn_lines)
    out=$(timeout 60 "$@" 2>"$work/err" || true)
    after=$before
    for _ in $(seq 50); do after=$(conn_lines); [ "$after" -gt "$before" ] && break; [ -z "$server_log" ] && break; sleep 0.1; done
    if ! grep -q "$token" <<<"$out"; then
        echo "FAIL $name: page not received; $(head -c 400 "$work/err" | tr '\n' ' ')"; failed=$((failed + 1))
    elif [ -n "$server_log" ] && [ "$after" -le "$before" ]; then
        echo "FAIL $name: page received but the proxy logged no connection (bypassed?)"; failed=$((failed + 1))
    else
        echo "PASS $name"; passed=$((passed + 1))
    fi
}
http_get() { printf 'GET /page.html HTTP/1.0\r\nHost: x\r\n\r\n'; sleep 2; }

run_clients() { # server name, proxy port
    local s=$1 p=$2
    check "$s curl --socks4" curl -sS --max-time 20 --socks4 "127.0.0.1:$p" "http://127.0.0.1:$http_port/page.html"
    check "$s curl --socks4a" curl -sS --max-time 20 --socks4a "127.0.0.1:$p" "http://localhost:$http_port/page.html"
    check "$s socat SOCKS4" bash -c "$(declare -f http_get); http_get | socat -t 5 - SOCKS4:127.0.0.1:127.0.0.1:$http_port,socksport=$p"
    check "$s socat SOCKS4A" bash -c "$(declare -f http_get); http_get | socat -t 5 - SOCKS4A:127.0.0.1:localhost:$http_port,socksport=$p"
    check "$s ncat socks4" bash -c "$(declare -f http_get); http_get | ncat --proxy 127.0.0.1:$p --proxy-type socks4 127.0.0.1 $http_port"
    check "$s pysocks SOCKS4" /usr/bin/python3 "$work/pysocks.py" "$p" "$http_port" 127.0.0.1
    check "$s pysocks SOCKS4a" /usr/bin/python3 "$work/pysocks.py" "$p" "$http_port" localhost
    printf 'strict_chain\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\nsocks4 127.0.0.1 %s\n' "$p" > "$work/proxychains-$s.conf"
    check "$s proxychains4" proxychains4 -q -f "$work/proxychains-$s.conf" curl -sS --max-time 20 "http://127.0.0.1:$http_port/page.html"
    check "$s chromium" chromium --headless --no-sandbox --disable-gpu --disable-quic --disable-background-networking \
        --disable-component-update --disable-sync --no-first-run --user-data-dir="$work/chromium-$s" \
        --proxy-server="socks4://127.0.0.1:$p" --proxy-bypass-list='<-loopback>' --virtual-time-budget=5000 \
        --dump-dom "http://127.0.0.1:$http_port/page.html"
    # HAProxy (>= 2.0) reaching its backend through the SOCKS4 proxy: `server ... socks4 ADDR`.
    local hp hpid
    hp=$(free_port)
    printf 'defaults\n    mode http\n    timeout connect 5s\n    timeout client 20s\n    timeout server 20s\n' > "$work/haproxy-$s.cfg"
    printf 'frontend web\n    bind 127.0.0.1:%s\n    default_backend origin\n' "$hp" >> "$work/haproxy-$s.cfg"
    printf 'backend origin\n    server origin 127.0.0.1:%s socks4 127.0.0.1:%s\n' "$http_port" "$p" >> "$work/haproxy-$s.cfg"
    haproxy -db -f "$work/haproxy-$s.cfg" >"$work/haproxy-$s.log" 2>&1 &
    hpid=$!
    pids+=("$hpid")
    wait_port "$hp" 60
    check "$s haproxy socks4" curl -sS --max-time 20 "http://127.0.0.1:$hp/page.html"
    kill "$hpid" 2>/dev/null || true
}

checker() { # name, proxy addr, socks4-check flags...
    local name=$1 addr=$2; shift 2
    echo "--- socks4-check $addr ($name)"
    if timeout 300 "$bin/socks4-check" "$addr" "$@" | tee "$work/check-$name.txt" | grep -v '^PASS'; then :; fi
    if tail -1 "$work/check-$name.txt" | grep -q ' 0 failed'; then
        echo "PASS $name socks4-check: $(tail -1 "$work/check-$name.txt")"; passed=$((passed + 1))
    else
        echo "FAIL $name socks4-check: $(tail -1 "$work/check-$name.txt")"; failed=$((failed + 1))
    fi
}

for s in ${INTEROP_SERVERS:-tokio smol std}; do
    port=$(free_port)
    "$bin/socks4-$s" --listen "127.0.0.1:$port" --workers 2 --handshake-timeout 2s --bind-timeout 10s \
        --max-connections 20000 --deny 'user denied' --allow any --log-level info >"$work/server-$s.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    echo "=== socks4-$s on 127.0.0.1:$port"
    server_log="$work/server-$s.log"
    run_clients "socks4-$s" "$port"
    server_log=""
    checker "socks4-$s" "127.0.0.1:$port" --user-id-limit 255 --handshake-timeout 2 --denied-user denied
done

echo "=== Dante (reference)"
export DANTE_DIR="$work/dante"
mkdir -p "$DANTE_DIR"
dante_addr=""
for _ in 1 2 3; do
    dante_addr=$(socks4-tools/scripts/dante.sh 2>"$work/dante.err") && break
    dante_addr=""
done
if [ -n "$dante_addr" ]; then
    checker dante "$dante_addr" --handshake-timeout 2 --no-localhost --user-id-limit 1382
    kill "$(cat "$DANTE_DIR/danted.pid")" 2>/dev/null || true
else
    echo "FAIL dante: $(cat "$work/dante.err")"; failed=$((failed + 1))
fi

echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
