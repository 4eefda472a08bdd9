#!/usr/bin/env bash
# Builds the Debian package of dingstream from a built binary.
#
# usage: packaging/build-deb.sh path/to/dingstream OUTDIR [--local]
#   Writes OUTDIR/dingstream_<version>_<arch>.deb and prints its path.
#   Depends: lists the Debian packages of the libraries the binary links directly. A library no
#   package owns (the Swift runtime under a toolchain) makes the package useless elsewhere, so it
#   is refused, unless --local: a package for this machine only (the system test), which also
#   compresses fast rather than small.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
usage="usage: $0 path/to/dingstream OUTDIR [--local]"
bin=$(realpath "${1:?$usage}")
out=${2:?$usage}
local_only=false
[[ ${3:-} == --local ]] && local_only=true

for tool in dpkg-deb dpkg-query readelf ldd strip; do
    command -v "$tool" >/dev/null || { echo "build-deb: $tool not found (apt-get install dpkg binutils)" >&2; exit 2; }
done
version=$("$bin" --version | awk '{print $NF}')
# Debian's usual variables name who built it; without them the package says it was built locally.
maintainer="${DEBFULLNAME:-dingstream maintainers} <${DEBEMAIL:-dingstream@localhost}>"
arch=$(dpkg --print-architecture)

# --- Depends from the libraries the binary needs directly ------------------------------------
declare -A packages=()
unpackaged=()
mapfile -t needed < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
resolved=$(ldd "$bin")
for lib in "${needed[@]}"; do
    # "libx.so => /path (addr)", or "/path/ld-linux.so (addr)" for the dynamic loader.
    path=$(awk -v lib="$lib" '$1 == lib && $2 == "=>" {print $3} $1 ~ "/" lib "$" {print $1}' <<< "$resolved" | head -n 1)
    [[ -n $path ]] || { echo "build-deb: $lib, needed by $bin, is not found by ldd" >&2; exit 2; }
    owner=""
    # With merged /usr, dpkg may know the file under /lib or /usr/lib.
    for candidate in "$path" "$(realpath "$path")" "/usr${path#/usr}" "${path#/usr}"; do
        owner=$(dpkg-query -S "$candidate" 2>/dev/null | head -n 1 | cut -d: -f1) && [[ -n $owner ]] && break
    done
    if [[ -n $owner ]]; then packages[$owner]=1; else unpackaged+=("$path"); fi
done
if ((${#unpackaged[@]})) && ! $local_only; then
    echo "build-deb: $bin links libraries no Debian package provides:" >&2
    printf '  %s\n' "${unpackaged[@]}" >&2
    echo "build-deb: build it with --static-swift-stdlib (make deb does) so the package runs without a Swift toolchain" >&2
    exit 2
fi
depends=$(printf '%s\n' "${!packages[@]}" systemd | sort -u | paste -sd, | sed 's/,/, /g')

# --- the tree ---------------------------------------------------------------------------------
stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
if command -v groff >/dev/null; then
    warnings=$(groff -man -ww -z "$root/docs/dingstream.8" 2>&1)
    [[ -z $warnings ]] || { echo "build-deb: docs/dingstream.8 has roff warnings:" >&2; echo "$warnings" >&2; exit 2; }
fi
"$here/stage.sh" "$bin" "$stage" /usr >/dev/null
# Symbols are half the size of a static Swift binary; a crash report still shows addresses.
$local_only || strip --strip-unneeded "$stage/usr/bin/dingstream"
# 0644 as policy wants; postinst makes it 0640 root:dingstream (it is meant to hold secrets).
chmod 0644 "$stage/etc/dingstream/dingstream.toml"

# A native package's changelog: one entry for the version being built.
{
    echo "dingstream ($version) unstable; urgency=medium"
    echo
    echo "  * Built from $(git -C "$root" describe --always --dirty 2>/dev/null || echo "a source tree without git")."
    echo
    echo " -- $maintainer  $(date -R ${SOURCE_DATE_EPOCH:+-d @$SOURCE_DATE_EPOCH})"
} | gzip -9n > "$stage/usr/share/doc/dingstream/changelog.gz"

install -d -m 0755 "$stage/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: dingstream
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Section: net
Priority: optional
Description: DingTalk Stream Mode bots for servers, as a systemd daemon
 dingstream connects DingTalk bots to handler programs over DingTalk's
 Stream Mode (an outbound WebSocket: no public URL, no inbound port).
 Every message is stored durably before it is acknowledged and reaches
 the handlers exactly once across crashes and socket rotations; replies
 go through the session webhook or, once it expired, the robot OpenAPI.
EOF
echo /etc/dingstream/dingstream.toml > "$stage/DEBIAN/conffiles"
install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$stage/DEBIAN/"

mkdir -p "$out"
deb="$out/dingstream_${version}_${arch}.deb"
if $local_only; then compression=(-Zgzip -z1); else compression=(-Zxz); fi
dpkg-deb --root-owner-group "${compression[@]}" --build "$stage" "$deb" >/dev/null
echo "$deb"
