#!/usr/bin/env bash
# Puts dingstream's files where a system keeps them, under ROOT: `make install` (ROOT is
# $(DESTDIR) or /) and the Debian package's tree both come from here.
#
# usage: packaging/stage.sh path/to/dingstream ROOT PREFIX
#   An existing ROOT/etc/dingstream/dingstream.toml is kept; a new one is 0640.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
(($# == 3)) || { echo "usage: $0 path/to/dingstream ROOT PREFIX" >&2; exit 2; }
bin=$1
dest=${2%/}
usr=$dest$3

install -D -m 0755 "$bin" "$usr/bin/dingstream"
install -D -m 0644 "$root/systemd/dingstream.service" "$usr/lib/systemd/system/dingstream.service"
install -D -m 0644 "$root/systemd/dingstream.sysusers" "$usr/lib/sysusers.d/dingstream.conf"
install -D -m 0644 "$root/systemd/dingstream.tmpfiles" "$usr/lib/tmpfiles.d/dingstream.conf"
install -d -m 0755 "$usr/share/doc/dingstream/handlers"
install -m 0644 "$root"/etc/handlers/* "$usr/share/doc/dingstream/handlers/"
install -m 0644 "$root/README.md" "$root/docs/systemd.md" "$root/docs/spool-schema.md" "$root/docs/metrics.md" "$usr/share/doc/dingstream/"
install -d -m 0755 "$usr/share/doc/dingstream/examples"
install -m 0644 "$root/etc/prometheus/dingstream.rules.yml" "$root/etc/grafana/dingstream.json" "$usr/share/doc/dingstream/examples/"
install -m 0755 "$root/etc/http-handler-example.py" "$usr/share/doc/dingstream/examples/"
install -d -m 0755 "$usr/share/man/man8"
gzip -9n < "$root/docs/dingstream.8" > "$usr/share/man/man8/dingstream.8.gz"
install -d -m 0755 "$usr/share/bash-completion/completions" "$usr/share/zsh/vendor-completions"
# Sourced, not run: no #! line.
"$bin" --generate-completion-script bash | sed '1{/^#!/d}' > "$usr/share/bash-completion/completions/dingstream"
"$bin" --generate-completion-script zsh > "$usr/share/zsh/vendor-completions/_dingstream"
chmod 0644 "$usr/share/man/man8/dingstream.8.gz" "$usr/share/bash-completion/completions/dingstream" \
    "$usr/share/zsh/vendor-completions/_dingstream"

config=$dest/etc/dingstream/dingstream.toml
if [[ -e $config ]]; then
    echo "kept the existing $config"
else
    install -D -m 0640 "$root/etc/dingstream/dingstream.toml" "$config"
fi
