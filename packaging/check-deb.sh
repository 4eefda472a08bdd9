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

name=check-deb
source "$(dirname "$0")/simulated-daemon.sh"

dpkg-deb -x "$deb" "$work/root"
bin=$work/root/usr/bin/dingstream
[[ -x $bin ]] || die "$deb has no usr/bin/dingstream"
version=$("$bin" version) || die "dingstream version failed"
[[ $version == *"binary of "*" UTC)" ]] || die "dingstream version lacks the binary's date: $version"

start_simulator "$bin"
write_config 20s 5s
env -i PATH=/usr/bin:/bin HOME="$work" LANG=C.UTF-8 "$bin" run --config "$work/dingstream.toml" \
    > "$work/daemon.log" 2>&1 < /dev/null &
daemon_pid=$!

wait_for 30 "2 live sockets for each of alpha and beta" four_sockets
echo "ok - packaged binary: 2 apps x 2 sockets up against the simulator"

awk '$1 == "VmRSS:" {rss = $2} $1 == "RssAnon:" {anon = $2} $1 == "RssFile:" {file = $2}
     END {printf "idle with 4 sockets up: RSS %.1f MiB (anonymous %.1f, file-backed %.1f)\n", rss / 1024, anon / 1024, file / 1024}' \
    "/proc/$daemon_pid/status"

send_message beta "hello from check-deb"
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
