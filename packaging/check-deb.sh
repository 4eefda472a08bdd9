#!/usr/bin/env bash
# Checks a built Debian package end to end with the binary it ships (stripped, static runtime,
# ICU data cut to the items the daemon reads): unpacks it, runs its simulator with two apps and
# its daemon on them (two sockets each), and checks that the sockets come up, a message is stored,
# the handler runs and its reply is delivered, the spool shows the entry done, and the daemon
# stops cleanly. Prints the daemon's idle memory with its four sockets up (from /proc).
#
# usage: packaging/check-deb.sh path/to/dingstream_<version>_<arch>.deb
# Needs no root: nothing is installed.
set -euo pipefail

deb=$(realpath "${1:?usage: $0 path/to/dingstream_<version>_<arch>.deb}")
for tool in dpkg-deb curl python3; do
    command -v "$tool" >/dev/null || { echo "check-deb: $tool not found (make deps installs it)" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/dingstream-check-deb.XXXXXX")
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
die() { echo "check-deb: $*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.2 s; fails after SECONDS.
wait_for() {
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "no $what within $limit s"
        sleep 0.2
    done
}

dpkg-deb -x "$deb" "$work/root"
bin=$work/root/usr/bin/dingstream
[[ -x $bin ]] || die "$deb has no usr/bin/dingstream"
version=$("$bin" version) || die "dingstream version failed"
[[ $version == *"binary of "*" UTC)" ]] || die "dingstream version lacks the binary's date: $version"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sim="http://127.0.0.1:$port"
"$bin" simulator --port "$port" --app alpha:dingalpha:alpha-secret --app beta:dingbeta:beta-secret \
    > "$work/simulator.log" 2>&1 < /dev/null &
sim_pid=$!
wait_for 20 "simulator on $sim" curl -sf "$sim/_sim/stats"

mkdir -p "$work/spool/handlers"
cat > "$work/spool/handlers/10-echo" <<'EOF'
#!/bin/sh
printf 'echo from the package: %s\n' "$DINGSTREAM_TEXT"
EOF
chmod 0755 "$work/spool/handlers/10-echo"
{
    printf 'spool_dir = "%s/spool"\nruntime_dir = "%s/run"\nready_timeout = "20s"\nshutdown_grace = "5s"\n' "$work" "$work"
    for app in alpha beta; do
        printf '\n[[app]]\nname = "%s"\nclient_id = "ding%s"\nclient_secret = "%s-secret"\nconnections = 2\n' "$app" "$app" "$app"
        printf 'allowed_users = ["*"]\napi_base = "%s"\n' "$sim"
    done
} > "$work/dingstream.toml"
env -i PATH=/usr/bin:/bin HOME="$work" LANG=C.UTF-8 "$bin" run --config "$work/dingstream.toml" \
    > "$work/daemon.log" 2>&1 < /dev/null &
daemon_pid=$!

live_sockets() {
    curl -sf "$sim/_sim/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["apps"][sys.argv[1]]["liveSockets"])' "$1"
}
four_sockets() { (($(live_sockets alpha) == 2 && $(live_sockets beta) == 2)); }
wait_for 30 "2 live sockets for each of alpha and beta" four_sockets
echo "ok - packaged binary: 2 apps x 2 sockets up against the simulator"

awk '$1 == "VmRSS:" {rss = $2} $1 == "RssAnon:" {anon = $2} $1 == "RssFile:" {file = $2}
     END {printf "idle with 4 sockets up: RSS %.1f MiB (anonymous %.1f, file-backed %.1f)\n", rss / 1024, anon / 1024, file / 1024}' \
    "/proc/$daemon_pid/status"

curl -sf -X POST -H 'Content-Type: application/json' -d '{"app":"beta","text":"hello from check-deb"}' \
    "$sim/_sim/messages" >/dev/null || die "the simulator refused the message"
replied() { curl -sf "$sim/_sim/replies" | grep -q 'echo from the package: hello from check-deb'; }
wait_for 30 "reply 'echo from the package: hello from check-deb'" replied
echo "ok - message stored, handler ran, reply delivered"

spool_done() { "$bin" spool ls --config "$work/dingstream.toml" --json | grep -q '"done"'; }
wait_for 10 "entry in state done in 'dingstream spool ls'" spool_done
echo "ok - the spool lists the entry as done"

kill -TERM "$daemon_pid"
rc=0; wait "$daemon_pid" || rc=$?
daemon_pid=""
((rc == 0)) || die "the daemon exited $rc on SIGTERM"
echo "ok - the daemon stopped cleanly"
