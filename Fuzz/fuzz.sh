#!/usr/bin/env bash
# `make fuzz`: builds each libFuzzer target (swiftc -sanitize=fuzzer,address) from the sources it
# reads and runs it for FUZZ_SECONDS from the seeds in Fuzz/corpus/<target>. New inputs go to
# .build/fuzz/corpus/<target>, a crashing one to .build/fuzz/crash-<target>-*; the run fails then.
#   Fuzz/fuzz.sh [target…]     targets: frame config handler-reply database-url spool-entry
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFTC=${SWIFTC:-swiftc}
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
OUT=.build/fuzz
mkdir -p "$OUT"

# The sources of each target, compiled as one module with its harness (imports between the
# project's own modules are taken out, since they become one).
sources() {
    case $1 in
        frame) ls Sources/StreamProtocol/*.swift ;;
        config) echo Sources/DingStream/Config/TOMLDocument.swift Sources/DingStream/Config/DurationText.swift ;;
        handler-reply) echo Sources/Handlers/HandlerReply.swift ;;
        database-url) echo Sources/Spool/Cluster/DatabaseURL.swift ;;
        spool-entry) echo Sources/StreamProtocol/*.swift Sources/Spool/SpoolEntry.swift Sources/Spool/EntryName.swift Sources/Spool/SpoolError.swift ;;
        *) echo "fuzz: no target $1 (frame config handler-reply database-url spool-entry)" >&2; return 1 ;;
    esac
}

build() {
    local target=$1 src="$OUT/src/$1"
    rm -rf "$src" && mkdir -p "$src"
    for file in $(sources "$target") Fuzz/targets/"$target".swift; do
        sed -E '/^(@testable )?import (StreamProtocol|Spool|Handlers|DingStream)$/d' "$file" > "$src/$(basename "$file")"
    done
    $SWIFTC -O -assert-config Debug -g -sanitize=fuzzer,address -use-ld=lld -parse-as-library -module-name "Fuzz${target//-/}" "$src"/*.swift -o "$OUT/$target"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame config handler-reply database-url spool-entry)
summary=()
status=0
for target in "${targets[@]}"; do
    echo "fuzz: building $target"
    build "$target"
    mkdir -p "$OUT/corpus/$target"
    echo "fuzz: running $target for ${SECONDS_PER_TARGET}s"
    log="$OUT/$target.log"
    if SWIFT_BACKTRACE=enable=no "$OUT/$target" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -max_len=65536 \
        -artifact_prefix="$OUT/crash-$target-" "$OUT/corpus/$target" "Fuzz/corpus/$target" >"$log" 2>&1; then
        result=ok
    else
        crash=$(ls -t "$OUT"/crash-"$target"-* 2>/dev/null | head -n 1 || true)
        result="FAILED (log: $log${crash:+, input: $crash})"
        tail -n 30 "$log"
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    summary+=("$target: ${runs:-?} inputs in ${SECONDS_PER_TARGET}s, $result")
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $status
