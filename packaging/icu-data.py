#!/usr/bin/env python3
"""ICU common data packages (.dat, format "CmnD"): list one, or write a subset of one.

The static Swift runtime links Foundation's ICU with all of its data (34 MB of locales,
collation, converters, time zones). The daemon reads a few items of it; `make deb` links a
package of those items instead (packaging/icu-subset.sh). Debian's icupkg cannot do this: it
refuses packages of newer ICU versions with more item names than its own.

usage: icu-data.py list PACKAGE.dat
           prints "size name" for every item
       icu-data.py subset PACKAGE.dat ITEMS OUT.dat
           writes OUT.dat with the items named in the file ITEMS (one a line, as `list` prints
           them without the package's prefix, e.g. "uts46.nrm"; "#" starts a comment);
           an item missing from PACKAGE.dat is an error

Layout (ICU's ucmndata.h): a data header (its size in the first two bytes), then the table of
contents: an item count and, per item, the offsets of its name and its data from the table's
start, sorted by name (ICU searches it by bisection); items start 16-byte aligned.
"""
import struct
import sys


def fail(message):
    print(f"icu-data: {message}", file=sys.stderr)
    sys.exit(2)


def read_package(path):
    data = open(path, "rb").read()
    if len(data) < 32:
        fail(f"{path}: too short for an ICU data package")
    header_size, magic1, magic2 = struct.unpack_from("<HBB", data, 0)
    is_big_endian, charset_family = data[8], data[9]
    if (magic1, magic2) != (0xDA, 0x27) or data[12:16] != b"CmnD":
        fail(f"{path}: not an ICU common data package (no CmnD header)")
    if is_big_endian or charset_family:
        fail(f"{path}: a big-endian or EBCDIC package; only little-endian ASCII ones are handled")
    toc = header_size
    (count,) = struct.unpack_from("<I", data, toc)
    entries = [struct.unpack_from("<II", data, toc + 4 + 8 * i) for i in range(count)]
    items = []
    for index, (name_offset, data_offset) in enumerate(entries):
        start = toc + name_offset
        name = data[start : data.index(b"\0", start)].decode("ascii")
        end = toc + entries[index + 1][1] if index + 1 < count else len(data)
        items.append((name, data[toc + data_offset : end]))
    return data[:header_size], items


def write_package(header, items, path):
    items = sorted(items, key=lambda item: item[0].encode("ascii"))
    names = b"".join(name.encode("ascii") + b"\0" for name, _ in items)
    table_size = 4 + 8 * len(items)
    offset = table_size + len(names)
    offset += -offset % 16
    entries, body = [], bytearray()
    name_offset = table_size
    for name, blob in items:
        entries.append(struct.pack("<II", name_offset, offset + len(body)))
        name_offset += len(name) + 1
        body += blob
        body += b"\0" * (-len(body) % 16)
    table = struct.pack("<I", len(items)) + b"".join(entries) + names
    table += b"\xaa" * (-len(table) % 16)  # the padding ICU's own pkgdata writes
    with open(path, "wb") as out:
        out.write(header + table + body)


def main(argv):
    if len(argv) == 3 and argv[1] == "list":
        _, items = read_package(argv[2])
        for name, blob in items:
            print(len(blob), name.split("/", 1)[1])
    elif len(argv) == 5 and argv[1] == "subset":
        header, items = read_package(argv[2])
        prefix = items[0][0].split("/", 1)[0] + "/" if items else ""
        by_name = dict(items)
        wanted = []
        for line in open(argv[3]):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if prefix + name not in by_name:
                fail(f"{argv[3]}: {name} is not in {argv[2]} (another ICU version? list it with: {argv[0]} list {argv[2]})")
            wanted.append((prefix + name, by_name[prefix + name]))
        write_package(header, wanted, argv[4])
    else:
        fail(__doc__.split("\n\n")[2].strip())


if __name__ == "__main__":
    main(sys.argv)
