#!/usr/bin/env bash
# CPU, context switches and syscalls per request of the server and the
# client, for one load through the tunnel: a steadier yardstick than the
# requests/s ratios when other work shares the machine.
#
#   scripts/perf-stat.sh [BIN_DIR] [CONNECTIONS] [SECONDS] [PATH]
#   scripts/perf-stat.sh target/release 1 6 /small   # the defaults
#   scripts/perf-stat.sh target/release 10 6 /1m     # 1 MiB responses
#
# Starts `cryptun-bench origin`, `cryptun server` and `cryptun http` from
# BIN_DIR (build them first: cargo build --release -p cryptun -p
# cryptun-bench), warms the tunnel up for a second, then runs wrk with
# CONNECTIONS keep-alive connections (`-t1`, or `-t2` above one connection)
# for SECONDS - 1 seconds while `perf stat` watches the server and the
# client for SECONDS. Prints wrk's rate and latency, then per request:
# task-clock (CPU time of all threads), context switches and socket
# syscalls. Needs perf and wrk; everything stays on 127.0.0.1.
#
#   scripts/perf-stat.sh --timeline [BIN_DIR] [SECONDS]
#
# records every socket call of the server and the client instead (`perf
# record -e raw_syscalls:*`, one connection) and prints where one request's
# time goes, step by step (scripts/timeline.py): in each process, and in
# waking the next one.
set -euo pipefail
timeline=false
if [ "${1:-}" = "--timeline" ]; then
    timeline=true
    shift
    set -- "${1:-target/release}" 1 "${2:-4}" /small
fi
bin=${1:-target/release}
conns=${2:-1}
secs=${3:-6}
path=${4:-/small}
threads=1
if [ "$conns" -gt 1 ]; then threads=2; fi
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The origin exits when its stdin closes: keep a pipe open for it.
mkfifo "$work/stdin"
sleep 3600 >"$work/stdin" &
pids+=($!)
"$bin/cryptun-bench" origin --listen 127.0.0.1:0 <"$work/stdin" >"$work/origin.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/origin.out" ] && break; sleep 0.1; done
origin=$(head -1 "$work/origin.out")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/cryptun" server --listen "127.0.0.1:$port" >/dev/null 2>&1 &
server=$!
pids+=($server)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
"$bin/cryptun" http "$origin" --server "http://127.0.0.1:$port" --json --inspect=off \
    >"$work/client.out" 2>/dev/null &
client=$!
pids+=($client)
for _ in $(seq 50); do [ -s "$work/client.out" ] && break; sleep 0.1; done
url=$(head -1 "$work/client.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_url"])')
host=${url#http://}
wrk -t1 -c"$conns" -d1s -H "Host: $host" "http://127.0.0.1:$port/small" >/dev/null

if $timeline; then
    watch=(perf record -q -e raw_syscalls:sys_enter,raw_syscalls:sys_exit)
    out=data
else
    events=task-clock,context-switches,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom
    watch=(perf stat -x, -e "$events")
    out=stat
fi
"${watch[@]}" -p "$server" -o "$work/server.$out" -- sleep "$secs" &
stat_server=$!
"${watch[@]}" -p "$client" -o "$work/client.$out" -- sleep "$secs" &
stat_client=$!
sleep 0.2
wrk -t"$threads" -c"$conns" -d"$((secs - 1))"s --latency -H "Host: $host" \
    "http://127.0.0.1:$port$path" >"$work/wrk.out"
wait "$stat_server" "$stat_client"
requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
grep -E "Requests/sec|Transfer/sec|  50%|  99%|errors|Non-2xx" "$work/wrk.out"
if $timeline; then
    for role in server client; do
        perf script -i "$work/$role.data" >"$work/$role.trace"
    done
    python3 "$(dirname "$0")/timeline.py" "$work/server.trace" "$work/client.trace"
    exit 0
fi
echo "per request over $requests requests (wrk -t$threads -c$conns):"
for role in server client; do
    awk -F, -v n="$requests" -v role="$role" '
        $3 == "task-clock" { printf "  %s: %.1f µs CPU", role, $1 * 1000 / n }
        $3 == "context-switches" { printf ", %.2f context switches", $1 / n }
        $3 ~ /sys_enter/ { sub(/syscalls:sys_enter_/, "", $3); printf ", %.2f %s", $1 / n, $3 }
        END { print "" }' "$work/$role.stat"
done
