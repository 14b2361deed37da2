#!/usr/bin/env bash
# The end-to-end comparison driven by wrk instead of our own load client.
#
#   benches/wrk.sh [SECONDS] [ROUNDS]
#
# Builds the e2e bench binary, then for each server of `benches/benches/e2e.rs` — (b) SO_REUSEPORT
# prefork, (a) baton prefork (least-loaded), (a') baton with the listener shared with the workers,
# (a'') baton steered (a SO_REUSEPORT socket per worker, weighted by the parent), (c) baton single
# process, and (b+) SO_REUSEPORT with baton's TCP options (deferred accept, the
# last answer and the FIN in one segment; new connection per request only) — starts it on a free
# loopback port (E2E_SERVE), runs wrk for a new connection per request (32 connections,
# `Connection: close`) and for keep-alive (64 connections), and stops it. The servers take turns,
# ROUNDS times (default 3): this machine's speed drifts between runs, so each ratio is the median
# of the ratios measured in the same round. Installs wrk from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-3}"
# wrk's flags for a new connection per request (WRK_CLOSE="-t2 -c64" for the issue's setting).
close_flags="${WRK_CLOSE:--t1 -c32}"

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

# CPU time (clock ticks) of the server's processes: the e2e process and its children (workers).
server_cpu() {
    local p
    for p in $server_pid $(pgrep -P "$server_pid"); do
        awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true
    done | awk '{s += $1} END {print s + 0}'
}

# KIND MODE...: starts server KIND, prints "MODE REQUESTS/S CPU_US_PER_REQUEST" for each mode
# ("close", "keep").
run() {
    local kind=$1 mode rate out before after
    shift
    start_server "$bin" "$dir" "$kind"
    for mode in "$@"; do
        before=$(server_cpu)
        if [ "$mode" = close ]; then
            # shellcheck disable=SC2086 # the flags are words
            out=$(wrk $close_flags -d"${secs}s" -H "Connection: close" "http://$server_addr/")
        else
            out=$(wrk -t1 -c64 -d"${secs}s" "http://$server_addr/")
        fi
        after=$(server_cpu)
        rate=$(echo "$out" | sed -n 's/Requests\/sec: *//p')
        [ -n "$rate" ] || { stop_server; fail "wrk gave no rate for $kind ($mode)"; }
        echo "$mode $rate $(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v r="$rate" -v s="$secs" 'BEGIN {printf "%.2f", t / hz * 1e6 / (r * s)}')"
    done
    stop_server
}

[ "$rounds" -ge 1 ] 2>/dev/null || fail "ROUNDS must be a whole number of at least 1, not '$rounds'"

# One line per run: ROUND VARIANT MODE REQUESTS/S
results="$dir/results"
for round in $(seq "$rounds"); do
    for variant in reuseport baton listeners steered single reuseport-fin; do
        modes="close keep"
        [ "$variant" = reuseport-fin ] && modes="close"
        # shellcheck disable=SC2086 # the modes are words
        run "$variant" $modes >"$dir/run"
        while read -r mode rate cpu; do
            echo "$round $variant $mode $rate $cpu" >>"$results"
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
{ rate[$1, $2, $3] = $4; cpu[$1, $2, $3] = $5; all[$2, $3] = all[$2, $3] " " $4 }
END {
    split("reuseport baton listeners steered single reuseport-fin", order, " ")
    name["reuseport"] = "(b) SO_REUSEPORT prefork"; name["baton"] = "(a) baton prefork"
    name["listeners"] = "(a'"'"') baton, shared listener"; name["single"] = "(c) baton single process"
    name["steered"] = "(a'"'"''"'"') baton, steered"
    name["reuseport-fin"] = "(b+) SO_REUSEPORT, baton TCP opts"
    printf "wrk, %ss per run, medians of %s interleaved rounds\n", secs, rounds
    printf "%-34s %12s %8s %8s %10s %14s %8s %10s\n", "variant", "close req/s", "x/b", "x/b+", "cpu/req x/b", "keep req/s", "x/b", "cpu/req x/b"
    for (k = 1; k <= 6; k++) {
        v = order[k]; rc = ""; rf = ""; rk = ""; cc = ""; ck = ""
        for (r = 1; r <= rounds; r++) {
            rc = rc " " ratio(rate[r, v, "close"], rate[r, "reuseport", "close"])
            cc = cc " " ratio(cpu[r, v, "close"], cpu[r, "reuseport", "close"])
            rf = rf " " ratio(rate[r, v, "close"], rate[r, "reuseport-fin", "close"])
            if (v != "reuseport-fin") {
                rk = rk " " ratio(rate[r, v, "keep"], rate[r, "reuseport", "keep"])
                ck = ck " " ratio(cpu[r, v, "keep"], cpu[r, "reuseport", "keep"])
            }
        }
        if (v == "reuseport-fin")
            printf "%-34s %12.0f %8.3f %8.3f %10.3f %14s %8s %10s\n", name[v], median(all[v, "close"]), median(rc), median(rf), median(cc), "-", "-", "-"
        else
            printf "%-34s %12.0f %8.3f %8.3f %10.3f %14.0f %8.3f %10.3f\n", name[v], median(all[v, "close"]), median(rc), median(rf), median(cc), median(all[v, "keep"]), median(rk), median(ck)
    }
    print "(ratios: the median over rounds of the ratio measured in the same round; cpu/req: the"
    print " server processes'"'"' CPU time per request over (b)'"'"'s, new connection per request and keep-alive)"
}' "$results"
