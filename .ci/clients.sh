#!/usr/bin/env bash
# socks4-check --client against SOCKS4 clients: the project's own connectors (socks4-tokio,
# socks4-smol, socks4-std through their `*_client` examples), which must pass every case (this
# script fails otherwise), and real clients installed as users would (apt-get, npm), whose results
# are findings, printed as the README's table ("SOCKS4 clients, checked"), not failures. A client
# that cannot be installed here is skipped with the reason. Everything runs on 127.0.0.1; each
# client's whole run takes seconds. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
missing=()
for c in curl:curl socat:socat ncat:ncat nc:netcat-openbsd proxychains4:proxychains4; do
    command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
done
/usr/bin/python3 -c 'import socks' 2>/dev/null || missing+=(python3-socks)
/usr/bin/python3 -c 'import python_socks' 2>/dev/null || missing+=(python3-python-socks)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || echo "apt-get install failed: clients missing below are skipped"
fi

cargo build -q -p socks4-tools --bins
cargo build -q -p socks4-tokio -p socks4-smol -p socks4-std --examples
cargo build -q -p socks4-tokio --features hyper --example hyper_get
bin="${CARGO_TARGET_DIR:-target}/debug"

# shellcheck source=lib.sh
. .ci/lib.sh
clients=.ci/clients
check=("$bin/socks4-check" --client --client-timeout 1 --client-limit 5)
get="printf 'GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n'"

passed=0
failed=0
table="$work/table.md"
printf '| client | how it was run | result | failed cases |\n| --- | --- | --- | --- |\n' > "$table"
row() { # name, how, report file
    local summary fails info
    summary=$(tail -1 "$3")
    fails=$(grep '^FAIL' "$3" | sed 's/^FAIL \([a-z0-9_]*\):.*/`\1`/' | paste -sd ' ' -) || true
    info=$(grep '^INFO reply_version_4' "$3" | sed 's/^INFO reply_version_4: \([a-z]*\).*/VN 4 reply \1/') || true
    printf '| %s | %s | %s%s | %s |\n' "$1" "$2" "$summary" "${info:+; $info}" "${fails:-none}" >> "$table"
}
run() { # must|finding, name, how (for the table), socks4-check options...
    local kind=$1 name=$2 how=$3; shift 3
    local report="$work/client-${name//[^a-zA-Z0-9]/_}.txt"
    "${check[@]}" "$@" >"$report" 2>&1 || true
    echo "--- $name: $(tail -1 "$report")"
    grep -v '^PASS' "$report" | grep -v '^[0-9]* passed' | sed 's/^/    /' || true
    row "$name" "$how" "$report"
    if [ "$kind" = must ]; then
        if tail -1 "$report" | grep -q ' 0 failed, 0 skipped$'; then
            passed=$((passed + 1))
        else
            echo "FAIL $name: the project's own connector must pass every case"; failed=$((failed + 1))
        fi
    fi
}
skip() { echo "--- $1: SKIP ($2)"; printf '| %s | | skipped: %s | |\n' "$1" "$2" >> "$table"; }

for c in tokio smol std; do
    e="$bin/examples/${c}_client"
    run must "socks4-$c" "\`${c}_client\` example, \`--4a\`" --4a \
        --run "$e connect {proxy} {host} {port} '{user}' {path} 1" --bind-run "$e bind {proxy} {host} {port} '{user}' 1"
done
# socks4-tokio's hyper connector (feature `hyper`) under hyper-util's Client: no BIND, so its three
# cases are left out (--skip: not run, not counted).
e="$bin/examples/hyper_get"
run must "socks4-tokio hyper" "\`hyper_get\` example (\`hyper::SocksConnector\`), \`--4a\`" --4a \
    --run "$e --4a --timeout 1 {proxy} {url} '{user}'" --skip bind_two_replies --skip bind_unspecified_address --skip bind_second_reply_rejected

if command -v curl >/dev/null; then
    run finding "curl $(curl --version | head -1 | cut -d' ' -f2) socks4a" '`-x socks4a://{user}@{proxy} --connect-timeout 1`, `--4a`' \
        --4a --run "curl -sS --max-time 10 --connect-timeout 1 -x 'socks4a://{user}@{proxy}' {url}"
    run finding "curl socks4" '`-x socks4://{user}@{proxy}` (resolves locally)' \
        --run "curl -sS --max-time 10 --connect-timeout 1 -x 'socks4://{user}@{proxy}' {url}"
else skip curl "not installed"; fi
if command -v socat >/dev/null; then
    run finding "socat $(socat -V | sed -n 's/^socat version \([^ ]*\).*/\1/p') SOCKS4A" '`SOCKS4A:…,socksuser={user}`, request on stdin, `--4a`' \
        --4a --run "$get | socat -t 3 - 'SOCKS4A:{proxy_host}:{host}:{port},socksport={proxy_port},socksuser={user}'"
else skip socat "not installed"; fi
if command -v ncat >/dev/null; then
    run finding "ncat $(ncat --version 2>&1 | sed -n 's/.*Version \([^ ]*\).*/\1/p')" '`--proxy-type socks4 --proxy-auth {user}`' \
        --run "$get | ncat --proxy {proxy} --proxy-type socks4 --proxy-auth '{user}' {host} {port}"
else skip ncat "not installed"; fi
if command -v nc >/dev/null && nc -h 2>&1 | grep -q OpenBSD; then
    # -P (proxy user) is for HTTP proxies only: no user id can be given, so the user-id cases skip.
    run finding "OpenBSD netcat $(dpkg-query -W -f='${Version}' netcat-openbsd 2>/dev/null | cut -d- -f1)" '`nc -X 4 -x {proxy}` (no user-id option)' \
        --run "$get | nc -X 4 -x {proxy} {host} {port}"
else skip "OpenBSD netcat" "not installed"; fi
if /usr/bin/python3 -c 'import socks' 2>/dev/null; then
    run finding "PySocks $(/usr/bin/python3 -c 'import socks; print(socks.__version__)')" '`set_proxy(SOCKS4, rdns=True, username={user})`, `--4a`' \
        --4a --run "/usr/bin/python3 $clients/pysocks_fetch.py {proxy_host} {proxy_port} {host} {port} '{user}' {path} 1"
else skip PySocks "python3-socks not installed"; fi
if /usr/bin/python3 -c 'import python_socks' 2>/dev/null; then
    run finding "python-socks $(/usr/bin/python3 -c 'import python_socks; print(python_socks.__version__)')" '`sync.Proxy.create(SOCKS4, rdns=True)`, `--4a`' \
        --4a --run "/usr/bin/python3 $clients/python_socks_fetch.py {proxy_host} {proxy_port} {host} {port} '{user}' {path} 1"
else skip python-socks "python3-python-socks not installed"; fi
if command -v proxychains4 >/dev/null; then
    pc="printf 'strict_chain\nproxy_dns\ntcp_read_time_out 1000\ntcp_connect_time_out 1000\n[ProxyList]\nsocks4 {proxy_host} {proxy_port} {user}\n' > $work/pc-{case}.conf"
    # proxy_dns still resolves names in /etc/hosts (localhost) itself: a name it must send to the proxy.
    run finding "proxychains4 $(dpkg-query -W -f='${Version}' proxychains4 2>/dev/null | cut -d- -f1)" '`socks4 … {user}`, `proxy_dns`, around curl; `--4a --host socks4-check.test`' \
        --4a --host socks4-check.test --run "$pc && proxychains4 -q -f $work/pc-{case}.conf curl -sS --max-time 10 {url}"
else skip proxychains4 "not installed"; fi
if command -v npm >/dev/null && command -v node >/dev/null \
    && (cd "$work" && timeout 120 npm install --silent --no-audit --no-fund socks@2 >/dev/null 2>&1); then
    run finding "node socks $(node -p "require('$work/node_modules/socks/package.json').version")" '`SocksClient.createConnection({type: 4, userId})`, `--4a`' \
        --4a --run "NODE_PATH=$work/node_modules node $clients/socks_fetch.js {proxy_host} {proxy_port} {host} {port} '{user}' {path} 1"
else skip "node socks" "node/npm missing or npm install failed"; fi
if command -v javac >/dev/null && javac -d "$work/java" "$clients/Fetch.java" 2>/dev/null; then
    # Java's SOCKS v4 needs a resolved IPv4 destination: the host is given as 127.0.0.1.
    run finding "Java $(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p') SOCKS v4" '`-DsocksProxyVersion=4 -Duser.name={user}`, `--host 127.0.0.1`' \
        --host 127.0.0.1 --run "java -cp $work/java -DsocksProxyVersion=4 -Duser.name='{user}' Fetch {proxy_host} {proxy_port} {host} {port} {path} 1"
else skip Java "no JDK (javac)"; fi
rust_clients=.ci/clients/rust
if [ "${SOCKS4_CLIENTS_RUST:-0}" = 1 ]; then
    rust_target="${CARGO_TARGET_DIR:-$PWD/target}/third-party-clients"
    if cargo build -q --locked --manifest-path "$rust_clients/Cargo.toml" --target-dir "$rust_target"; then
        version() { grep -A1 "^name = \"$1\"$" "$rust_clients/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p'; }
        run finding "tokio-socks $(version tokio-socks)" '`Socks4Stream::connect_with_userid`, `--4a`' \
            --4a --run "$rust_target/debug/tokio-socks-client {proxy} {host} {port} '{user}' {path} 1"
        # Its SOCKS4 connector sends no user id (nothing in its API sets one): the user-id cases skip.
        run finding "hyper-util $(version hyper-util) SocksV4" '`SocksV4::new(socks4a://{proxy}).local_dns(false)` (no user id), `--4a`' \
            --4a --run "$rust_target/debug/hyper-util-client {proxy} {host} {port} '' {path} 1"
    else skip "tokio-socks, hyper-util" "cargo build of $rust_clients failed"; fi
else
    skip "tokio-socks, hyper-util (reqwest)" "built from source, about a minute: SOCKS4_CLIENTS_RUST=1 runs them"
fi
skip "Chromium" "--dump-dom exits 0 on proxy errors, so exit statuses cannot be judged"

echo
echo "=== the README's table (socks4-check --client --client-timeout 1, $(date -u +%Y-%m-%d))"
cat "$table"
echo "own connectors: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
