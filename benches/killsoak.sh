#!/usr/bin/env bash
# The kill -9 soak: wrk with a new connection per request against the `prefork` example while
# one of its worker processes is killed with SIGKILL every few seconds, the two in turn.
#
#   benches/killsoak.sh [--bin PATH] [--duration SECS] [--every SECS] [--threads N] [--conns N]
#                       [--timeout DUR] [--workers N] [--warmup SECS] [--settle SECS]
#                       [--path PATH] [--mode handoff|listeners|steered] [--no-stop] [--label NAME]
#                       [--keep DIR]
#
# Defaults: builds and uses target/release/examples/prefork, 2 workers, `wrk -t2 -c64 -d30s
# --timeout 1s --latency -H 'Connection: close'`, a kill every 2 s (the oldest worker, so the
# slots alternate), a 3 s warm-up and a 3 s settle. `--path '/slow?ms=1'` makes the workers hold
# their connections for a while, so that kills find some read and unanswered. `--bin` runs another build's binary (for a
# before/after comparison) and skips the build. Loopback only; every process it starts is
# stopped on exit, Ctrl-C included.
#
# The accounting (--no-stop: without the stop, the same reading taken from a running worker is
# only approximate). Just before each kill the worker is stopped (SIGSTOP) for about 0.1 s, so what
# it holds is frozen, and the script reads from the kernel which client connections are in its
# descriptor table (`ss -tie` joined with /proc/PID/fd), for each whether the worker read the
# request (bytes received minus bytes still queued) or wrote anything (bytes acked plus Send-Q,
# or our side shut down), and whether the parent still holds its copy (not yet ADOPTED: the
# socket's inode is in the parent's table too). Then SIGKILL. A connection the dead worker held
#   - answered (it wrote, or shut down its side): the client has its answer, not an error;
#   - read but unanswered: an error, which the parent reports as ended{reason="touched"} if it
#     still held it, or the worker's own death closes (adopted);
#   - untouched and still held by the parent: placed again on the other worker, not an error;
#   - untouched but adopted (the parent closed its copy): an error (closed with the request unread).
# So "expected errors" is the second plus the fourth kind summed over the kills, and "expected
# touched" is the parent's share of the first two; wrk's errors (read, write, connect) and the
# parent's baton_handoff_ended_total{reason="touched"} are compared with them. The parent's load
# gauge for the killed slot (sampled just before the stop; the slot is inferred: workers are started
# in slot order and the oldest is killed each time) is printed beside them. wrk counts a
# connection the server closes or resets before the answer as a read error, and a request
# answered after --timeout, or one still waiting at its 2 s timeout check, as a timeout.
#
# Descriptors: /proc/PID/fd of the parent and of every worker after the warm-up, and again once
# the load stopped and the parent reports nothing in flight (plus --settle seconds); server-side
# sockets left on the port after the clients are gone are listed too.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
secs=30
every=2
threads=2
conns=64
timeout=1s
workers=2
warmup=3
settle=3
label=""
keep=""
stop=yes
path=/
mode=handoff
usage() { sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --duration) secs=$2; shift 2 ;;
        --every) every=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --settle) settle=$2; shift 2 ;;
        --label) label=$2; shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        --no-stop) stop=""; shift ;;
        --path) path=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        -h | --help) usage ;;
        *) echo "killsoak.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
for n in "$secs" "$every" "$threads" "$conns" "$workers" "$warmup" "$settle"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "killsoak.sh: '$n' is not a whole number" >&2; exit 2; }
done
[ "$every" -ge 1 ] && [ "$workers" -ge 1 ] || { echo "killsoak.sh: --every and --workers must be at least 1" >&2; exit 2; }

# shellcheck source=benches/lib.sh
. benches/lib.sh
need wrk
need curl
command -v ss >/dev/null || need iproute2

if [ -z "$bin" ]; then
    cargo build --release --example prefork -p baton-examples >&2
    bin=target/release/examples/prefork
fi
[ -x "$bin" ] || { echo "killsoak.sh: no executable at $bin" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
[ -n "$label" ] || label=$bin

if [ -n "$keep" ]; then
    mkdir -p "$keep"
    dir=$(cd "$keep" && pwd)
else
    dir=$(mktemp -d)
fi
server_pid=""
wrk_pid=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null && wait "$wrk_pid" 2>/dev/null
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        local w
        for w in $(pgrep -P "$server_pid"); do kill -CONT "$w" 2>/dev/null || true; done
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 80); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    # The server runs in its own process group (setsid): whatever is left of it, workers included.
    [ -n "$server_pid" ] && kill -KILL -- "-$server_pid" 2>/dev/null
    [ -n "$server_pid" ] && wait "$server_pid" 2>/dev/null
    [ -z "$keep" ] && rm -rf "$dir"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "killsoak.sh: a command failed at line $LINENO" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "killsoak.sh: $*" >&2
    exit 1
}

# Its own session and process group, so that clean-up reaches the workers as well.
setsid "$bin" --listen 127.0.0.1:0 --workers "$workers" --mode "$mode" --metrics 127.0.0.1:0 >"$dir/out" 2>"$dir/err" </dev/null &
server_pid=$!
addr=""
maddr=""
for _ in $(seq 300); do
    addr=$(sed -n 's|^listening on http://||p' "$dir/out")
    maddr=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$dir/err")
    [ -n "$addr" ] && [ -n "$maddr" ] && break
    kill -0 "$server_pid" 2>/dev/null || fail "prefork exited: $(tail -3 "$dir/err")"
    sleep 0.1
done
[ -n "$addr" ] && [ -n "$maddr" ] || fail "prefork did not print its addresses: $(tail -3 "$dir/err")"
port=${addr##*:}
url="http://$addr$path"

metrics() { curl -s --max-time 3 "http://$maddr/metrics"; }
# value FILE SERIES: the sample of SERIES (name and labels, as printed) in FILE, or 0.
value() { awk -v s="$2" '$1 == s { v = $2 } END { print v == "" ? 0 : v }' "$1"; }
# (A running process's descriptors come and go while find lists them: not a failure.)
fds() { { find "/proc/$1/fd" -mindepth 1 2>/dev/null || true; } | wc -l; }
# fdkinds PID: its descriptors by kind (socket, pipe, anon_inode:[eventpoll], file...).
fdkinds() {
    { find "/proc/$1/fd" -mindepth 1 -printf '%l\n' 2>/dev/null || true; } | sed 's/:\[[0-9]*\]$//; s|^/.*|file|' | sort | uniq -c |
        awk '{ printf "%s%s=%s", sep, $2, $1; sep = " " }'
}
inodes() { { find "/proc/$1/fd" -mindepth 1 -printf '%l\n' 2>/dev/null || true; } | sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p'; }
workers_of() { pgrep -P "$server_pid" || true; }
# in_flight: the parent's baton_handoff_in_flight.
in_flight() { metrics >"$dir/m.now" && value "$dir/m.now" baton_handoff_in_flight; }

# The workers answer?
for _ in $(seq 100); do
    curl -s --max-time 1 -o /dev/null "$url" && break
    sleep 0.1
done

wrk_args=(-t"$threads" -c"$conns" --timeout "$timeout" --latency -H "Connection: close")
echo "warm-up: wrk ${wrk_args[*]} -d${warmup}s $url" >&2
[ "$warmup" -gt 0 ] && wrk "${wrk_args[@]}" -d"${warmup}s" "$url" >"$dir/warmup" 2>&1
sleep 1
base_parent=$(fds "$server_pid")
base_parent_kinds=$(fdkinds "$server_pid")
inodes "$server_pid" | sort -u >"$dir/p.base.ino"
base_workers=""
for w in $(workers_of); do base_workers="$base_workers $w:$(fds "$w")"; done
metrics >"$dir/m.before"

echo "load: wrk ${wrk_args[*]} -d${secs}s $url, kill -9 of a worker every ${every}s" >&2
wrk "${wrk_args[@]}" -d"${secs}s" "$url" >"$dir/wrk" 2>&1 &
wrk_pid=$!
start=$(date +%s.%N)
kills=0
slot=0
: >"$dir/kills"
# At every, 2*every, ... while wrk still runs (a kill in its last half second would count only
# its own clients' errors, not the recovery).
while :; do
    target=$(awk -v s="$start" -v k="$((kills + 1))" -v e="$every" 'BEGIN { printf "%.3f", s + k * e }')
    stop_at=$(awk -v s="$start" -v d="$secs" 'BEGIN { printf "%.3f", s + d - 0.5 }')
    awk -v t="$target" -v z="$stop_at" 'BEGIN { exit !(t < z) }' || break
    now=$(date +%s.%N)
    delay=$(awk -v t="$target" -v n="$now" 'BEGIN { d = t - n; printf "%.3f", (d > 0 ? d : 0) }')
    sleep "$delay"
    kill -0 "$wrk_pid" 2>/dev/null || break
    victim=$(pgrep -o -P "$server_pid" || true)
    [ -n "$victim" ] || { echo "kill $((kills + 1)): no worker to kill" >&2; slot=$(((slot + 1) % workers)); kills=$((kills + 1)); continue; }
    kills=$((kills + 1))
    k=$kills
    metrics >"$dir/m.pre$k" || true
    if [ -n "$stop" ]; then
        kill -STOP "$victim"
        # Whatever ADOPTED records it sent before the stop reach the parent.
        sleep 0.05
        metrics >"$dir/m.kill$k" || true
    fi
    inodes "$victim" | sort -u >"$dir/w.ino"
    inodes "$server_pid" | sort -u >"$dir/p.ino"
    for o in $(workers_of); do [ "$o" = "$victim" ] || inodes "$o"; done | sort -u >"$dir/o.ino"
    ss -tnieH state all exclude time-wait "( sport = :$port )" >"$dir/ss.kill$k" || true
    # Every socket the kernel still lists (TCP in any state but closed, Unix).
    { awk 'NR > 1 { print $10 }' /proc/net/tcp /proc/net/tcp6; awk 'NR > 1 { print $7 }' /proc/net/unix; } | sort -u >"$dir/known.ino"
    [ -n "$stop" ] || metrics >"$dir/m.kill$k" || true
    kill -KILL "$victim"
    t=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
    load=$(value "$dir/m.pre$k" "baton_handoff_worker_load{worker=\"$slot\"}")
    # One line per server-side socket: state recvq sendq inode received acked.
    awk '
        /^[A-Z]/ {
            if (st != "") print st, rq, sq, ino, rcv, ack
            st = $1; rq = $2; sq = $3; ino = ""; rcv = 0; ack = 0
            for (i = 1; i <= NF; i++) if ($i ~ /^ino:/) ino = substr($i, 5)
            next
        }
        {
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^bytes_received:/) rcv = substr($i, 16)
                if ($i ~ /^bytes_acked:/) ack = substr($i, 13)
            }
        }
        END { if (st != "") print st, rq, sq, ino, rcv, ack }
    ' "$dir/ss.kill$k" >"$dir/socks.kill$k"
    # held parent answered read_unanswered untouched_in_parent untouched_adopted expected_err expected_touched
    counts=$(awk -v wf="$dir/w.ino" -v pf="$dir/p.ino" '
        BEGIN {
            while ((getline l < wf) > 0) w[l] = 1
            while ((getline l < pf) > 0) p[l] = 1
        }
        $1 == "LISTEN" || !($4 in w) { next }
        {
            held++
            inp = ($4 in p)
            parent += inp
            open = ($1 == "ESTAB" || $1 == "CLOSE-WAIT")
            consumed = $5 - $2 - ($1 == "CLOSE-WAIT" ? 1 : 0)
            written = $6 + $3
            if (written > 0 || !open) { answered++; if (inp) touched++ }
            else if (consumed > 0) { readun++; err++; if (inp) touched++ }
            else if (inp) untouched_p++
            else { untouched_a++; err++ }
        }
        END { printf "%d %d %d %d %d %d %d %d", held, parent, answered, readun, untouched_p, untouched_a, err, touched }
    ' "$dir/socks.kill$k")
    # Client sockets the parent holds meanwhile (waiting, queued, or sent and not yet ADOPTED),
    # and of those, the ones no live worker holds that were touched all the same: served and
    # closed by the victim before its ADOPTED reached the parent (PROTOCOL.md 9.4), which the
    # parent ends as touched too with no error for their client (it has its answer), or served
    # and closed by another worker whose ADOPTED the parent has not read yet: an upper bound.
    # A socket closed at both ends is no longer listed by the kernel: a new socket in the
    # parent's table that /proc/net does not list is one of them.
    read -r pheld served < <(awk -v pf="$dir/p.ino" -v wf="$dir/w.ino" -v of="$dir/o.ino" -v bf="$dir/p.base.ino" -v kf="$dir/known.ino" '
        BEGIN {
            while ((getline l < pf) > 0) p[l] = 1
            while ((getline l < wf) > 0) w[l] = 1
            while ((getline l < of) > 0) o[l] = 1
            while ((getline l < bf) > 0) b[l] = 1
            while ((getline l < kf) > 0) known[l] = 1
            for (i in p) if (!(i in b) && !(i in known) && !(i in w) && !(i in o)) { n++; served++ }
        }
        $1 == "LISTEN" || !($4 in p) { next }
        {
            n++
            if (($4 in w) || ($4 in o)) next
            open = ($1 == "ESTAB" || $1 == "CLOSE-WAIT")
            if ($6 + $3 > 0 || !open || $5 - $2 - ($1 == "CLOSE-WAIT" ? 1 : 0) > 0) served++
        }
        END { print n + 0, served + 0 }
    ' "$dir/socks.kill$k")
    echo "$k $t $victim $slot $load $counts $pheld $served" >>"$dir/kills"
    for f in w p o known; do mv "$dir/$f.ino" "$dir/$f.ino.kill$k"; done
    slot=$(((slot + 1) % workers))
done
wait "$wrk_pid" || true
wrk_pid=""
end_wrk=$(date +%s.%N)

# Server-side sockets on the port right after the clients are gone, then once settled.
sleep 1
ss -tnH state all "( sport = :$port )" | awk '$1 != "LISTEN" && $1 != "TIME-WAIT"' >"$dir/left.1s" || true
settled=""
for _ in $(seq 100); do
    f=$(in_flight || echo x)
    [ "$f" = 0 ] && [ "$(workers_of | wc -l)" -eq "$workers" ] && { settled=yes; break; }
    sleep 0.1
done
sleep "$settle"
end_parent=$(fds "$server_pid")
end_parent_kinds=$(fdkinds "$server_pid")
end_workers=""
for w in $(workers_of); do end_workers="$end_workers $w:$(fds "$w")"; done
ss -tnH state all "( sport = :$port )" | awk '$1 != "LISTEN" && $1 != "TIME-WAIT"' >"$dir/left.end" || true
metrics >"$dir/m.after"
settle_s=$(awk -v s="$end_wrk" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')

# wrk's figures.
requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$dir/wrk")
read -r e_connect e_read e_write e_timeout < <(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$dir/wrk" | awk 'END { print ($1 == "" ? "0 0 0 0" : $0) }')
non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$dir/wrk")
non2xx=${non2xx:-0}
maxlat=$(awk '$1 == "Latency" && NF >= 5 { print $4; exit }' "$dir/wrk")
p99=$(awk '$1 == "99%" { print $2; exit }' "$dir/wrk")
[ -n "$requests" ] || fail "wrk gave no request count: $(tail -5 "$dir/wrk")"
errors=$((e_connect + e_read + e_write))

delta() { awk -v a="$(value "$dir/m.before" "$1")" -v b="$(value "$dir/m.after" "$1")" 'BEGIN { printf "%d", b - a }'; }
d_touched=$(delta 'baton_handoff_ended_total{reason="touched"}')
# The parent's touched endings kill by kill: from the stop of kill k to just before kill k+1.
for k in $(seq "$kills"); do
    next="$dir/m.pre$((k + 1))"
    [ -f "$next" ] || next="$dir/m.after"
    a=$(value "$dir/m.kill$k" 'baton_handoff_ended_total{reason="touched"}')
    [ -f "$dir/m.kill$k" ] && [ -f "$next" ] && b=$(value "$next" 'baton_handoff_ended_total{reason="touched"}') || b=$a
    echo "$k $((b - a))"
done >"$dir/ended"
join <(sort -k1,1 "$dir/kills") <(sort -k1,1 "$dir/ended") | sort -n >"$dir/kills.full"
d_cutoff=$(delta 'baton_handoff_ended_total{reason="cut_off"}')
d_tries=$(delta 'baton_handoff_ended_total{reason="too_many_tries"}')
d_replaced=$(delta baton_handoff_replaced_total)
d_adopted=$(delta baton_handoff_adopted_total)
d_dispatched=$(delta baton_handoff_dispatched_total)
d_rejected=$(delta baton_handoff_rejected_total)
d_down=$(delta baton_handoff_worker_down_total)
d_restarts=$(delta baton_handoff_worker_restarts_total)
d_gaveup=$(delta baton_handoff_worker_gave_up_total)
in_flight_end=$(value "$dir/m.after" baton_handoff_in_flight)
read -r s_held s_parent s_answered s_readun s_untp s_unta s_err s_touched s_pheld s_served s_load < <(awk '
    { for (i = 6; i <= 15; i++) s[i] += $i; load += $5 }
    END { printf "%d %d %d %d %d %d %d %d %d %d %g\n", s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15], load }
' "$dir/kills")

echo
echo "== kill -9 soak: $label"
echo "wrk ${wrk_args[*]} -d${secs}s, kill -9 every ${every}s, $workers workers; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "kill  t(s)  pid      slot  load  held  in-parent  answered  read-unanswered  untouched-in-parent  untouched-adopted  expected-errors  expected-touched  parent-holds  served-unreported(<=)  ended-touched"
awk '{ printf "%4d %5s  %-7s  %4s  %4s  %4d  %9d  %8d  %15d  %19d  %17d  %15d  %16d  %12d  %21d  %13d\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 }' "$dir/kills.full"
printf "%-4s %5s  %-7s  %4s  %4g  %4d  %9d  %8d  %15d  %19d  %17d  %15d  %16d  %12d  %21d  %13d\n" sum "" "" "" "$s_load" "$s_held" "$s_parent" "$s_answered" "$s_readun" "$s_untp" "$s_unta" "$s_err" "$s_touched" "$s_pheld" "$s_served" "$d_touched"
echo
echo "wrk: $requests requests; errors: connect $e_connect, read $e_read, write $e_write, timeout $e_timeout; non-2xx $non2xx; latency max $maxlat, p99 $p99"
echo "parent (metrics, after - before): ended touched $d_touched, cut_off $d_cutoff, too_many_tries $d_tries; replaced $d_replaced; adopted $d_adopted; dispatched $d_dispatched; rejected $d_rejected; worker_down $d_down; restarts $d_restarts; gave_up $d_gaveup; in_flight at the end $in_flight_end"
echo "descriptors: parent $base_parent after warm-up -> $end_parent at the end (settled: ${settled:-no}, ${settle_s}s after the load)"
echo "  parent by kind: $base_parent_kinds -> $end_parent_kinds"
echo "  workers (pid:fds) after warm-up:$base_workers; at the end:$end_workers"
echo "server-side sockets left on :$port 1 s after the load: $(wc -l <"$dir/left.1s"), at the end: $(wc -l <"$dir/left.end")"
sed 's/^/  left: /' "$dir/left.end"
echo
verdict=ok
check() { if eval "$2"; then echo "PASS  $1"; else echo "FAIL  $1"; verdict=fail; fi; }
check "no timeouts (wrk timeout $e_timeout)" '[ "$e_timeout" -eq 0 ]'
check "every error is a connection a killed worker had taken (wrk errors $errors <= expected $s_err)" '[ "$errors" -le "$s_err" ]'
check "non-2xx answers: $non2xx" '[ "$non2xx" -eq 0 ]'
exp_ended=$((s_touched + s_served))
check "the parent ended as touched what the kills left it holding ($s_touched <= ended touched $d_touched <= $s_touched + served-unreported $s_served)" '[ "$d_touched" -ge "$s_touched" ] && [ "$d_touched" -le "$exp_ended" ]'
check "parent descriptors back to baseline ($base_parent -> $end_parent)" '[ "$end_parent" -le "$base_parent" ]'
check "no server-side socket left open on the port" '[ ! -s "$dir/left.end" ]'
check "nothing in flight at the end ($in_flight_end)" '[ "$in_flight_end" = 0 ]'
echo "RESULT label=$label requests=$requests connect=$e_connect read=$e_read write=$e_write timeout=$e_timeout non2xx=$non2xx maxlat=$maxlat kills=$kills held=$s_held expected_errors=$s_err expected_touched=$s_touched load_sum=$s_load parent_holds=$s_pheld served_unreported=$s_served ended_touched=$d_touched replaced=$d_replaced adopted=$d_adopted down=$d_down restarts=$d_restarts gave_up=$d_gaveup parent_fds=$base_parent/$end_parent workers_fds=${base_workers# }/${end_workers# } left=$(wc -l <"$dir/left.end") verdict=$verdict"
[ -n "$keep" ] && echo "files in $dir"
[ "$verdict" = ok ] || exit 1
