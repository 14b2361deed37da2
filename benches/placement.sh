#!/usr/bin/env bash
# The placement benchmark: does the server keep ordinary requests away from a worker that is
# blocked? One request in 200 is `/block?ms=20`, which blocks the worker's own loop for 20 ms
# (the shape of a single-threaded worker: Python, Ruby, Node), and says so first; every other
# request is `GET /`. A new connection per request.
#
#   benches/placement.sh [ROUNDS] [RATES] [SECS]     # defaults: 3 "2000 4000" 5
#
# Servers, 2 workers each, started afresh for every run and taking turns within a round:
#   reuseport  - 2 processes with a SO_REUSEPORT socket each and a hand-written epoll loop
#                (the e2e bench's server, `E2E_SERVE=reuseport`): the kernel places by hash.
#   listeners  - `prefork --mode listeners`: one listening socket, both workers accept from it.
#   handoff-ll, handoff-rr, handoff-p2c - `prefork` (the parent accepts and hands each
#                connection over), least-loaded, round-robin and power-of-two placement.
#   steered    - `prefork --mode steered`: a SO_REUSEPORT socket per worker, the kernel placing
#                by weights the parent sets from the workers' load.
#
# Two clients measure each server in turn:
#   - open loop, at each rate of RATES (requests/s over 64 clients): the e2e bench's client with
#     `E2E_RATE`; a latency counts from when the request was due, so a stall is charged to every
#     request it delays (as wrk2 measures). Percentiles of the ordinary requests; the heavy ones'
#     median beside. This is the placement comparison: every server gets the same offered load.
#   - closed loop: `wrk -t2 -c64 --latency` with the same mix (`placement.lua`), for the rate
#     each server reaches. A closed loop sends more heavy requests per second to a faster
#     server, so its latencies compare servers at different loads: quoted for the rate only.
#
# Prints one line per run, then per server the medians over rounds and the median of the
# same-round ratios of its p99 to reuseport's, and writes benches/placement.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
rates="${2:-2000 4000}"
secs="${3:-5}"

# shellcheck source=benches/lib.sh
. benches/lib.sh
need wrk
need curl
e2e_binary
prefork_binary

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    exec 7>&- 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/placement.lua" <<'EOF'
-- 1 request in 200 blocks its worker for 20 ms; the others are GET /.
local n = 0
request = function()
  n = n + 1
  if n % 200 == 0 then return wrk.format("GET", "/block?ms=20") end
  return wrk.format("GET", "/")
end
EOF

# start VARIANT: starts it, sets addr (and pid for a prefork).
start() {
    local args
    case $1 in
        reuseport)
            start_server "$bin" "$dir" reuseport
            addr=$server_addr
            return
            ;;
        listeners) args="--mode listeners" ;;
        handoff-ll) args="--policy least-loaded" ;;
        handoff-rr) args="--policy round-robin" ;;
        handoff-p2c) args="--policy p2c" ;;
        steered) args="--mode steered" ;;
    esac
    # shellcheck disable=SC2086 # the flags are words
    start_prefork "$dir" $args
    pid=$prefork_pid
    pids+=("$pid")
    addr=$prefork_addr
}

stop() {
    if [ "$1" = reuseport ]; then
        stop_server
    else
        kill -TERM "$pid"
        wait "$pid" || true
    fi
}

results="$dir/results"
variants="reuseport listeners handoff-ll handoff-rr handoff-p2c steered"
for round in $(seq "$rounds"); do
    for v in $variants; do
        for rate in $rates; do
            start "$v"
            # "N requests/s, p50 X, p90 Y, p99 Z, max M, F failed; H heavy: p50 A, max B"
            line=$(E2E_SECS=$secs E2E_RATE=$rate E2E_SLOW_PATH="/block?ms=20" E2E_LOAD="skew $addr" "$bin") || {
                stop "$v"
                echo "placement.sh: the load client failed against $v at $rate/s in round $round" >&2
                continue
            }
            stop "$v"
            echo "$round $v open@$rate $line" | tee -a "$results.txt"
            echo "$round $v open@$rate $(echo "$line" | sed -E 's/ ?(requests\/s|p50|p90|p99|max|failed|heavy)[:,;]?//g; s/,//g')" >>"$results"
        done
        start "$v"
        out=$(wrk -t2 -c64 -d"${secs}s" --latency -H 'Connection: close' -s "$dir/placement.lua" "http://$addr/" 2>&1) || true
        stop "$v"
        rate=$(echo "$out" | sed -n 's/Requests\/sec: *//p')
        if [ -z "$rate" ]; then
            echo "placement.sh: wrk gave no rate for $v in round $round: $(echo "$out" | tail -2)" >&2
            continue
        fi
        errors=$(echo "$out" | sed -n 's/.*Socket errors: //p')
        echo "$round $v wrk $rate req/s ${errors:+errors $errors}" | tee -a "$results.txt"
        echo "$round $v wrk $rate" >>"$results"
    done
done

# Durations as printed by Rust's {:.2?} (µs, ms, s) to milliseconds.
to_ms() {
    awk '{ v = $0; if (v ~ /µs$/) { sub(/µs$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /ns$/) { sub(/ns$/, "", v); v /= 1e6 } else { sub(/s$/, "", v); v *= 1000 } printf "%.3f\n", v }'
}

echo
echo "median over $rounds rounds; p99 ratio = median of same-round p99 / reuseport's p99"
printf '%-12s %-10s %10s %10s %10s %10s %12s %12s\n' server load req/s p50_ms p90_ms p99_ms p99_ratio heavy_p50_ms
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
svg_rows=""
for rate in $rates; do
    for v in $variants; do
        rows=$(awk -v v="$v" -v m="open@$rate" '$2==v && $3==m' "$results")
        [ -n "$rows" ] || continue
        # fields: round variant mode rate p50 p90 p99 max failed heavy_n heavy_p50 heavy_max
        r=$(echo "$rows" | awk '{print $4}' | median)
        p50=$(echo "$rows" | awk '{print $5}' | to_ms | median)
        p90=$(echo "$rows" | awk '{print $6}' | to_ms | median)
        p99=$(echo "$rows" | awk '{print $7}' | to_ms | median)
        hp50=$(echo "$rows" | awk '{print $11}' | to_ms | median)
        ratio=$(for round in $(seq "$rounds"); do
            mine=$(awk -v v="$v" -v m="open@$rate" -v r="$round" '$1==r && $2==v && $3==m {print $7}' "$results" | to_ms)
            base=$(awk -v m="open@$rate" -v r="$round" '$1==r && $2=="reuseport" && $3==m {print $7}' "$results" | to_ms)
            [ -n "$mine" ] && [ -n "$base" ] && awk -v a="$mine" -v b="$base" 'BEGIN {if (b > 0) printf "%.3f\n", a / b}'
        done | median)
        printf '%-12s %-10s %10s %10s %10s %10s %12s %12s\n' "$v" "open@$rate" "$r" "$p50" "$p90" "$p99" "$ratio" "$hp50"
        svg_rows+="$rate $v $p99"$'\n'
    done
done
for v in $variants; do
    r=$(awk -v v="$v" '$2==v && $3=="wrk" {print $4}' "$results" | median)
    printf '%-12s %-10s %10s\n' "$v" "wrk" "$r"
done

# One panel per rate: the median p99 of ordinary requests, per server (log scale: the values
# span three orders of magnitude).
echo "$svg_rows" | awk -v rates="$rates" '
    NF == 3 { rate[NR] = $1; name[NR] = $2; p99[NR] = $3; n = NR }
    END {
        w = 900; bar = 20; y = 30
        body = ""
        split(rates, rs, " ")
        for (k = 1; k in rs; k++) {
            body = body sprintf("<text x=\"10\" y=\"%d\" font-size=\"14\" font-weight=\"bold\">p99 of ordinary requests at %s requests/s (1 in 200 blocks its worker 20 ms; log scale)</text>\n", y, rs[k])
            y += 12
            for (i = 1; i <= n; i++) {
                if (rate[i] != rs[k]) continue
                v = p99[i] < 0.1 ? 0.1 : p99[i]
                len = (log(v / 0.1) / log(10)) / 4 * (w - 260)
                body = body sprintf("<text x=\"10\" y=\"%d\" font-size=\"12\">%s</text><rect x=\"120\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/><text x=\"%.1f\" y=\"%d\" font-size=\"12\">%.2f ms</text>\n", y + 15, name[i], y + 2, len, bar - 4, name[i] == "reuseport" ? "#999999" : "#4c72b0", 125 + len, y + 15, p99[i])
                y += bar
            }
            y += 20
        }
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\">\n%s</svg>\n", w, y, body
    }' >benches/placement.svg
echo "wrote benches/placement.svg"
