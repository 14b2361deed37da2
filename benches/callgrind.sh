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

if ! command -v valgrind >/dev/null; then
    echo "valgrind not found; installing it (apt-get)" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get install -y valgrind >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y valgrind >/dev/null; }
fi

cargo bench -p baton-benches --bench e2e --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/e2e-* | grep -v '\.d$' | head -1)

dir=$(mktemp -d)
trap 'exec 7>&- 2>/dev/null || true; rm -rf "$dir"' EXIT
mkfifo "$dir/in"
E2E_SERVE=$kind valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/callgrind.%p" \
    "$bin" <"$dir/in" >"$dir/out" 2>"$dir/err" &
server=$!
exec 7>"$dir/in"
addr=""
for _ in $(seq 600); do
    addr=$(sed -n 's|listening on http://||p' "$dir/out" 2>/dev/null)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "callgrind.sh: server $kind did not start: $(tail -3 "$dir/err")" >&2; exit 1; }
E2E_LOAD="close $addr" "$bin" >/dev/null # warm-up
callgrind_control -z >/dev/null 2>&1
result=$(E2E_LOAD="close $addr" "$bin")
callgrind_control -d >/dev/null 2>&1
exec 7>&- # end of stdin: the server stops
wait "$server" || true

# The client reports requests/s over its measured run, which follows a warm-up that also
# counts here: rate × (warm-up + run), as in benches/benches/e2e.rs (0.5 s + 2 s).
requests=$(echo "$result" | awk '{print $1 * 2.5}')
echo "$kind: $result"
for dump in "$out"/callgrind.*.1; do
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
    awk -v t="$total" -v r="$requests" -v f="$dump" 'BEGIN { printf "%-40s %12d instructions, %7.0f per request\n", f, t, t / r }'
done
