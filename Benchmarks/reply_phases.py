"""Phases of each paced message in a `perf script` dump made by trace-replies.sh.

A message is found by the handler server's answer (the example server sends it in one sendto);
its request is the daemon's write that woke the server before it, its frame the bench's last
writev before that request, its reply the daemon's next write after the answer. Times in ms.
"""
import sys
from collections import Counter

events = []
for line in open(sys.argv[1]):
    parts = line.split(None, 5)
    if len(parts) < 6:
        continue
    comm, pid = parts[0], parts[1].split("/")[0]
    events.append((float(parts[3].rstrip(":")) * 1000, comm, pid, parts[4], parts[5]))

daemon = next(e[2] for e in events if e[1] == "spool-writer")
server = next(e[2] for e in events if e[1] == "python3")
bench = next(e[2] for e in events if e[2] not in (daemon, server))


def is_write(event, pid):
    return event[2] == pid and event[3].startswith("syscalls:sys_enter_write")


def is_payload_write(event, pid):
    """A write of more than a wake-up (8 bytes to an eventfd), not to stderr (a log line)."""
    if not is_write(event, pid) or "count:" not in event[4]:
        return False
    fields = dict(part.split(": ") for part in event[4].strip().split(", ") if ": " in part)
    return int(fields.get("fd", "0"), 16) != 2 and int(fields.get("count", "0"), 16) > 16


rows = []
previous = 0
for index, event in enumerate(events):
    if not (event[2] == server and "sendto" in event[3]):
        continue
    request = None
    for back in range(index - 1, previous, -1):
        candidate = events[back]
        if candidate[2] == daemon and "sched_wakeup" in candidate[3] and "comm=python3" in candidate[4]:
            writes = [i for i in range(back - 1, max(back - 5, 0), -1) if is_write(events[i], daemon)]
            if writes:
                request = writes[0]
                break
    previous = index
    if request is None:
        continue
    frame = next((events[i][0] for i in range(request - 1, max(request - 400, 0), -1) if events[i][2] == bench and "writev" in events[i][3]), None)
    committer, reply = None, None
    for after in events[index + 1 : index + 600]:
        if committer is None and after[2] == daemon and "pwrite64" in after[3]:
            committer = after[1]
        if is_payload_write(after, daemon):
            reply = after[0]
            break
    if frame is not None and reply is not None:
        rows.append((events[request][0] - frame, event[0] - events[request][0], reply - event[0], reply - frame, committer))

print(f"{len(rows)} messages")
for name, column in (("frame to request", 0), ("request to answer", 1), ("answer to reply POST", 2), ("frame to reply POST", 3)):
    values = sorted(row[column] for row in rows)
    if values:
        print(f"{name:22} p50 {values[len(values) // 2]:.3f}  p90 {values[int(len(values) * 0.9)]:.3f}")
print("outcome committed by:", dict(Counter((row[4] or "?")[:12] for row in rows)))
