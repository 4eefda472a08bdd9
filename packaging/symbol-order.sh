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

name=symbol-order
source "$(dirname "$0")/simulated-daemon.sh"

# valgrind cannot read the debug information of Swift's static binaries; the symbols suffice.
strip --strip-debug -o "$work/dingstream" "$bin"
start_simulator "$bin"
# Everything runs some 50 times slower under callgrind.
write_config 300s 30s
env -i PATH=/usr/bin:/bin HOME="$work" LANG=C.UTF-8 \
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" --compress-strings=no --demangle=no \
    "$work/dingstream" run --config "$work/dingstream.toml" > "$work/daemon.log" 2>&1 < /dev/null &
daemon_pid=$!

wait_for 300 "2 live sockets for each of alpha and beta" four_sockets
for n in 1 2 3; do
    for app in alpha beta; do send_message "$app" "message $n"; done
done
six_replies() { (($(curl -sf "$sim/_sim/replies" | grep -o '"echo from the package: message' | wc -l) == 6)); }
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
