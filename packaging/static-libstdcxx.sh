#!/usr/bin/env bash
# Prints the arguments with which `make release` links the C++ standard library (the Swift
# runtime, Foundation's ICU and BoringSSL use it) from libstdc++.a instead of libstdc++.so:
# -L of a folder that holds only libstdc++.a, searched before the compiler's own folders, so
# that the toolchain's -lstdc++ finds the archive. Only the members the binary calls come
# along (GCC builds libstdc++ with a section per function), and the daemon no longer maps
# the whole shared library nor resolves its symbols at every start (README, "Install it").
# GCC's runtime library exception allows this for any program.
#
# usage: packaging/static-libstdcxx.sh OUTDIR
set -euo pipefail

out=${1:?usage: $0 OUTDIR}
# The compiler that knows where GCC keeps it: CC, cc, or the Swift toolchain's clang (SWIFT, as
# in the Makefile), which is there whenever swift is.
toolchain_clang=$(dirname "$(realpath "$(command -v "${SWIFT:-swift}")" 2>/dev/null)")/clang
archive=""
for compiler in ${CC:-} cc "$toolchain_clang"; do
    command -v "$compiler" >/dev/null || continue
    archive=$("$compiler" -print-file-name=libstdc++.a) && [[ $archive == /* && -f $archive ]] && break
    archive=""
done
[[ -n $archive ]] || { echo "static-libstdcxx: none of ${CC:-} cc $toolchain_clang knows a libstdc++.a (apt-get install libstdc++-12-dev)" >&2; exit 2; }
mkdir -p "$out"
ln -sfn "$archive" "$out/libstdc++.a"
echo "-Xswiftc -L$(realpath "$out")"
