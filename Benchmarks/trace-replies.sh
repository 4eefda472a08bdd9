#!/bin/sh
# Traces the HTTP handler's paced phase of `dingstream-bench --replies only` with perf (scheduler
# switches and wake-ups, writes and fdatasync of the daemon, the handler server and the bench
# process) and prints, per message, how long the frame took to become the handler's request, the
# request its answer, and the answer the reply's POST (Benchmarks/reply_phases.py).
# usage: Benchmarks/trace-replies.sh [BUILD_DIR]   (default .build/release; run as root)
set -e
build=${1:-.build/release}
out=$(mktemp -d)
"$build/dingstream-bench" --replies only --cluster no > "$out/bench.txt" 2>&1 &
bench=$!
daemon=
for _ in $(seq 300); do
  daemon=$(pgrep -f "$build/dingstream run" | head -1) && [ -n "$daemon" ] && break
  sleep 0.1
done
sleep 3  # past the warm-up, into the paced phase
server=$(pgrep -f http-handler-example | head -1)
perf record -q -e sched:sched_switch -e sched:sched_wakeup -e syscalls:sys_enter_write -e syscalls:sys_enter_writev \
  -e syscalls:sys_enter_sendto -e syscalls:sys_enter_pwrite64 -e syscalls:sys_enter_fdatasync \
  -p "$daemon,$bench,$server" -o "$out/perf.data" -- sleep 3 2>/dev/null
wait $bench
perf script -i "$out/perf.data" -F comm,pid,tid,cpu,time,event,trace 2>/dev/null > "$out/trace.txt"
python3 "$(dirname "$0")/reply_phases.py" "$out/trace.txt"
echo "trace and bench output in $out"
