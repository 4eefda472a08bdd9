#!/usr/bin/env bash
# Writes the symbol order file that `make release` links with (packaging/symbol-order.txt): the
# functions the daemon runs while it starts, brings 2 apps x 2 sockets up, handles messages with
# a script handler, delivers the replies and idles, and the zero-initialised data (.bss) it writes
# meanwhile. lld lays the listed functions out first, next to each other, so that the code pages
# the daemon touches (and the 64 KiB the kernel maps around each of them) are few; and the listed
# .bss items side by side, so that the few KiB the daemon writes there take few private pages
# rather than one page each: README, "Install it".
#
# Two runs of the same scenario against the binary's own simulator: one under valgrind's
# callgrind, which sees every function that runs; one native under `perf record -e page-faults`,
# which adds the functions whose first run faulted in a code page and that callgrind did not see
# (code that takes another path on the real CPU than under valgrind), and reads the .bss items
# that are no longer zero from the running daemon's memory.
#
# usage: packaging/symbol-order.sh path/to/dingstream [out-file]
# Needs valgrind, perf (apt-get install valgrind linux-perf), curl and python3; perf records page
# faults as root or with kernel.perf_event_paranoid <= 1. Run it after changes that rename or add
# much of what runs at start; a stale file only makes the layout less compact.
set -euo pipefail

bin=$(realpath "${1:?usage: $0 path/to/dingstream [out-file]}")
out=${2:-$(dirname "$0")/symbol-order.txt}
for tool in valgrind perf curl python3 nm strip readelf; do
    command -v "$tool" >/dev/null || { echo "symbol-order: $tool not found (apt-get install valgrind linux-perf binutils curl python3)" >&2; exit 2; }
done
perf record -q -e page-faults -o /dev/null true 2>/dev/null ||
    { echo "symbol-order: perf cannot record page faults here; run as root or set kernel.perf_event_paranoid to 1" >&2; exit 2; }

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

six_replies() { (($(curl -sf "$sim/_sim/replies" | grep -o '"echo from the package: message' | wc -l) == 6)); }
# The scenario against a running daemon: sockets up, six messages and their replies, 20 s idle.
scenario() {
    wait_for "$1" "2 live sockets for each of alpha and beta" four_sockets
    for n in 1 2 3; do
        for app in alpha beta; do send_message "$app" "message $n"; done
    done
    wait_for "$1" "6 replies" six_replies
    sleep 20  # idle: pings, status, the writer's rescans
}
scenario 300
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""

# The native run, on a fresh spool and simulator; perf's child is the daemon.
kill "$sim_pid" && wait "$sim_pid" 2>/dev/null || true
rm -rf "$work/spool" "$work/run"
start_simulator "$bin"
write_config 60s 10s
env -i PATH=/usr/bin:/bin HOME="$work" LANG=C.UTF-8 \
    perf record -q -e page-faults -c 1 -d -o "$work/faults.data" \
    "$work/dingstream" run --config "$work/dingstream.toml" > "$work/daemon.log" 2>&1 < /dev/null &
perf_pid=$!
daemon_pid=$perf_pid
scenario 60
native_pid=$(tr -d " " < "/proc/$perf_pid/task/$perf_pid/children")
daemon_pid="$native_pid $perf_pid"
python3 "$(dirname "$0")/written-bss.py" "$work/dingstream" "$native_pid" > "$work/bss"
kill -TERM "$native_pid"
wait "$perf_pid" || true
daemon_pid=""
# A fault at the instruction being fetched (address = ip) in the binary: code run for the first time.
# perf prints each address with its symbol and object: "addr sym (dso) ip sym (dso)".
perf script -i "$work/faults.data" --no-demangle -F addr,ip,sym,dso 2>/dev/null |
    awk -v bin="($work/dingstream)" '$1 == $4 && $6 == bin && $5 != "[unknown]" {print $5}' | sort -u > "$work/faulted"

# Every function callgrind saw or that faulted, that the binary defines, by its symbol, and the
# written .bss items; sorted, so that a new profile differs from the old one only where the code did.
nm --defined-only "$work/dingstream" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u > "$work/defined"
sed -n 's/^fn=//p' "$work/callgrind.out" | sed "s/'[0-9]*\$//" | sort -u > "$work/seen"
sort -u "$work/seen" "$work/faulted" | comm -12 "$work/defined" - > "$work/functions"
sort -u "$work/functions" "$work/bss" > "$out"
echo "symbol-order: $(wc -l < "$work/functions") functions ($(comm -13 "$work/seen" "$work/functions" | wc -l) of them from page faults alone) and $(wc -l < "$work/bss") .bss items in $out"
