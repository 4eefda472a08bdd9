#!/usr/bin/env python3
"""Prints the .bss items of a running process of BINARY that are no longer all zero, one symbol
a line: what the process wrote there (packaging/symbol-order.sh lists them for the link).

usage: written-bss.py BINARY PID
An item written back to zero is missed; it then keeps its place, which costs a page at worst.
"""
import subprocess
import sys


def main():
    binary, pid = sys.argv[1], int(sys.argv[2])
    # The binary's load address: the start of its mapping at file offset 0.
    base = None
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and int(fields[2], 16) == 0 and fields[5] == binary:
                base = int(fields[0].split("-")[0], 16)
                break
    if base is None:
        sys.exit(f"written-bss: {binary} is not mapped in process {pid}")
    sections = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    bss = None
    for line in sections.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 6 and fields[1] == ".bss":
            bss = (int(fields[3], 16), int(fields[5], 16))
    if bss is None:
        sys.exit(f"written-bss: {binary} has no .bss")
    with open(f"/proc/{pid}/mem", "rb") as memory:
        memory.seek(base + bss[0])
        contents = memory.read(bss[1])
    symbols = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    written = set()
    for line in symbols.splitlines():
        fields = line.split()
        if len(fields) != 4 or fields[2] not in ("b", "B"):
            continue
        offset, size = int(fields[0], 16) - bss[0], int(fields[1], 16)
        if 0 <= offset < len(contents) and contents[offset:offset + size].strip(b"\0"):
            written.add(fields[3])
    print("\n".join(sorted(written)))


main()
