#!/usr/bin/env bash
# Before/after: the e2e bench's baton prefork server (a) from two builds, new connection per
# request, interleaved in one run, driven by our load client and by wrk.
#
#   benches/ab.sh OLD_E2E_BINARY [ROUNDS] [SECONDS]
#
# OLD_E2E_BINARY is the e2e bench executable of the other build (in its worktree:
# `cargo bench -p baton-benches --bench e2e --no-run` prints it); this tree's is built. Each
# round starts each build's server in turn (`E2E_SERVE=baton`, least-loaded, on a free loopback
# port; the order alternates between rounds), runs our client against it for one run of the
# bench's RUN (`E2E_LOAD="close ADDR"`, 32 clients, always this tree's binary so only the server
# differs), then `wrk -t1 -c32 -dSECONDS -H 'Connection: close'` (default 5 s), and stops it.
# ROUNDS defaults to 7. Prints every run, then per client the median requests/s of each build,
# the median of the same-round ratios new/old, and their range (the noise).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '5p' "$0" | sed 's/^# *//' >&2; exit 2; }
old=$1
rounds="${2:-7}"
secs="${3:-5}"
[ -x "$old" ] || { echo "ab.sh: no executable at $old" >&2; exit 1; }
[ "$rounds" -ge 1 ] 2>/dev/null || { echo "ab.sh: ROUNDS must be a whole number of at least 1" >&2; exit 2; }

# shellcheck source=benches/lib.sh
. benches/lib.sh
need wrk
e2e_binary
new=$bin

dir=$(mktemp -d)
server_pid=""
trap '[ -n "$server_pid" ] && stop_server; rm -rf "$dir"' EXIT

echo "old: $old" >&2
echo "new: $new" >&2
results="$dir/results"
for round in $(seq "$rounds"); do
    order="old new"
    [ $((round % 2)) -eq 0 ] && order="new old"
    for build in $order; do
        b=$old
        [ "$build" = new ] && b=$new
        start_server "$b" "$dir" baton
        ours=$(E2E_LOAD="close $server_addr" "$new" | sed -n 's|^\([0-9.]*\) requests/s.*|\1|p')
        theirs=$(wrk -t1 -c32 -d"${secs}s" -H "Connection: close" "http://$server_addr/" | sed -n 's/Requests\/sec: *//p')
        stop_server
        server_pid=""
        [ -n "$ours" ] && [ -n "$theirs" ] || { echo "ab.sh: no rate from round $round ($build)" >&2; exit 1; }
        echo "round $round $build ours $ours wrk $theirs" >&2
        echo "$round $build ours $ours" >>"$results"
        echo "$round $build wrk $theirs" >>"$results"
    done
done

awk -v rounds="$rounds" -v secs="$secs" '
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rate[$1, $2, $3] = $4; all[$2, $3] = all[$2, $3] " " $4 }
END {
    printf "baton prefork (a), new connection per request, old vs new build, %d interleaved rounds\n", rounds
    printf "%-28s %12s %12s %10s %18s\n", "client", "old req/s", "new req/s", "new/old", "ratio range"
    split("ours wrk", clients, " ")
    name["ours"] = "our client (32, RUN)"; name["wrk"] = "wrk -t1 -c32 -d" secs "s"
    for (k = 1; k <= 2; k++) {
        c = clients[k]; r = ""; lo = 1e9; hi = 0
        for (i = 1; i <= rounds; i++) {
            x = rate[i, "new", c] / rate[i, "old", c]; r = r " " x
            if (x < lo) lo = x; if (x > hi) hi = x
        }
        printf "%-28s %12.0f %12.0f %10.3f %8.3f - %.3f\n", name[c], median(all["old", c]), median(all["new", c]), median(r), lo, hi
    }
    print "(new/old: the median over rounds of the ratio measured in the same round)"
}' "$results"
