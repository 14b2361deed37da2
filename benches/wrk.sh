#!/usr/bin/env bash
# The end-to-end comparison driven by wrk instead of our own load client.
#
#   benches/wrk.sh [SECONDS]
#
# Builds the e2e bench binary, then for each server of `benches/benches/e2e.rs` — (b) SO_REUSEPORT
# prefork, (a) baton prefork (least-loaded), (a') baton with the listener shared with the workers,
# (c) baton single process, and (b+) SO_REUSEPORT sending its last answer and FIN in one segment
# (new connection per request only) — starts it on a free
# loopback port (E2E_SERVE), runs wrk for a new connection per request (32 connections,
# `Connection: close`) and for keep-alive (64 connections), prints requests/s and the ratio to
# SO_REUSEPORT, and stops it. Installs wrk from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"

if ! command -v wrk >/dev/null; then
    echo "wrk not found; installing it (apt-get)" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get install -y wrk >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y wrk >/dev/null; }
fi

cargo bench -p baton-benches --bench e2e --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/e2e-* | grep -v '\.d$' | head -1)

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

run() { # KIND -> "close keepalive" requests/s
    local kind=$1 fifo="$dir/in-$1" out="$dir/out-$1"
    mkfifo "$fifo"
    E2E_SERVE=$kind "$bin" <"$fifo" >"$out" 2>/dev/null &
    local pid=$!
    exec 7>"$fifo"
    for _ in $(seq 100); do grep -q listening "$out" 2>/dev/null && break; sleep 0.1; done
    local addr
    addr=$(sed -n 's|listening on http://||p' "$out")
    local close keep
    close=$(wrk -t1 -c32 -d"${secs}s" -H "Connection: close" "http://$addr/" | sed -n 's/Requests\/sec: *//p')
    keep=$(wrk -t1 -c64 -d"${secs}s" "http://$addr/" | sed -n 's/Requests\/sec: *//p')
    exec 7>&- # end of stdin: the server stops
    wait "$pid" || true
    echo "$close $keep"
}

read -r rp_close rp_keep < <(run reuseport)
read -r bt_close bt_keep < <(run baton)
read -r sl_close sl_keep < <(run listeners)
read -r sg_close sg_keep < <(run single)
read -r rf_close _ < <(run reuseport-fin)

printf '%-32s %14s %14s\n' "wrk, ${secs}s per run" "close req/s" "keep-alive req/s"
printf '%-32s %14.0f %14.0f\n' "(b) SO_REUSEPORT prefork" "$rp_close" "$rp_keep"
printf '%-32s %14.0f %14.0f\n' "(a) baton prefork" "$bt_close" "$bt_keep"
printf '%-32s %14.0f %14.0f\n' "(a') baton, shared listener" "$sl_close" "$sl_keep"
printf '%-32s %14.0f %14.0f\n' "(c) baton single process" "$sg_close" "$sg_keep"
printf '%-32s %14.0f %14s\n' "(b+) SO_REUSEPORT, FIN w/ answer" "$rf_close" "-"
awk -v a="$bt_close" -v b="$rp_close" -v s="$sl_close" -v c="$sg_close" -v f="$rf_close" \
    -v ak="$bt_keep" -v bk="$rp_keep" -v sk="$sl_keep" -v ck="$sg_keep" 'BEGIN {
    printf "ratios: close a/b %.3f a'"'"'/b %.3f c/b %.3f (a/b+ %.3f); keep-alive a/b %.3f a'"'"'/b %.3f c/b %.3f\n",
        a/b, s/b, c/b, a/f, ak/bk, sk/bk, ck/bk }'
