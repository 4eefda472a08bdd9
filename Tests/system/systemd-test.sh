#!/usr/bin/env bash
# System test: dingstream under a real systemd.
#
# Boots systemd as PID 1 of its own PID and mount namespace (with /etc, /usr and /var behind
# throw-away overlays and a private /tmp, so the host is left untouched), installs the given
# binary as the Debian package (packaging/build-deb.sh --local) with a config and an example
# handler, runs the simulator on 127.0.0.1 outside the namespace, and checks start/READY, a round
# trip, journald fields, reload, the watchdog, stop, the security exposure and package removal.
#
# usage: Tests/system/systemd-test.sh path/to/dingstream [path/to/dingstreamPackageTests.xctest]
#        Tests/system/systemd-test.sh --smoke [path/to/dingstreamPackageTests.xctest]
#   --smoke: only a trivial Type=notify unit (proves the harness).
#   The optional test bundle runs JournalRoundTripTests inside the namespace, against its journald.
# Skips (exit 0) when not root or without unshare/nsenter/systemd.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
arg=${1:?usage: $0 path/to/dingstream | --smoke}
smoke=false
if [[ $arg == --smoke ]]; then smoke=true; bin=""; else bin=$(realpath "$arg"); fi
tests_bundle=${2:+$(realpath "$2")}

skip() { echo "SKIP systemd system test: $*"; exit 0; }
[[ $(id -u) -eq 0 ]] || skip "needs root (unshare --pid --mount, systemd as PID 1)"
for tool in unshare nsenter curl timeout; do command -v "$tool" >/dev/null || skip "$tool not installed"; done
[[ -x /lib/systemd/systemd ]] || skip "/lib/systemd/systemd not installed"
grep -qw overlay /proc/filesystems || skip "overlayfs not available"
$smoke || [[ -x $bin ]] || { echo "not executable: $bin" >&2; exit 2; }

failures=0
pass() { echo "ok - $*"; }
fail() { echo "not ok - $*"; failures=$((failures + 1)); }
die() { echo "not ok - $*"; failures=$((failures + 1)); exit 1; }

finished=false
work=$(mktemp -d "${TMPDIR:-/tmp}/dingstream-systemd-test.XXXXXX")
unshare_pid=""
systemd_pid=""
sim_pid=""

ns() { nsenter -t "$systemd_pid" -m -p -- "$@"; }
# Writes stdin to a path inside the namespace (its /tmp, /etc, /usr are not the host's).
put() { ns sh -c "mkdir -p \"\$(dirname '$1')\" && cat > '$1' && chmod ${2:-0644} '$1'"; }

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.2s; fails after SECONDS.
wait_for() {
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then return 1; fi
        sleep 0.2
    done
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n $systemd_pid ]] && kill -0 "$systemd_pid" 2>/dev/null; then
        if ((failures > 0 || rc != 0)) && ! $smoke; then
            echo "# journal of dingstream.service (last 80 lines):"
            ns journalctl -u dingstream --no-pager -n 80 2>/dev/null | sed 's/^/#   /'
        fi
        ns systemctl poweroff --no-block >/dev/null 2>&1
        for _ in $(seq 1 100); do kill -0 "$systemd_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    # A namespace that did not power off in 10s is ended: killing its PID 1 kills all of it.
    [[ -n $systemd_pid ]] && kill -KILL "$systemd_pid" 2>/dev/null
    if [[ -n $unshare_pid ]]; then
        for child in $(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null); do
            kill -KILL "$child" 2>/dev/null   # PID 1 of the namespace, found or not
        done
        kill -KILL "$unshare_pid" 2>/dev/null
        wait "$unshare_pid" 2>/dev/null
    fi
    [[ -n $sim_pid ]] && { kill "$sim_pid" 2>/dev/null; wait "$sim_pid" 2>/dev/null; }
    if ((failures > 0)) && [[ -s $work/simulator.log ]]; then
        echo "# simulator log (last 30 lines):"; tail -n 30 "$work/simulator.log" | sed 's/^/#   /'
    fi
    rm -rf "$work"
    if ((rc == 0 && failures > 0)); then rc=1; fi
    # Only a run that got to the end may pass, whatever ended it early.
    if ((rc == 0)) && ! $finished; then echo "not ok - the test stopped before its end"; rc=1; fi
    ((rc == 0)) && echo "# systemd system test passed" || echo "# systemd system test FAILED"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- boot ---------------------------------------------------------------------------------------
# container= makes systemd skip what would touch the shared kernel (udev trigger, sysctl,
# swap/loop teardown at shutdown); the overlays keep sysusers, tmpfiles and installs private.
cat > "$work/boot.sh" <<'EOF'
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/.systest
for d in etc usr var; do
    mkdir -p /run/.systest/$d.up /run/.systest/$d.work
    mount -t overlay overlay -o lowerdir=/$d,upperdir=/run/.systest/$d.up,workdir=/run/.systest/$d.work /$d
done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
# Shared inside this namespace (as on a booted host), so credential mounts reach the services.
mount --make-rshared /
exec env -i container=dingstream-systest /lib/systemd/systemd --system --unit=basic.target
EOF
unshare --pid --fork --mount --mount-proc --propagation private sh "$work/boot.sh" \
    > "$work/console.log" 2>&1 < /dev/null &
unshare_pid=$!
is_systemd_child() {
    local child
    child=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null) || return 1
    child=${child%% *}
    [[ -n $child && $(readlink "/proc/$child/exe") == */systemd ]] && systemd_pid=$child
}
wait_for 20 "systemd to start" is_systemd_child || die "systemd did not start: $(cat "$work/console.log")"
wait_for 30 "systemd's private bus" ns test -S /run/systemd/private || die "systemd did not open its bus"
if ns timeout 60 systemctl is-system-running --wait >/dev/null 2>&1 || ns systemctl is-system-running | grep -q degraded; then
    pass "systemd booted as PID 1 of its own namespace (host pid $systemd_pid)"
else
    die "systemd did not reach basic.target: $(ns systemctl is-system-running 2>&1)"
fi

# --- JournalLogHandler against this journald ---------------------------------------------------
if [[ -n $tests_bundle ]]; then
    # Copied in: the checkout may live under the host's /tmp, which the namespace hides.
    put /usr/local/libexec/dingstream-systest/tests.xctest 0755 < "$tests_bundle"
    if out=$(ns timeout 120 systemd-run --quiet --wait --pipe --collect -p Type=exec \
            /usr/local/libexec/dingstream-systest/tests.xctest --testing-library swift-testing --filter JournalRoundTripTests 2>&1) \
        && grep -q 'entryArrivesWithStructuredFields() passed' <<< "$out"; then
        pass "JournalLogHandler entry read back from journald with its fields (JournalRoundTripTests)"
    else
        fail "JournalRoundTripTests in the namespace: $(tail -n 20 <<< "$out")"
    fi
fi

# --- smoke: the harness on a trivial Type=notify unit ------------------------------------------
if $smoke; then
    put /etc/systemd/system/smoke.service <<'EOF'
[Service]
Type=notify
NotifyAccess=all
ExecStart=/bin/sh -c 'sleep 1; echo smoke-journal-line; systemd-notify --ready --status="smoke up"; exec sleep 600'
EOF
    ns systemctl daemon-reload
    ns timeout 30 systemctl start smoke && [[ $(ns systemctl is-active smoke) == active ]] \
        && pass "systemctl start returned after READY" || fail "smoke unit did not become active"
    [[ $(ns systemctl show -p StatusText --value smoke) == "smoke up" ]] && pass "STATUS= reached systemd" \
        || fail "STATUS= missing"
    ns journalctl -u smoke -o json --no-pager | grep -q '"MESSAGE":"smoke-journal-line"' \
        && pass "journalctl -o json shows the unit's output" || fail "journal line missing"
    ns timeout 30 systemctl stop smoke && pass "systemctl stop" || fail "stop"
    finished=true
    exit $((failures > 0))
fi

# --- simulator (outside the namespace; the network namespace is shared) -------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000)))
sim="http://127.0.0.1:$port"
"$bin" simulator --port "$port" --app systest:dingsystest0001:systest-secret --app extra:dingextra00002:extra-secret \
    > "$work/simulator.log" 2>&1 < /dev/null &
sim_pid=$!
wait_for 20 "simulator" curl -sf "$sim/_sim/stats" || die "simulator did not answer on $sim"
pass "simulator listening on $sim"

# sim_stat APP KEY: a counter of the simulator's GET /_sim/stats ({"apps":{APP:{KEY:n}}}).
sim_stat() {
    curl -sf "$sim/_sim/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["apps"][sys.argv[1]][sys.argv[2]])' "$1" "$2"
}
live_sockets() { sim_stat "$1" liveSockets; }
has_live_socket() { (($(live_sockets "$1") > 0)); }

# --- install: the Debian package, as a user would ---------------------------------------------
# Built from the binary under test (--local: it may link this machine's Swift runtime).
deb=$("$root/packaging/build-deb.sh" "$bin" "$work/deb" --local) || die "packaging/build-deb.sh failed"
put /var/cache/dingstream-systest/dingstream.deb < "$deb"
# Container images forbid service actions from packages through policy-rc.d (exit 101), which
# the package's scripts obey; a booted server has none.
ns rm -f /usr/sbin/policy-rc.d
if install_out=$(ns dpkg -i /var/cache/dingstream-systest/dingstream.deb 2>&1); then
    pass "dpkg -i installed the package"
else
    die "dpkg -i: $install_out"
fi
grep -q "systemctl enable --now dingstream" <<< "$install_out" \
    && pass "the first install tells what to do next" || fail "no next step after dpkg -i: $install_out"
[[ $(ns stat -c '%U:%G %a' /var/spool/dingstream) == "dingstream:dingstream 750" \
    && $(ns stat -c '%U:%G %a' /var/spool/dingstream/handlers) == "root:dingstream 750" \
    && $(ns stat -c '%U:%G %a' /etc/dingstream/dingstream.toml) == "root:dingstream 640" ]] \
    && pass "postinst made user dingstream, the spool, handlers/ and the config's group" \
    || fail "after dpkg -i: $(ns stat -c '%n %U:%G %a' /var/spool/dingstream /var/spool/dingstream/handlers /etc/dingstream/dingstream.toml 2>&1)"
[[ $(ns man -w dingstream 2>&1) == /usr/share/man/man8/dingstream.8.gz ]] \
    && ns bash -c 'source /usr/share/bash-completion/completions/dingstream && complete -p dingstream' >/dev/null 2>&1 \
    && pass "man dingstream and bash completion are installed" \
    || fail "man page or completion missing: $(ns man -w dingstream 2>&1)"

write_config() { # $1: extra TOML appended
    put /etc/dingstream/dingstream.toml 0640 <<EOF
spool_dir = "/var/spool/dingstream"
runtime_dir = "/run/dingstream"
ready_timeout = "30s"
shutdown_grace = "5s"
log_level = "debug"

[[app]]
name = "systest"
client_id = "dingsystest0001"
connections = 1
allowed_users = ["*"]
api_base = "$sim"
$1
EOF
    ns chgrp dingstream /etc/dingstream/dingstream.toml
}
write_config ""
# The secret of "systest" comes only through a systemd credential: the config names none.
printf 'systest-secret' | put /etc/dingstream/systest.secret 0600
put /etc/systemd/system/dingstream.service.d/10-systest.conf <<'EOF'
[Service]
LoadCredential=systest:/etc/dingstream/systest.secret
# Shorter than the shipped 20s so the SIGSTOP check finishes quickly.
WatchdogSec=6s
EOF
put /var/spool/dingstream/handlers/10-echo 0755 <<'EOF'
#!/bin/sh
# Example handler: replies with the text it got.
printf 'echo: %s\n' "$DINGSTREAM_TEXT"
EOF
ns systemctl daemon-reload
pass "configured the app, its credential and a handler"

verify_out=$(ns systemd-analyze verify /usr/lib/systemd/system/dingstream.service 2>&1) \
    && [[ -z $verify_out ]] && pass "systemd-analyze verify is clean" || fail "systemd-analyze verify: $verify_out"

# --- start: returns only after READY ------------------------------------------------------------
if ns timeout 90 systemctl start dingstream; then
    state=$(ns systemctl show -p ActiveState,SubState --value dingstream | paste -sd/)
    live=$(live_sockets systest)
    if [[ $state == active/running ]] && ((live > 0)); then
        pass "systemctl start returned after READY: $state, $live live socket(s) at that moment"
    else
        fail "after start: state $state, live sockets $live"
    fi
else
    die "systemctl start dingstream failed"
fi
status_text=$(ns systemctl show -p StatusText --value dingstream)
[[ $status_text == *systest* ]] && pass "STATUS= is current: '$status_text'" || fail "STATUS= lacks the app: '$status_text'"
main_pid=$(ns systemctl show -p MainPID --value dingstream)

# --- round trip ---------------------------------------------------------------------------------
curl -sf -X POST -H 'Content-Type: application/json' -d '{"app":"systest","text":"hello systemd"}' \
    "$sim/_sim/messages" >/dev/null || fail "simulator refused the message"
replied() { curl -sf "$sim/_sim/replies" | grep -q 'echo: hello systemd'; }
wait_for 30 "reply" replied && pass "round trip: message in, handler ran, reply delivered" \
    || fail "no reply 'echo: hello systemd' in $(curl -sf "$sim/_sim/replies" | head -c 400)"

# --- journald fields ----------------------------------------------------------------------------
journal=$(ns journalctl -u dingstream -o json --no-pager)
entry_with() { # every argument is a "FIELD":"value" pair one entry must contain
    local line
    while IFS= read -r line; do
        local all=true
        for pair in "$@"; do [[ $line == *"$pair"* ]] || { all=false; break; }; done
        $all && return 0
    done <<< "$journal"
    return 1
}
socket_up=d6a71f500b234bf4a1c42d4cee205577
committed=16027d6b8fb045cd82815e1db6aa7944
entry_with '"SYSLOG_IDENTIFIER":"dingstream"' "\"MESSAGE_ID\":\"$socket_up\"" '"APP":"systest"' '"CONN_ID":' '"CODE_FILE":' '"CODE_LINE":' '"PRIORITY":' \
    && pass "journal: socket-up entry with MESSAGE_ID, APP, CONN_ID, CODE_FILE/LINE, PRIORITY" \
    || fail "journal: no structured socket-up entry"
entry_with "\"MESSAGE_ID\":\"$committed\"" '"APP":"systest"' '"MSG_KEY":' \
    && pass "journal: message-committed entry with MSG_KEY" || fail "journal: no message-committed entry with MSG_KEY"
entry_with '"_TRANSPORT":"journal"' '"SYSLOG_IDENTIFIER":"dingstream"' \
    && pass "journal: native entries (_TRANSPORT=journal), not stderr lines" || fail "journal: no native entries"

# --- reload: new config applied, unchanged app keeps its socket ---------------------------------
cursor=$(ns journalctl -u dingstream -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
registrations=$(sim_stat systest registrations)
write_config '
[[app]]
name = "extra"
client_id = "dingextra00002"
client_secret = "extra-secret"
connections = 1
allowed_users = ["*"]
api_base = "'"$sim"'"'
ns timeout 30 systemctl reload dingstream || fail "systemctl reload failed"
wait_for 30 "extra app socket" has_live_socket extra && pass "reload applied the new config: app 'extra' connected" \
    || fail "reload: app 'extra' has no live socket"
after=$(ns journalctl -u dingstream -o json --no-pager --after-cursor "$cursor")
if grep -F "\"MESSAGE_ID\":\"$socket_up\"" <<< "$after" | grep -qF '"APP":"systest"'; then
    fail "reload reconnected the unchanged app 'systest'"
elif has_live_socket systest && [[ $(sim_stat systest registrations) == "$registrations" ]] \
    && [[ $(ns systemctl show -p MainPID --value dingstream) == "$main_pid" ]]; then
    pass "reload kept the socket of unchanged app 'systest' (no new registration or socket-up, same main PID)"
else
    fail "after reload: systest live sockets $(live_sockets systest), main pid $(ns systemctl show -p MainPID --value dingstream) (was $main_pid)"
fi
# The daemon says READY=1 once the new configuration is applied; "reloading" must not linger.
unit_active() { [[ $(ns systemctl is-active dingstream) == active ]]; }
wait_for 5 "unit active" unit_active && pass "unit back to active after reload (READY=1 after RELOADING=1)" \
    || fail "unit not active 5 s after reload: $(ns systemctl is-active dingstream)"

# --- a DingTalk outage does not stop the watchdog pings -----------------------------------------
# The simulator hangs (no answers, no pongs) for more than twice WatchdogSec: the daemon must
# keep pinging, since it is healthy and only its peer is not.
restarts=$(ns systemctl show -p NRestarts --value dingstream)
kill -STOP "$sim_pid"
sleep 15
kill -CONT "$sim_pid"
if [[ $(ns systemctl show -p MainPID --value dingstream) == "$main_pid" && $(ns systemctl is-active dingstream) == active \
    && $(ns systemctl show -p NRestarts --value dingstream) == "$restarts" ]]; then
    pass "a 15 s DingTalk outage (WatchdogSec=6s) did not trip the watchdog"
else
    fail "the daemon was restarted during a DingTalk outage"
fi
wait_for 60 "socket after the outage" has_live_socket systest && pass "sockets came back after the outage" \
    || fail "no live socket for systest after the outage"

# --- watchdog: a frozen daemon is restarted -----------------------------------------------------
restarts=$(ns systemctl show -p NRestarts --value dingstream)
ns kill -STOP "$main_pid"
restarted() {
    local pid
    pid=$(ns systemctl show -p MainPID --value dingstream)
    [[ $pid != 0 && $pid != "$main_pid" && $(ns systemctl is-active dingstream) == active ]]
}
# systemd's own line may reach the journal a moment after the restart, on a busy machine.
watchdog_logged() { ns journalctl -u dingstream --no-pager | grep -q 'Watchdog timeout'; }
if wait_for 60 "watchdog restart" restarted; then
    wait_for 15 "systemd's watchdog line in the journal" watchdog_logged \
        && pass "SIGSTOPped daemon restarted by the watchdog (NRestarts $restarts -> $(ns systemctl show -p NRestarts --value dingstream))" \
        || fail "restarted, but not by the watchdog"
else
    fail "frozen daemon was not restarted within 60s"
fi

# --- stop ---------------------------------------------------------------------------------------
ns journalctl -u dingstream -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p' > "$work/cursor"
if ns timeout 60 systemctl stop dingstream; then
    result=$(ns systemctl show -p Result --value dingstream)
    code=$(ns systemctl show -p ExecMainStatus --value dingstream)
    if [[ $result == success && $code == 0 ]] \
        && ! ns journalctl -u dingstream --no-pager --after-cursor "$(cat "$work/cursor")" | grep -q 'SIGKILL'; then
        pass "systemctl stop ended it cleanly (Result=$result, exit $code, no SIGKILL)"
    else
        fail "stop: Result=$result ExecMainStatus=$code"
    fi
else
    fail "systemctl stop failed"
fi

# --- exposure -----------------------------------------------------------------------------------
exposure=$(ns systemd-analyze security --no-pager dingstream.service 2>/dev/null | sed -n 's/.*Overall exposure level for dingstream.service: \([0-9.]*\).*/\1/p')
if [[ -n $exposure ]] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
    pass "systemd-analyze security: exposure $exposure <= 2.0"
else
    fail "systemd-analyze security: exposure '${exposure:-unknown}' > 2.0"
fi

# --- upgrade and removal ------------------------------------------------------------------------
ns timeout 60 systemctl start dingstream >/dev/null 2>&1 || fail "start before the upgrade"
pid_before=$(ns systemctl show -p MainPID --value dingstream)
if upgrade_out=$(ns dpkg -i /var/cache/dingstream-systest/dingstream.deb 2>&1); then
    pid_after=$(ns systemctl show -p MainPID --value dingstream)
    [[ $(ns systemctl is-active dingstream) == active && $pid_after != "$pid_before" && $pid_after != 0 ]] \
        && ns grep -q 'name = "extra"' /etc/dingstream/dingstream.toml \
        && pass "upgrade over a running daemon restarted it (PID $pid_before -> $pid_after) and kept the edited config" \
        || fail "after the upgrade: $(ns systemctl is-active dingstream), PID $pid_before -> $pid_after"
else
    fail "dpkg -i over the installed package: $upgrade_out"
fi
if remove_out=$(ns dpkg --purge dingstream 2>&1); then
    if [[ $(ns systemctl is-active dingstream 2>/dev/null) != active ]] && ! ns test -e /usr/bin/dingstream \
        && ! ns test -e /usr/lib/systemd/system/dingstream.service && ! ns test -e /etc/dingstream/dingstream.toml \
        && ns test -s /var/spool/dingstream/spool.db; then
        pass "dpkg --purge stopped the daemon and removed binary, unit and config; the spool is kept"
    else
        fail "after dpkg --purge: active=$(ns systemctl is-active dingstream 2>&1) $(ns ls /usr/bin/dingstream /etc/dingstream 2>&1) spool: $(ns ls /var/spool/dingstream 2>&1)"
    fi
else
    fail "dpkg --purge: $remove_out"
fi

finished=true
((failures == 0))
