#!/usr/bin/env bash
# Makes the ICU data object that `make deb` links into the static binary in place of the
# toolchain's: the same ICU data package cut to the items in packaging/icu-data-items.
#
# usage: packaging/icu-subset.sh OUTDIR
#   Writes OUTDIR/icudata-<hash>.o (the hash of its contents, so that a changed item list
#   changes the link command and the binary is relinked) and prints the arguments that link it
#   in: -Xlinker --wrap=icudt<N>_dat -Xlinker OUTDIR/icudata-<hash>.o
#   SWIFT names the toolchain whose ICU is cut (default: swift on PATH), as in the Makefile.
#
# With --static-swift-stdlib, Foundation's ICU comes from the toolchain's lib_FoundationICU.a,
# whose member defining icudt<N>_dat holds ICU's whole data package (34 MB). The linker sees
# SwiftPM's -Xlinker arguments after that archive, so an object defining the same symbol would
# clash with the member rather than replace it; --wrap instead sends ICU's references to
# __wrap_icudt<N>_dat, which the object defines, and the member is never pulled in.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: $0 OUTDIR}
for tool in ar nm objcopy as python3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "icu-subset: $tool not found (apt-get install binutils python3)" >&2; exit 2; }
done

resources=$("${SWIFT:-swift}" -print-target-info | python3 -c 'import json, sys; print(json.load(sys.stdin)["paths"]["runtimeResourcePath"])')
archive=${resources}_static/linux/lib_FoundationICU.a
[[ -f $archive ]] || { echo "icu-subset: no $archive: the toolchain has no static Foundation" >&2; exit 2; }
# "archive:member:value size R icudtNN_dat" for the one member defining the data package.
read -r member symbol < <(nm -A -S --defined-only "$archive" 2>/dev/null |
    sed -n 's/^.*\.a:\([^:]*\):[0-9a-f]* [0-9a-f]* [RD] \(icudt[0-9]*_dat\)$/\1 \2/p') ||
    { echo "icu-subset: no icudt<N>_dat in $archive" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && ar x "$archive" "$member")
objcopy -O binary --only-section=.rodata "$work/$member" "$work/full.dat"
full_size=$((16#$(nm -S "$work/$member" | awk -v s="$symbol" '$4 == s {print $2}')))
[[ $(stat -c %s "$work/full.dat") == "$full_size" ]] ||
    { echo "icu-subset: .rodata of $member is not $symbol alone; cannot cut it" >&2; exit 2; }
"$here/icu-data.py" subset "$work/full.dat" "$here/icu-data-items" "$work/subset.dat"

mkdir -p "$out"
# Read-only like the original; 16-byte aligned, as the package aligns its items from its start.
cat > "$work/data.s" <<EOF
	.section .rodata.__wrap_$symbol,"a",@progbits
	.globl __wrap_$symbol
	.type __wrap_$symbol, @object
	.balign 16
__wrap_$symbol:
	.incbin "subset.dat"
	.size __wrap_$symbol, . - __wrap_$symbol
	.section .note.GNU-stack,"",@progbits
EOF
hash=$(cat "$work/data.s" "$work/subset.dat" | sha256sum | cut -c1-12)
object=$(realpath "$out")/icudata-$hash.o
if [[ ! -f $object ]]; then
    (cd "$work" && as -o data.o data.s)
    mv "$work/data.o" "$object"
fi
echo "-Xlinker --wrap=$symbol -Xlinker $object"
