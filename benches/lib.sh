# Shared by the bench scripts, which source it: their tools, the e2e binary, and one e2e
# server at a time (`E2E_SERVE`) with its stdin on descriptor 7.

# need TOOL: installs TOOL from Debian's packages when it is missing.
need() {
    command -v "$1" >/dev/null && return
    echo "$1 not found; installing it (apt-get)" >&2
    local sudo=sudo
    [ "$(id -u)" -eq 0 ] && sudo=""
    $sudo apt-get install -y "$1" >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "$1" >/dev/null; }
}

# e2e_binary: builds the e2e bench and sets bin to its executable (as cargo names it), or says
# why and exits.
e2e_binary() {
    bin=$(cargo bench -p baton-benches --bench e2e --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
    [ -n "$bin" ] || { echo "$(basename "$0"): the e2e bench did not build (cargo bench -p baton-benches --bench e2e --no-run)" >&2; exit 1; }
}

# start_server BIN DIR KIND [WRAPPER...]: starts `E2E_SERVE=KIND BIN` (under WRAPPER, such as
# valgrind), its output in DIR, and waits for its "listening" line: sets server_pid and
# server_addr, or says why and exits. Closing descriptor 7 (stop_server) stops it.
start_server() {
    local bin=$1 dir=$2 kind=$3
    shift 3
    rm -f "$dir/in" "$dir/out"
    mkfifo "$dir/in"
    E2E_SERVE=$kind "$@" "$bin" <"$dir/in" >"$dir/out" 2>"$dir/err" &
    server_pid=$!
    exec 7>"$dir/in"
    server_addr=""
    for _ in $(seq 600); do
        server_addr=$(sed -n 's|listening on http://||p' "$dir/out" 2>/dev/null)
        [ -n "$server_addr" ] && return
        sleep 0.1
    done
    exec 7>&-
    echo "$(basename "$0"): server $kind did not start: $(tail -3 "$dir/err")" >&2
    exit 1
}

# stop_server: ends the server's stdin, which stops it, and waits for it.
stop_server() {
    exec 7>&-
    wait "$server_pid" || true
}

# prefork_binary: builds the prefork example (release) and sets prefork to its path, or says
# why and exits.
prefork_binary() {
    cargo build --release -p baton-examples --example prefork >/dev/null 2>&1 || {
        echo "$(basename "$0"): prefork did not build (cargo build --release -p baton-examples --example prefork)" >&2
        exit 1
    }
    prefork=target/release/examples/prefork
}

# start_prefork DIR FLAGS...: starts `$prefork --listen 127.0.0.1:0 --workers 2 FLAGS...`, its
# output in DIR, and waits until it answers: sets prefork_pid and prefork_addr, or says why and
# exits. (Stop it with SIGTERM.)
start_prefork() {
    local dir=$1
    shift
    "$prefork" --listen 127.0.0.1:0 --workers 2 "$@" >"$dir/out" 2>"$dir/err" &
    prefork_pid=$!
    prefork_addr=""
    for _ in $(seq 100); do
        prefork_addr=$(sed -n 's|listening on http://||p' "$dir/out")
        [ -n "$prefork_addr" ] && curl -s -o /dev/null "http://$prefork_addr/" && return
        sleep 0.1
    done
    echo "$(basename "$0"): prefork $* did not start: $(tail -3 "$dir/err")" >&2
    exit 1
}
