# dingstream: `make run` tries it against the built-in simulator, `make test` runs every test.
SWIFT ?= swift
SHELL := /bin/bash
BUILD_FLAGS ?=
BIN := .build/debug/dingstream
APT_PACKAGES := libsqlite3-dev sqlite3 pkg-config openssl systemd procps util-linux curl binutils dpkg postgresql chromium chromium-driver python3

.PHONY: all deps build build-tests test unit-test system-test soak soak-check fuzz tsan asan run say bench release symbol-order deb install clean

all: build

# Installs what the build and the tests need; a no-op when everything is there.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

build-tests: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)

# Serial: suites that run spools and handler processes at once starve the 2-core machine.
# The failures are printed again at the end, where a CI log's tail shows them.
UNIT_LOG := .build/unit-test.log
unit-test: build-tests
	@set -o pipefail; $(SWIFT) test --skip-build --no-parallel $(BUILD_FLAGS) 2>&1 | tee $(UNIT_LOG) || { \
	  echo; echo "unit tests failed; the failures (whole log: $(UNIT_LOG)):"; \
	  grep -E -A3 '✘|error:' $(UNIT_LOG) | grep -v -E '^(◇|✔) |^↳ ///' | tail -n 80; \
	  if grep -q -E 'Fatal error|Backtracing from' $(UNIT_LOG); then \
	    echo; echo "the test process crashed; tests started and not finished then:"; \
	    awk '/^◇ Test .*\(.*\) started/ { running[$$3] = 1 } /^(✔|✘) Test / { delete running[$$3] } END { for (t in running) print "  " t }' $(UNIT_LOG); \
	    echo "the crash and the crashed thread's frames:"; \
	    grep -E -A80 -m1 'Fatal error|Backtracing from' $(UNIT_LOG) | grep -E 'Fatal error|crashed|^ *[0-9]+ ' | head -n 40; \
	  fi; \
	  exit 1; }

# Boots a real systemd in its own PID and mount namespace and runs the daemon under it
# (root only; skipped with a note otherwise).
system-test: build-tests
	Tests/system/systemd-test.sh $(BIN) .build/debug/dingstreamPackageTests.xctest

test: build-tests
	$(MAKE) --no-print-directory unit-test
	$(MAKE) --no-print-directory system-test
	$(MAKE) --no-print-directory soak-check
	$(MAKE) --no-print-directory deb

# A compressed day against the simulator: steady load, sockets rotated every few seconds, random
# drops and black holes, a SIGHUP a minute; figures at the start and the end (see README, "Soak").
# SOAK_MINUTES sets its length, SOAK_BIN the binary (e.g. .build/release/dingstream).
SOAK_MINUTES ?= 10
SOAK_BIN ?= $(BIN)
soak: build
	Tests/soak/soak.py --binary $(SOAK_BIN) --minutes $(SOAK_MINUTES) --check

# The one-minute soak of `make test`: fails on a lost or twice-handled message, an unclean stop,
# or growth beyond the tolerances stated in Tests/soak/soak.py.
soak-check: build
	Tests/soak/soak.py --binary $(SOAK_BIN) --minutes 1 --check

# libFuzzer targets for the untrusted inputs, FUZZ_SECONDS each (see README, "Fuzzing").
FUZZ_SECONDS ?= 60
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) Fuzz/fuzz.sh $(FUZZ_TARGETS)

# The test suites under ThreadSanitizer / AddressSanitizer, each in a build folder of its own so
# that the ordinary build stays as it is. SANITIZE_FILTER narrows them (a regex of suites).
SANITIZE_FILTER ?=
tsan: deps
	TSAN_OPTIONS="suppressions=$(CURDIR)/Tests/sanitizers/tsan.supp $(TSAN_OPTIONS)" \
	  $(SWIFT) test --sanitize=thread --scratch-path .build/tsan --no-parallel $(if $(SANITIZE_FILTER),--filter '$(SANITIZE_FILTER)')

asan: deps
	ASAN_OPTIONS="detect_leaks=0 $(ASAN_OPTIONS)" \
	  $(SWIFT) test --sanitize=address --scratch-path .build/asan --no-parallel $(if $(SANITIZE_FILTER),--filter '$(SANITIZE_FILTER)')

run: build
	$(BIN) sandbox

# From a second terminal while `make run` is running.
say:
	$(BIN) sandbox say "$(or $(TEXT),hello)"

# Durable ingest against the simulator, side by side with the official Python SDK when python3
# and PyPI are there (the SDK goes into a venv under .build; without it the peer column stays empty).
BENCH_VENV := .build/bench-venv
# Options for dingstream-bench, e.g. BENCH_ARGS="--sqlite no" for the cluster row alone,
# BENCH_ARGS="--replies only" for the message-to-reply row alone (HTTP handler, script handler, SDK).
BENCH_ARGS ?=
# The daemon is the binary that ships (make release); the bench tool is built with the same
# flags, so that the two builds share their modules instead of recompiling each other's.
bench: release
	@$(call release_build,dingstream-bench)
	@peer=; \
	if ! command -v python3 >/dev/null 2>&1; then \
	  echo "bench: no peer comparison: python3 not found"; \
	elif $(BENCH_VENV)/bin/python -c 'import dingtalk_stream' >/dev/null 2>&1; then peer=yes; \
	elif python3 -m venv $(BENCH_VENV) >/dev/null 2>&1 && \
	     $(BENCH_VENV)/bin/pip install -q --timeout 20 dingtalk-stream >/dev/null 2>&1; then peer=yes; \
	else echo "bench: no peer comparison: could not install dingtalk-stream from PyPI into $(BENCH_VENV)"; fi; \
	if [ -n "$$peer" ]; then \
	  .build/release/dingstream-bench $(BENCH_ARGS) --peer "$(BENCH_VENV)/bin/python Benchmarks/python_sdk_peer.py" \
	    --peer-name "python sdk $$($(BENCH_VENV)/bin/python -c 'from dingtalk_stream.version import VERSION_STRING as v; print(v)')"; \
	else .build/release/dingstream-bench $(BENCH_ARGS); fi

# The daemon as it ships (make deb, make install, make bench): a release build with the Swift
# runtime linked in (runs without a toolchain). Link options keep the binary small (README,
# "Install it"): ICU's data cut to the items the daemon reads (packaging/icu-subset.sh) in place
# of the toolchain's 34 MB; no dynamic symbol table for every Swift symbol (a static binary loads
# no plugins that would look them up); and the toolchain's lld, whose packed relative relocations
# (glibc 2.36, Debian 12) take 30 KB where gold's take 3 MB, all read and written at every start.
# libstdc++ comes from its archive (packaging/static-libstdcxx.sh): only what is called, not the
# 1.4 MiB the shared library kept mapped.
RELEASE_BIN := .build/release/dingstream
# Every function in a section of its own, so that the linker drops what nothing calls and lays
# out first, side by side, the functions packaging/symbol-order.txt lists: those the daemon runs
# to start, keep its sockets and handle a message (make symbol-order). Its code pages in memory
# are then few, since the kernel maps 64 KiB around every page a process runs.
# No unwind tables (packaging/no-unwind-tables.ld, 6.5 MB): nothing unwinds through the daemon's
# frames. Swift errors are return values; no linked C++ code catches by type, so a C++ exception
# ends in std::terminate with or without them; the one unwind that happens, pthread_exit in
# dispatch_main at start, stops at the first frame without a table, as glibc intends; crash
# reports (SWIFT_BACKTRACE) walk the frame pointers. Lost: the frame list in the runtime's report
# of an exclusivity violation (README, "Install it").
# The compiler's private functions, which have no symbol the order file could name, side by side
# just before the ordered ones (packaging/private-functions.ld).
release_build = link_icu_data=$$(SWIFT=$(SWIFT) packaging/icu-subset.sh .build/icu-data) && \
	link_libstdcxx=$$(packaging/static-libstdcxx.sh .build/static-libstdcxx) && set -x && \
	$(SWIFT) build -c release --product $(1) --static-swift-stdlib $$link_icu_data $$link_libstdcxx -Xlinker --no-export-dynamic \
	  -Xswiftc -use-ld=lld -Xlinker -z -Xlinker pack-relative-relocs \
	  -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections -Xcc -fdata-sections \
	  -Xlinker --symbol-ordering-file=$(CURDIR)/packaging/symbol-order.txt -Xlinker --no-warn-symbol-ordering \
	  -Xlinker -T -Xlinker $(CURDIR)/packaging/no-unwind-tables.ld -Xlinker -T -Xlinker $(CURDIR)/packaging/private-functions.ld $(BUILD_FLAGS)
release: deps
	@$(call release_build,dingstream)
	@symbols=$$(nm -S $(RELEASE_BIN) | awk '$$4 ~ /^(__wrap_)?icudt[0-9]+_dat$$/ {print $$4 "=0x" $$2}'); \
	case "$$symbols" in __wrap_icudt*_dat=0x*) ;; *) false ;; esac && [ "$$(echo "$$symbols" | wc -l)" = 1 ] || { \
	  echo "release: $(RELEASE_BIN) does not hold the cut ICU data (packaging/icu-subset.sh) alone, but: $${symbols:-no ICU data}" >&2; exit 2; }
	@! readelf -SW $(RELEASE_BIN) | grep -q -E ' \.(eh_frame|gcc_except_table)' || { \
	  echo "release: $(RELEASE_BIN) has unwind tables: the linker did not apply packaging/no-unwind-tables.ld" >&2; exit 2; }
	@readelf -SW $(RELEASE_BIN) | grep -q ' \.text\.private ' || { \
	  echo "release: $(RELEASE_BIN) has no .text.private: the linker did not apply packaging/private-functions.ld" >&2; exit 2; }

# Writes packaging/symbol-order.txt anew from two runs of the release binary, under valgrind and
# natively under perf (packaging/symbol-order.sh; apt-get install valgrind linux-perf), then links
# the binary with it.
symbol-order: release
	packaging/symbol-order.sh $(RELEASE_BIN) packaging/symbol-order.txt
	rm -f $(RELEASE_BIN)
	@$(call release_build,dingstream)

# The Debian package of that binary: .build/deb/dingstream_<version>_<arch>.deb, for
# `apt install ./…deb`. packaging/check-deb.sh then runs the packaged binary against its
# simulator, end to end.
deb: release
	@deb=$$(packaging/build-deb.sh $(RELEASE_BIN) .build/deb) && \
	echo "$$deb: $$(stat -c %s "$$deb") bytes, binary $$(dpkg-deb --fsys-tarfile "$$deb" | tar -xO ./usr/bin/dingstream | wc -c) bytes stripped" && \
	packaging/check-deb.sh "$$deb"

# A release build installed as a package would: `sudo make install`, then see docs/systemd.md.
# DESTDIR stages it elsewhere; an existing /etc/dingstream/dingstream.toml is never overwritten.
PREFIX ?= /usr
DESTDIR ?=
install: release
	packaging/stage.sh $(RELEASE_BIN) "$(DESTDIR)" $(PREFIX)
	@if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers dingstream.conf && systemd-tmpfiles --create dingstream.conf && \
	  chgrp dingstream /etc/dingstream/dingstream.toml && (systemctl daemon-reload 2>/dev/null || true); \
	  echo "installed; next: put the credentials in /etc/dingstream/dingstream.toml (see docs/systemd.md), then systemctl enable --now dingstream"; \
	fi

clean:
	rm -rf .build
