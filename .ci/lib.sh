# Shared by .ci/interop.sh and .ci/examples.sh (sourced): a scratch dir and child processes cleaned
# up on exit, and port helpers. Callers append background PIDs to `pids`.
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port [seconds, default 10]
    for _ in $(seq $((${2:-10} * 10))); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listening on 127.0.0.1:$1" >&2; return 1
}
