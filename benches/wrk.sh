#!/usr/bin/env bash
# The end-to-end comparison driven by wrk instead of our own load client.
#
#   benches/wrk.sh [SECONDS] [ROUNDS]
#
# Builds the e2e bench binary, then for each server of `benches/benches/e2e.rs` — (b) SO_REUSEPORT
# prefork, (a) baton prefork (least-loaded), (a') baton with the listener shared with the workers,
# (c) baton single process, and (b+) SO_REUSEPORT with baton's TCP options (deferred accept, the
# last answer and the FIN in one segment; new connection per request only) — starts it on a free
# loopback port (E2E_SERVE), runs wrk for a new connection per request (32 connections,
# `Connection: close`) and for keep-alive (64 connections), and stops it. The servers take turns,
# ROUNDS times (default 3): this machine's speed drifts between runs, so each ratio is the median
# of the ratios measured in the same round. Installs wrk from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-3}"

# shellcheck source=benches/lib.sh
. benches/lib.sh
need wrk
e2e_binary

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

fail() {
    echo "wrk.sh: $*" >&2
    exit 1
}

# KIND MODE...: starts server KIND, prints "MODE REQUESTS/S" for each mode ("close", "keep").
run() {
    local kind=$1 mode rate
    shift
    start_server "$bin" "$dir" "$kind"
    for mode in "$@"; do
        if [ "$mode" = close ]; then
            rate=$(wrk -t1 -c32 -d"${secs}s" -H "Connection: close" "http://$server_addr/" | sed -n 's/Requests\/sec: *//p')
        else
            rate=$(wrk -t1 -c64 -d"${secs}s" "http://$server_addr/" | sed -n 's/Requests\/sec: *//p')
        fi
        [ -n "$rate" ] || { stop_server; fail "wrk gave no rate for $kind ($mode)"; }
        echo "$mode $rate"
    done
    stop_server
}

[ "$rounds" -ge 1 ] 2>/dev/null || fail "ROUNDS must be a whole number of at least 1, not '$rounds'"

# One line per run: ROUND VARIANT MODE REQUESTS/S
results="$dir/results"
for round in $(seq "$rounds"); do
    for variant in reuseport baton listeners single reuseport-fin; do
        modes="close keep"
        [ "$variant" = reuseport-fin ] && modes="close"
        # shellcheck disable=SC2086 # the modes are words
        run "$variant" $modes >"$dir/run"
        while read -r mode rate; do
            echo "$round $variant $mode $rate" >>"$results"
        done <"$dir/run"
    done
done

awk -v secs="$secs" -v rounds="$rounds" '
function ratio(a, b) { return b > 0 ? a / b : 0 }
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rate[$1, $2, $3] = $4; all[$2, $3] = all[$2, $3] " " $4 }
END {
    split("reuseport baton listeners single reuseport-fin", order, " ")
    name["reuseport"] = "(b) SO_REUSEPORT prefork"; name["baton"] = "(a) baton prefork"
    name["listeners"] = "(a'"'"') baton, shared listener"; name["single"] = "(c) baton single process"
    name["reuseport-fin"] = "(b+) SO_REUSEPORT, baton TCP opts"
    printf "wrk, %ss per run, medians of %s interleaved rounds\n", secs, rounds
    printf "%-34s %12s %8s %8s %14s %8s\n", "variant", "close req/s", "x/b", "x/b+", "keep req/s", "x/b"
    for (k = 1; k <= 5; k++) {
        v = order[k]; rc = ""; rf = ""; rk = ""
        for (r = 1; r <= rounds; r++) {
            rc = rc " " ratio(rate[r, v, "close"], rate[r, "reuseport", "close"])
            rf = rf " " ratio(rate[r, v, "close"], rate[r, "reuseport-fin", "close"])
            if (v != "reuseport-fin") rk = rk " " ratio(rate[r, v, "keep"], rate[r, "reuseport", "keep"])
        }
        if (v == "reuseport-fin")
            printf "%-34s %12.0f %8.3f %8.3f %14s %8s\n", name[v], median(all[v, "close"]), median(rc), median(rf), "-", "-"
        else
            printf "%-34s %12.0f %8.3f %8.3f %14.0f %8.3f\n", name[v], median(all[v, "close"]), median(rc), median(rf), median(all[v, "keep"]), median(rk)
    }
    print "(ratios: the median over rounds of the ratio measured in the same round)"
}' "$results"
