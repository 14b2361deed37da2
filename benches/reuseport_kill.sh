#!/usr/bin/env bash
# The anchor for the kill -9 soak: what plain SO_REUSEPORT loses when a worker dies. Each of its
# processes owns its listening socket, so the connections queued there die with it (reset).
#
#   benches/reuseport_kill.sh [RUNS]     # default 3
#
# Each run starts the e2e bench's SO_REUSEPORT server (2 processes, `E2E_SERVE=reuseport`) and
# `wrk -t2 -c64 -d6s --timeout 1s -H 'Connection: close'`; after 3 s it stops one process
# (SIGSTOP) for 0.3 s, so that the connections the kernel hashes to its socket queue there,
# reads that socket's accept queue (`ss`: Recv-Q of its LISTEN line), and kills it (SIGKILL).
# It prints the queue and wrk's errors. (`benches/killsoak.sh --mode steered` is the same
# kill against baton's steered mode, where the parent holds every socket and serves the queue.)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"

# shellcheck source=benches/lib.sh
. benches/lib.sh
need wrk
e2e_binary
dir=$(mktemp -d)
trap 'exec 7>&- 2>/dev/null || true; rm -rf "$dir"' EXIT

for run in $(seq "$runs"); do
    start_server "$bin" "$dir" reuseport
    wrk -t2 -c64 -d6s --timeout 1s -H 'Connection: close' "http://$server_addr/" >"$dir/wrk" 2>&1 &
    load=$!
    sleep 3
    victim=$(pgrep -P "$server_pid" | head -1)
    kill -STOP "$victim"
    sleep 0.3
    port=${server_addr##*:}
    queued=$(ss -Hltnp "sport = :$port" | awk -v p="pid=$victim," 'index($0, p) {print $2}')
    kill -KILL "$victim"
    wait "$load" || true
    stop_server
    errors=$(sed -n 's/.*Socket errors: //p' "$dir/wrk")
    requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$dir/wrk")
    echo "run $run: ${queued:-?} connections queued on the killed process's socket; wrk: $requests requests, errors: ${errors:-none}"
done
