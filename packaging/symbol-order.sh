#!/usr/bin/env bash
# Writes the symbol order file that `make release` links with (packaging/symbol-order.txt): the
# functions the daemon runs while it starts, brings 2 apps x 2 sockets up, handles messages with
# a script handler, delivers the replies and idles, found by running a release build under
# valgrind's callgrind against its own simulator. lld lays those functions out first, next to
# each other, so that the code pages the daemon touches (and the 64 KiB the kernel maps around
# each of them) are few: README, "Install it".
#
# usage: packaging/symbol-order.sh path/to/dingstream [out-file]
# Needs valgrind (apt-get install valgrind), curl and python3. Run it after changes that rename
# or add much of what runs at start; a stale file only makes the layout less compact.
set -euo pipefail

bin=$(realpath "${1:?usage: $0 path/to/dingstream [out-file]}")
out=${2:-$(dirname "$0")/symbol-order.txt}
for tool in valgrind curl python3 nm strip; do
    command -v "$tool" >/dev/null || { echo "symbol-order: $tool not found (apt-get install valgrind binutils curl python3)" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/dingstream-symbol-order.XXXXXX")
sim_pid=""
daemon_pid=""
cleanup() {
    for pid in $daemon_pid $sim_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "symbol-order: $*" >&2; exit 1; }
wait_for() {
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "no $what within $limit s"
        sleep 0.5
    done
}

# valgrind cannot read the debug information of Swift's static binaries; the symbols suffice.
strip --strip-debug -o "$work/dingstream" "$bin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sim="http://127.0.0.1:$port"
"$bin" simulator --port "$port" --app alpha:dingalpha:alpha-secret --app beta:dingbeta:beta-secret \
    > "$work/simulator.log" 2>&1 < /dev/null &
sim_pid=$!
wait_for 20 "simulator on $sim" curl -sf "$sim/_sim/stats"

mkdir -p "$work/spool/handlers"
printf '#!/bin/sh\nprintf "echo: %%s\\n" "$DINGSTREAM_TEXT"\n' > "$work/spool/handlers/10-echo"
chmod 0755 "$work/spool/handlers/10-echo"
{
    # Everything runs some 50 times slower under callgrind.
    printf 'spool_dir = "%s/spool"\nruntime_dir = "%s/run"\nready_timeout = "300s"\nshutdown_grace = "30s"\n' "$work" "$work"
    for app in alpha beta; do
        printf '\n[[app]]\nname = "%s"\nclient_id = "ding%s"\nclient_secret = "%s-secret"\nconnections = 2\n' "$app" "$app" "$app"
        printf 'allowed_users = ["*"]\napi_base = "%s"\n' "$sim"
    done
} > "$work/dingstream.toml"
env -i PATH=/usr/bin:/bin HOME="$work" LANG=C.UTF-8 \
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" --compress-strings=no --demangle=no \
    "$work/dingstream" run --config "$work/dingstream.toml" > "$work/daemon.log" 2>&1 < /dev/null &
daemon_pid=$!

live() { curl -sf "$sim/_sim/stats" | python3 -c 'import json, sys; print(sum(a["liveSockets"] for a in json.load(sys.stdin)["apps"].values()))'; }
four_sockets() { (($(live) == 4)); }
wait_for 300 "4 live sockets" four_sockets
for n in 1 2 3; do
    for app in alpha beta; do
        curl -sf -X POST -H 'Content-Type: application/json' -d "{\"app\":\"$app\",\"text\":\"message $n\"}" "$sim/_sim/messages" >/dev/null
    done
done
six_replies() { (($(curl -sf "$sim/_sim/replies" | grep -o '"echo: message' | wc -l) == 6)); }
wait_for 300 "6 replies" six_replies
sleep 20  # idle: pings, status, the writer's rescans
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""

# Every function callgrind saw that the binary defines, by its symbol; sorted, so that a new
# profile differs from the old one only where the code did.
nm --defined-only "$work/dingstream" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u > "$work/defined"
sed -n 's/^fn=//p' "$work/callgrind.out" | sed "s/'[0-9]*\$//" | sort -u > "$work/seen"
comm -12 "$work/defined" "$work/seen" > "$out"
echo "symbol-order: $(wc -l < "$out") functions in $out"
