#!/usr/bin/env bash
# Instructions the server executes per request, counted by valgrind's
# callgrind: a count, not a time, so the same binary and requests give the
# same figure whatever else the machine is doing. For A/B comparisons of a
# change on the request path, beside scripts/bench.sh (which times).
#
#   scripts/instructions.sh [--client] [BIN_DIR] [REQUESTS]
#
# BIN_DIR holds the `cryptun` to measure (default: target/release, built
# first). Runs the server (with --client, the client, its --hello service
# included) under callgrind twice, with 0 and with REQUESTS (default 2,000)
# sequential keep-alive GETs through a `cryptun http --hello` tunnel on
# loopback, and prints the difference per request, so start-up and
# shutdown cancel out. Needs valgrind and python3. CALLGRIND_KEEP=DIR
# keeps the profiles (see below).
#
# glibc copies blocks over 4 KiB with `rep movsb`, which valgrind counts
# once per byte: a future growing past that size would read as thousands
# more instructions the machine does not execute. The copies are kept on
# glibc's vector loop (GLIBC_TUNABLES below) so that counts compare.
set -euo pipefail
cd "$(dirname "$0")/.."
side=server
if [ "${1:-}" = "--client" ]; then side=client; shift; fi
dir=${1:-target/release}
n=${2:-2000}
if [ "$dir" = target/release ]; then cargo build --release -q -p cryptun; fi
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# CALLGRIND_KEEP=DIR keeps the callgrind files there (cg.0 and cg.N), for
# callgrind_annotate to say where the instructions go.
if [ -n "${CALLGRIND_KEEP:-}" ]; then
    work=$CALLGRIND_KEEP; mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi

# The server's instruction count for `requests` requests.
count() {
    local requests=$1 out="$work/cg.$1" log="$work/server.$1" client="$work/client.$1" port="" name=""
    local measured=(env GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=1048576
        valgrind --tool=callgrind --callgrind-out-file="$out")
    local server_run=() client_run=()
    if [ "$side" = server ]; then server_run=("${measured[@]}"); else client_run=("${measured[@]}"); fi
    "${server_run[@]}" "$dir/cryptun" server --listen 127.0.0.1:0 >"$log" 2>&1 &
    local server=$!
    for _ in $(seq 200); do
        port=$(grep -o 'addr=127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2 || true)
        [ -n "$port" ] && break
        sleep 0.25
    done
    CRYPTUN_INSPECT=off "${client_run[@]}" "$dir/cryptun" http --hello --json --server "http://127.0.0.1:$port" >"$client" 2>&1 &
    local tunnel=$!
    for _ in $(seq 200); do
        name=$(grep -o '"subdomain":"[a-z0-9-]*"' "$client" | head -1 | cut -d'"' -f4 || true)
        [ -n "$name" ] && break
        sleep 0.25
    done
    python3 - "$port" "$name" "$requests" <<'PY'
import http.client, sys
port, name, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", "/", headers={"Host": f"{name}.localhost:{port}"})
    reply = conn.getresponse()
    reply.read()
    assert reply.status == 200, reply.status
PY
    kill "$tunnel"; wait "$tunnel" 2>/dev/null || true
    kill -TERM "$server"; wait "$server" 2>/dev/null || true
    grep '^summary:' "$out" | cut -d' ' -f2
}

base=$(count 0)
loaded=$(count "$n")
echo "$side instructions per request: $(( (loaded - base) / n )) ($n requests, $dir/cryptun)"
