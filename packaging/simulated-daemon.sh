# Sourced by check-deb.sh and symbol-order.sh: a work folder, a binary's own simulator with two
# apps (alpha, beta), a configuration for a daemon on them with two sockets each and a script
# handler that echoes the text, and the cleanup. Set `name` (for messages and the folder) first.
work=$(mktemp -d "${TMPDIR:-/tmp}/dingstream-$name.XXXXXX")
sim_pid=""
daemon_pid=""
cleanup() {
    local rc=$?
    for pid in $daemon_pid $sim_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    if ((rc != 0)); then
        for log in daemon simulator; do
            [[ -s $work/$log.log ]] && { echo "# $log log (last 30 lines):"; tail -n 30 "$work/$log.log" | sed 's/^/#   /'; }
        done
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
die() { echo "$name: $*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.2 s; fails after SECONDS.
wait_for() {
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "no $what within $limit s"
        sleep 0.2
    done
}

# start_simulator BINARY: runs BINARY's simulator on a free port; sets `sim` to its base URL.
start_simulator() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sim="http://127.0.0.1:$port"
    "$1" simulator --port "$port" --app alpha:dingalpha:alpha-secret --app beta:dingbeta:beta-secret \
        > "$work/simulator.log" 2>&1 < /dev/null &
    sim_pid=$!
    wait_for 20 "simulator on $sim" curl -sf "$sim/_sim/stats"
}

# write_config READY_TIMEOUT SHUTDOWN_GRACE: $work/dingstream.toml and the spool's echo handler,
# which answers "echo from the package: <text>".
write_config() {
    mkdir -p "$work/spool/handlers"
    printf '#!/bin/sh\nprintf "echo from the package: %%s\\n" "$DINGSTREAM_TEXT"\n' > "$work/spool/handlers/10-echo"
    chmod 0755 "$work/spool/handlers/10-echo"
    {
        printf 'spool_dir = "%s/spool"\nruntime_dir = "%s/run"\nready_timeout = "%s"\nshutdown_grace = "%s"\n' "$work" "$work" "$1" "$2"
        for app in alpha beta; do
            printf '\n[[app]]\nname = "%s"\nclient_id = "ding%s"\nclient_secret = "%s-secret"\nconnections = 2\n' "$app" "$app" "$app"
            printf 'allowed_users = ["*"]\napi_base = "%s"\n' "$sim"
        done
    } > "$work/dingstream.toml"
}

live_sockets() {
    curl -sf "$sim/_sim/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["apps"][sys.argv[1]]["liveSockets"])' "$1"
}
four_sockets() { (($(live_sockets alpha) == 2 && $(live_sockets beta) == 2)); }

# send_message APP TEXT: a bot message from the simulator.
send_message() {
    curl -sf -X POST -H 'Content-Type: application/json' -d "{\"app\":\"$1\",\"text\":\"$2\"}" \
        "$sim/_sim/messages" >/dev/null || die "the simulator refused the message"
}
