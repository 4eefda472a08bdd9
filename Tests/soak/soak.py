#!/usr/bin/env python3
"""A compressed day of dingstream against the built-in simulator (`make soak`, `make soak-check`).

Two processes of the built binary: `dingstream simulator` and `dingstream run`. For --minutes it
injects a steady load of bot messages while the simulator rotates every socket every few seconds,
drops sockets at random, black-holes some, and the daemon gets a SIGHUP every minute. A handler
records each message's business id (msgId). At the end it waits for the last messages, then
reports the daemon's RSS, open descriptors, threads and work in flight (status.json `live`) at
the start, after the warm-up and at the end; messages lost and handled twice; time without a
socket; and the exit status of a SIGTERM stop.

--check fails (exit 1) when anything is lost or handled twice, the stop is not clean, or the
daemon grew beyond the tolerances below.
"""
import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

# Growth allowed at the end of the run (idle, after the last message). RSS against the end of the
# warm-up: SQLite's page cache (cache_size, 8 MiB) goes on filling as the spool grows, and malloc's
# arenas settle; 4 MiB beyond that. A leak of a kilobyte a message passes it within 10 minutes.
RSS_GROWTH_MIB = 12.0
# Descriptors and threads against the start (idle too). The HTTP client keeps up to 8 idle
# keep-alive connections to the simulator for replies (closed after 60 s idle); 2 more for a
# socket being replaced at the moment of the sample.
HTTP_POOL = 8
FD_GROWTH = 2
THREAD_GROWTH = 4  # NIO's loops and the cooperative pool are bounded; a thread per leaked run is not
LIVE_CHANNELS_MAX_EXTRA = 2  # open channels beyond `connections`: ones still draining

APP = ("soak", "dingsoak", "soak-secret")
CONNECTIONS = 2
CONVERSATIONS = 8


def log(line):
    print(f"soak: {line}", flush=True)


class Simulator:
    def __init__(self, binary, workdir):
        self.output = open(os.path.join(workdir, "simulator.log"), "w")
        self.process = subprocess.Popen(
            [binary, "simulator", "--port", "0", "--app", ":".join(APP), "--ping-interval", "5", "--redelivery-timeout", "5"],
            stdout=subprocess.PIPE, stderr=self.output, stdin=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if "listening on " not in line:
            raise SystemExit(f"soak: the simulator did not start (see {self.output.name}): {line!r}")
        self.base = line.strip().rsplit(" ", 1)[-1]

    def call(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def stats(self):
        return self.call("/_sim/stats")["apps"][APP[0]]

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Daemon:
    def __init__(self, binary, workdir, base):
        self.workdir = workdir
        spool = os.path.join(workdir, "spool")
        handlers = os.path.join(spool, "handlers")
        os.makedirs(handlers, mode=0o750)
        os.chmod(workdir, 0o750)
        os.chmod(spool, 0o750)
        self.handled_log = os.path.join(workdir, "handled.log")
        handler = os.path.join(handlers, "10-record")
        with open(handler, "w") as f:
            # One short line per run, appended with O_APPEND: atomic, so parallel runs never mix.
            f.write("#!/bin/sh\n"
                    "id=$(grep -o '\"msgId\":\"[^\"]*\"' | head -n 1 | cut -d '\"' -f 4)\n"
                    f"printf '%s\\n' \"$id\" >> {self.handled_log}\n"
                    "echo ok\n")
        os.chmod(handler, 0o755)
        self.runtime = os.path.join(workdir, "run")
        self.config = os.path.join(workdir, "dingstream.toml")
        with open(self.config, "w") as f:
            f.write(f'spool_dir = "{spool}"\nruntime_dir = "{self.runtime}"\nworkers = 4\n'
                    'handler_timeout = "20s"\nready_timeout = "10s"\nshutdown_grace = "5s"\nlog_level = "notice"\n\n'
                    f'[[app]]\nname = "{APP[0]}"\nclient_id = "{APP[1]}"\nclient_secret = "{APP[2]}"\n'
                    f'connections = {CONNECTIONS}\nallowed_users = ["*"]\napi_base = "{base}"\n')
        self.output = open(os.path.join(workdir, "daemon.log"), "w")
        self.process = subprocess.Popen([binary, "run", "--config", self.config],
                                        stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def status(self):
        try:
            with open(os.path.join(self.runtime, "status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def sample(self):
        pid = self.process.pid
        rss_kib = threads = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kib = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        status = self.status() or {}
        kinds = collections.Counter()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            kinds[target.split(":")[0] if ":[" in target else "file"] += 1
        return {
            "rss_mib": rss_kib / 1024, "fds": sum(kinds.values()), "fd_kinds": dict(kinds), "threads": threads,
            "live": status.get("live", {}), "updated": status.get("updatedAt", 0),
        }

    def fresh_sample(self, after):
        """A sample whose status.json was written after `after` (it is rewritten every 5 s)."""
        deadline = time.time() + 15
        while True:
            sample = self.sample()
            if sample["updated"] > after or time.time() > deadline:
                return sample
            time.sleep(0.2)

    def handled(self):
        try:
            with open(self.handled_log) as f:
                return collections.Counter(line.strip() for line in f if line.strip())
        except FileNotFoundError:
            return collections.Counter()


def wait_for(what, condition, timeout):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise SystemExit(f"soak: gave up after {timeout} s waiting for {what}")
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=".build/debug/dingstream")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=20, help="messages per second")
    parser.add_argument("--rotation", type=float, default=5, help="seconds a socket lives before the simulator rotates it")
    parser.add_argument("--check", action="store_true", help="fail on loss, duplicates or growth beyond the tolerances")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, spool)")
    args = parser.parse_args()
    # A stop from make or CI ends the run through the `finally` below, which stops both processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    duration = args.minutes * 60
    warmup = min(60.0, duration / 4)
    reload_every = min(60.0, duration / 2)
    workdir = tempfile.mkdtemp(prefix="dingstream-soak-")
    rng = random.Random(int(os.environ.get("SOAK_SEED", "0")) or None)
    log(f"{args.minutes:g} min, {args.rate:g} msgs/s, rotation every {args.rotation:g} s, reload every {reload_every:g} s; "
        f"logs in {workdir}")

    simulator = Simulator(args.binary, workdir)
    daemon = None
    failures = []
    try:
        simulator.call("/_sim/faults", {"kind": "rotation", "ageMs": int(args.rotation * 1000)})
        daemon = Daemon(args.binary, workdir, simulator.base)
        wait_for("the daemon's sockets", lambda: (daemon.status() or {}).get("phase") == "ready", 30)
        samples = {"start": daemon.sample()}

        injected = []
        stop = threading.Event()
        errors = []

        def load():
            interval = 1 / args.rate
            next_at = time.time()
            n = 0
            while not stop.is_set():
                n += 1
                body = {"app": APP[0], "text": f"soak {n}", "conversation": "group",
                        "conversationId": f"cidSoak{n % CONVERSATIONS}==", "title": "soak"}
                try:
                    injected.append(simulator.call("/_sim/messages", body)["msgId"])
                except Exception as error:  # a refused injection is not a message DingTalk owes us
                    errors.append(f"inject: {error}")
                next_at += interval
                time.sleep(max(0.0, next_at - time.time()))

        faults = collections.Counter()

        def chaos():
            # One socket at a time, as a network fault would hit it.
            while not stop.wait(rng.uniform(2, 6)):
                mode = rng.choice(["abruptClose", "abruptClose", "blackHole"])
                try:
                    live = simulator.stats()["liveSocketIds"]
                    if not live:
                        faults["none up"] += 1
                        continue
                    simulator.call("/_sim/faults", {"kind": "disconnect", "app": APP[0], "socket": rng.choice(live), "mode": mode})
                    faults[mode] += 1
                except urllib.error.HTTPError:
                    faults[mode + " missed (socket gone meanwhile)"] += 1
                except OSError as error:  # the control API slow on a loaded machine: try the next one
                    errors.append(f"fault: {error}")

        threads = [threading.Thread(target=load, daemon=True), threading.Thread(target=chaos, daemon=True)]
        for t in threads:
            t.start()
        began = time.time()
        next_reload = began + reload_every
        reloads = 0
        peak = dict(samples["start"])
        warmed = False
        # Every sample, to tell a curve that flattens from one that climbs.
        series = open(os.path.join(workdir, "samples.csv"), "w")
        series.write("seconds,rss_mib,fds,threads,channels,handler_runs\n")
        while time.time() - began < duration:
            time.sleep(1)
            if daemon.process.poll() is not None:
                raise SystemExit(f"soak: the daemon exited with {daemon.process.returncode}; see {workdir}/daemon.log")
            now = time.time()
            if now >= next_reload:
                daemon.process.send_signal(signal.SIGHUP)
                reloads += 1
                next_reload += reload_every
            sample = daemon.sample()
            series.write(f"{now - began:.0f},{sample['rss_mib']:.1f},{sample['fds']},{sample['threads']},"
                         f"{sample['live'].get('channels', '')},{sample['live'].get('handlerRuns', '')}\n")
            for key in ("rss_mib", "fds", "threads"):
                peak[key] = max(peak[key], sample[key])
            if not warmed and now - began >= warmup:
                warmed = True
                samples["warm"] = sample
        series.close()
        stop.set()
        for t in threads:
            t.join(timeout=15)
        # The day is over: no more rotations, so the replaced sockets finish draining.
        simulator.call("/_sim/faults", {"kind": "rotation"})

        # Every message pushed is owed: black-holed pushes come again after the redelivery timeout.
        expected = set(injected)
        wait_for("every message to reach its handler and be acked",
                 lambda: expected <= set(daemon.handled()) and simulator.stats()["unacked"] == 0
                 and (daemon.status() or {}).get("live", {}).get("handlerRuns", 1) == 0
                 and (daemon.status() or {}).get("live", {}).get("replyRuns", 1) == 0, 90)
        # Replaced sockets close within the simulator's disconnect grace (10 s); leaked ones never.
        settle = time.time() + 30
        while time.time() < settle and daemon.fresh_sample(time.time())["live"].get("channels", 0) > CONNECTIONS:
            pass
        samples["end"] = daemon.fresh_sample(time.time())
        handled = daemon.handled()
        stats = simulator.stats()

        daemon.process.send_signal(signal.SIGTERM)
        try:
            exit_status = daemon.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            exit_status = "killed after 30 s"
        daemon = None

        lost = len(expected - set(handled))
        twice = sum(1 for c in handled.values() if c > 1)
        unknown = len(set(handled) - expected)
        log(f"{len(injected)} messages injected, {sum(handled.values())} handler runs; faults {dict(faults)}; "
            f"{reloads} reloads; {len(errors)} control calls failed")
        log(f"simulator: {stats['pushes']} pushes, {stats['redeliveries']} redeliveries, {stats['acks']} acks, "
            f"{stats['registrations']} registrations, {stats['unacked']} unacked")
        log(f"{'':8}{'RSS MiB':>9}{'fds':>6}{'threads':>9}  live (status.json)")
        for name in ("start", "warm", "end"):
            if name in samples:
                s = samples[name]
                log(f"{name:8}{s['rss_mib']:9.1f}{s['fds']:6}{s['threads']:9}  {json.dumps(s['live'], sort_keys=True)}  "
                    f"fds {json.dumps(s['fd_kinds'], sort_keys=True)}")
        log(f"{'peak':8}{peak['rss_mib']:9.1f}{peak['fds']:6}{peak['threads']:9}")
        log(f"lost {lost}, handled twice {twice}, handled but never injected {unknown}")
        log(f"time without a socket: {stats['gapSeconds']:.2f} s in {stats['gaps']} gaps")
        log(f"stop: exit status {exit_status}")

        if lost or twice or unknown:
            failures.append(f"{lost} lost, {twice} handled twice, {unknown} unknown")
        if exit_status != 0:
            failures.append(f"SIGTERM stop ended with {exit_status}, not 0")
        if args.check:
            start, warm, end = samples["start"], samples.get("warm", samples["start"]), samples["end"]
            if end["rss_mib"] - warm["rss_mib"] > RSS_GROWTH_MIB:
                failures.append(f"RSS grew {end['rss_mib'] - warm['rss_mib']:.1f} MiB after the warm-up (tolerance {RSS_GROWTH_MIB} MiB)")
            if end["fds"] - start["fds"] > HTTP_POOL + FD_GROWTH:
                failures.append(f"open fds grew from {start['fds']} to {end['fds']} (tolerance +{HTTP_POOL + FD_GROWTH})")
            if end["threads"] - start["threads"] > THREAD_GROWTH:
                failures.append(f"threads grew from {start['threads']} to {end['threads']} (tolerance +{THREAD_GROWTH})")
            channels = end["live"].get("channels")
            if channels is None or channels > CONNECTIONS + LIVE_CHANNELS_MAX_EXTRA:
                failures.append(f"{channels} socket channels open at the end, for {CONNECTIONS} connections")
    finally:
        if daemon is not None:
            daemon.process.kill()
            daemon.process.wait()
        simulator.stop()
    if failures:
        for failure in failures:
            log(f"FAILED: {failure}")
        log(f"logs kept in {workdir}")
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    log("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
