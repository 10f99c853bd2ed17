#!/usr/bin/env bash
# Cryptun's performance benchmark, in one command:
#
#   scripts/bench.sh            # full run (10 s per wrk run; 1,000 and 10,000 idle tunnels)
#   scripts/bench.sh --quick    # 3 s per wrk run; 1,000 idle tunnels
#   scripts/bench.sh --compare  # also run the load through the yardsticks of
#                               # issue 16, same origin, same run: bore and
#                               # rathole (established TCP tunnels), nginx as
#                               # a one-hop reverse proxy, and visitors over
#                               # HTTPS (Cryptun's listener vs nginx's)
#   scripts/bench.sh --nginx    # nginx as the origin (issue 3's yardstick was
#                               # measured with it) instead of our own
#   scripts/bench.sh --cluster  # also measure two cluster nodes on a Redis
#                               # (the hop's cost, Redis's work per tunnel)
#
# Any other arguments go to `cryptun-bench run` (see `--help` there), e.g.
#   scripts/bench.sh --duration 20 --tunnels 1000,5000 --markdown /tmp/bench.md
#
# Installs wrk with apt-get if it is missing, builds the release binaries,
# raises the open-file limit (each idle tunnel is one descriptor in the server
# and one in the swarm), and runs the orchestrator. Everything stays on
# 127.0.0.1; docs/BENCHMARKS.md explains what is measured.
#
# --compare installs what it needs if it is missing (only then: a plain run
# needs none of it): bore (`cargo install bore-cli --locked`) and rathole
# (`cargo install rathole`, without --locked: its lock file no longer builds
# on current Rust) into TARGET/bench-tools, where TARGET is $CARGO_TARGET_DIR
# or target; nginx and openssl with apt-get. It passes `--bore PATH
# --rathole PATH --nginx-proxy PATH --https`. bore's server takes port 7835,
# which must be free. --nginx installs nginx with apt-get if it is missing and
# passes `--nginx PATH`; the two combine.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
compare=false
nginx=false
cluster=false
for arg in "$@"; do
    case "$arg" in
        --compare) compare=true ;;
        --nginx) nginx=true ;;
        --cluster) cluster=true; args+=("$arg") ;;
        *) args+=("$arg") ;;
    esac
done
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_install() {
    echo "bench: installing $1" >&2
    $sudo apt-get update
    $sudo apt-get install -y "$1"
}
target="${CARGO_TARGET_DIR:-target}"
tools="$target/bench-tools"
# nginx lives in /usr/sbin, which a user's PATH may not hold.
path_nginx() { PATH="$PATH:/usr/sbin" command -v nginx; }
if $compare; then
    if [ ! -x "$tools/bin/bore" ]; then
        echo "bench: installing bore into $tools" >&2
        cargo install bore-cli --locked --root "$tools"
    fi
    if [ ! -x "$tools/bin/rathole" ]; then
        echo "bench: installing rathole into $tools" >&2
        cargo install rathole --root "$tools"
    fi
    if ! path_nginx >/dev/null; then apt_install nginx; fi
    if ! command -v openssl >/dev/null 2>&1; then apt_install openssl; fi
    args+=(--bore "$tools/bin/bore" --rathole "$tools/bin/rathole")
    args+=(--nginx-proxy "$(path_nginx)" --https)
fi

if ! command -v wrk >/dev/null 2>&1; then apt_install wrk; fi
if $nginx; then
    if ! path_nginx >/dev/null; then apt_install nginx; fi
    args+=(--nginx "$(path_nginx)")
fi

if $cluster; then
    # redis-server lives in /usr/bin; the scenario starts its own on loopback.
    if ! command -v redis-server >/dev/null 2>&1; then apt_install redis-server; fi
fi

cargo build --release -p cryptun -p cryptun-bench

# 65536 if allowed; otherwise as high as the hard limit goes.
want=65536
if ! ulimit -n "$want" 2>/dev/null; then
    hard=$(ulimit -Hn)
    if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$want" ]; then
        ulimit -n "$hard"
        echo "bench: open-file limit raised to the hard limit, $hard" >&2
    fi
fi

exec "$target/release/cryptun-bench" run "${args[@]}"
