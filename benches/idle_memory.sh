#!/usr/bin/env bash
# Memory per idle keep-alive HTTP connection in the real server, and whether it is given back.
#
#   benches/idle_memory.sh [CONNECTIONS] [ROUNDS]     # defaults: 20000 3
#
# For each server in turn, ROUNDS times: start it (2 workers), read its processes' resident
# memory (VmRSS of the parent and its workers, /proc), open CONNECTIONS keep-alive connections
# that each send one request and read the answer, then stay open and idle; read the memory
# again; close them all, wait 2 s, read it a third time. Servers:
#   reuseport - the e2e bench's SO_REUSEPORT processes (a hand-written epoll loop keeping a
#               descriptor and an empty buffer per connection): the baseline.
#   prefork   - the `prefork` example (handoff mode: a connection actor per connection on the
#               reactor's loop, in the workers).
#   steered   - `prefork --mode steered`.
# Prints, per server, the median over rounds of (held - before) / CONNECTIONS, and of
# (after - before): what was not given back.
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-20000}"
rounds="${2:-3}"

# shellcheck source=benches/lib.sh
. benches/lib.sh
need python3
need curl
e2e_binary
prefork_binary
# As many descriptors as allowed (the client splits its connections over processes of 10 000).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

dir=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    exec 7>&- 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# The client: opens the connections (10 000 per process), says "held" when all are open and
# answered, waits for a line on stdin, closes them, says "closed".
cat >"$dir/client.py" <<'EOF'
import os, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
per = 10000  # connections per process, under a descriptor limit of 20 000

def hold(count):
    held = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        head, body = got.split(b"\r\n\r\n", 1)
        length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        while len(body) < length:
            body += s.recv(4096)
        held.append(s)
    return held

children = []
for start in range(0, n, per):
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        held = hold(min(per, n - start))
        os.write(up_w, b"h")
        os.read(down_r, 1)
        for s in held:
            s.close()
        os._exit(0)
    children.append((pid, up_r, down_w))
for _, up_r, _ in children:
    assert os.read(up_r, 1) == b"h"
print("held", flush=True)
sys.stdin.readline()
for _, _, down_w in children:
    os.write(down_w, b"c")
for pid, _, _ in children:
    os.waitpid(pid, 0)
print("closed", flush=True)
EOF

# rss PIDS...: the sum of their VmRSS, in KiB.
rss() {
    local p
    for p in "$@"; do awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'
}

results="$dir/results"
for round in $(seq "$rounds"); do
    for v in reuseport prefork steered; do
        case $v in
            reuseport)
                start_server "$bin" "$dir" reuseport
                addr=$server_addr
                pid=$server_pid
                ;;
            *)
                args=""
                [ "$v" = steered ] && args="--mode steered"
                # shellcheck disable=SC2086 # the flags are words
                start_prefork "$dir" $args
                pid=$prefork_pid
                addr=$prefork_addr
                ;;
        esac
        procs="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
        sleep 0.5
        # shellcheck disable=SC2086 # a list of pids
        before=$(rss $procs)
        coproc CLIENT { python3 "$dir/client.py" "$addr" "$conns"; }
        read -r line <&"${CLIENT[0]}"
        [ "$line" = held ] || { echo "idle_memory.sh: the client said $line" >&2; exit 1; }
        sleep 1
        # shellcheck disable=SC2086
        held=$(rss $procs)
        echo go >&"${CLIENT[1]}"
        read -r line <&"${CLIENT[0]}"
        wait "$CLIENT_PID" || true
        sleep 2
        # shellcheck disable=SC2086
        after=$(rss $procs)
        if [ "$v" = reuseport ]; then stop_server; else kill -TERM "$pid"; wait "$pid" || true; fi
        pid=""
        per=$(awk -v a="$before" -v b="$held" -v n="$conns" 'BEGIN {printf "%.0f", (b - a) * 1024 / n}')
        kept=$(awk -v a="$before" -v c="$after" 'BEGIN {printf "%.1f", (c - a) / 1024}')
        echo "$round $v before ${before} KiB, held ${held} KiB, after ${after} KiB: $per B per connection, $kept MiB kept"
        echo "$v $per $kept" >>"$results"
    done
done

echo
echo "median over $rounds rounds, $conns idle keep-alive connections"
printf '%-10s %22s %16s\n' server "bytes per connection" "MiB not given back"
for v in reuseport prefork steered; do
    per=$(awk -v v="$v" '$1==v {print $2}' "$results" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    kept=$(awk -v v="$v" '$1==v {print $3}' "$results" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    printf '%-10s %22s %16s\n' "$v" "$per" "$kept"
done
