#!/usr/bin/env bash
# User-space instructions per request in each server process, counted by callgrind (steadier
# than timings on a shared machine: a change of a few per cent shows).
#
#   benches/callgrind.sh [KIND] [OUTDIR]
#
# KIND is an e2e server (`E2E_SERVE`: baton, listeners, single, reuseport, reuseport-fin;
# default baton). Starts it under `valgrind --tool=callgrind --trace-children=yes` (so the
# workers are counted too), runs our load client once to warm up, zeroes the counters, runs it
# again (new connection per request), dumps, and prints each process's instructions per
# request. The dumps stay in OUTDIR (default a new temporary directory) for callgrind_annotate.
# Installs valgrind from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-baton}"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"

# shellcheck source=benches/lib.sh
. benches/lib.sh
need valgrind
e2e_binary

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
start_server "$bin" "$dir" "$kind" valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/callgrind.%p"
E2E_LOAD="close $server_addr" "$bin" >/dev/null # warm-up
callgrind_control -z >/dev/null 2>&1
result=$(E2E_LOAD="close $server_addr" "$bin")
callgrind_control -d >/dev/null 2>&1
stop_server

# The client reports requests/s over its measured run, which follows a warm-up that also
# counts here: rate × (warm-up + run), as in benches/benches/e2e.rs (0.5 s + 2 s).
requests=$(echo "$result" | awk '{print $1 * 2.5}')
echo "$kind: $result"
for dump in "$out"/callgrind.*.1; do
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
    awk -v t="$total" -v r="$requests" -v f="$dump" 'BEGIN { printf "%-40s %12d instructions, %7.0f per request\n", f, t, t / r }'
done
