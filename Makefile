# kvmbox: one static executable. The README's two commands are `make run`
# and `make test`; both install what they need first (scripts/deps.sh).

include cross/release.env

ARCH      ?= x86_64
CARGO     ?= cargo
PREFIX    ?= /usr/local
DESTDIR   ?=
# Where `make install` puts the service definitions (dist/): systemd looks
# in /usr/lib/systemd/system and /usr/local/lib/systemd/system alike.
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR     ?= /etc
APPLETS   := kvmbox kvmbox-aa-helper kvmbox-cert kvmboxd

# Every release binary is a static musl executable; Rust's names for the
# targets do not follow one pattern.
TARGET_x86_64  := x86_64-unknown-linux-musl
TARGET_aarch64 := aarch64-unknown-linux-musl
TARGET_armv7   := armv7-unknown-linux-musleabihf
TARGET_riscv64 := riscv64gc-unknown-linux-musl
CROSS_ARCHES   := aarch64 armv7 riscv64
TARGET := $(TARGET_$(ARCH))
ifeq ($(TARGET),)
$(error unknown ARCH=$(ARCH): use x86_64 or one of $(CROSS_ARCHES))
endif

# The release toolchain and link driver (cross/release.env, cross/zig-cc).
# zig keeps the musl runtime it builds per target under target/.
export ZIG ?= $(KVMBOX_TOOLS)/ziglang-$(ZIG_VERSION)/ziglang/zig
export ZIG_GLOBAL_CACHE_DIR ?= $(CURDIR)/target/zig-cache
export ZIG_LOCAL_CACHE_DIR ?= $(ZIG_GLOBAL_CACHE_DIR)

ifeq ($(ARCH),x86_64)
OUT := build/kvmbox
else
OUT := build/$(ARCH)/kvmbox
endif

# Rebuild when any source changes; cargo itself decides what is stale.
SOURCES := Cargo.toml Cargo.lock $(wildcard cross/*) \
           $(shell find src aa applets profiles -type f 2>/dev/null)

.PHONY: all cross deps run test check unit shtest qemu-test bench install clean fuzz soak

all: $(OUT)

$(OUT): $(SOURCES)
	RUSTUP_TOOLCHAIN=$(RELEASE_TOOLCHAIN) $(CARGO) build --release --locked \
		--target $(TARGET) --config cross/release.toml --config cross/$(ARCH).toml
	@mkdir -p $(dir $@)
	@# A rename, not an overwrite: a running daemon keeps its old file.
	cp target/$(TARGET)/release/kvmbox $@.tmp && mv -f $@.tmp $@

# `make cross ARCH=aarch64|armv7|riscv64` → build/ARCH/kvmbox
cross:
	$(MAKE) ARCH=$(ARCH) all

deps:
	@sh scripts/deps.sh

# Builds, prepares a demo guest and starts the daemon in the foreground on a
# scratch state dir, printing the command that boots the guest.
run: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/run.sh

# Everything CI runs: style, lints, unit and integration tests, the shell
# tests against the static binaries and real peers, and the guest tests.
test: deps
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory all
	@for a in $(CROSS_ARCHES); do $(MAKE) --no-print-directory all ARCH=$$a || exit 1; done
	@# This run's scratch files all go under one directory, and its processes
	@# carry a marker in their environment: the closing check finds what the
	@# run left running by either, and never another run's processes.
	@run=$$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n'); \
	dir=$$(mktemp -d "$${TMPDIR:-/tmp}/kvmbox-test.XXXXXX") || exit 1; \
	chmod 711 "$$dir"; \
	KVMBOX_TEST_RUN=$$run TMPDIR=$$dir $(MAKE) --no-print-directory unit shtest; rc=$$?; \
	KVMBOX_TEST_RUN=$$run sh scripts/strays.sh "$$dir" || rc=1; \
	rm -rf "$$dir"; exit $$rc

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	@# The fuzz targets' entry points (src/fuzzing.rs) as `make fuzz`
	@# builds them, in a directory of their own so that the flag does not
	@# rebuild the main tree.
	RUSTFLAGS="--cfg fuzzing" CARGO_TARGET_DIR=target/fuzzing-check $(CARGO) check --locked --lib

# Integration tests drive the shipped static binary, not a debug build. The
# guest assets are built first, so the guest tests (qemu-tests/vm.rs) run
# here and must not skip.
unit:
	@sh qemu-tests/assets.sh >/dev/null
	KVMBOX_BIN=$(CURDIR)/build/kvmbox KVMBOX_REQUIRE_GUESTS=1 $(CARGO) test --locked

# The shell tests and the guest tests, under one closing count.
shtest:
	@KVMBOX_BIN=$(CURDIR)/build/kvmbox sh tests/sh/run.sh tests/sh qemu-tests

qemu-test:
	@sh qemu-tests/assets.sh >/dev/null
	KVMBOX_BIN=$(CURDIR)/build/kvmbox KVMBOX_REQUIRE_GUESTS=1 $(CARGO) test --locked --test vm
	@KVMBOX_BIN=$(CURDIR)/build/kvmbox sh qemu-tests/run.sh

# An example appliance in build/appliance/: Debian's cloud kernel and an
# initramfs with busybox, kvmbox, QEMU and a preseed (appliance/build.sh).
# x86_64 only: it carries this host's QEMU and kernel.
.PHONY: appliance
appliance: deps
	@[ "$(ARCH)" = x86_64 ] || { echo "make appliance: x86_64 only (ARCH=$(ARCH))" >&2; exit 2; }
	@$(MAKE) --no-print-directory all
	@sh appliance/build.sh $(OUT) build/appliance
	@echo "build/appliance/: vmlinuz, initrd.gz; boot it with:"
	@echo "  qemu-system-x86_64 -accel kvm -accel tcg -m 1536 -smp 2 -nographic \\"
	@echo "    -kernel build/appliance/vmlinuz -initrd build/appliance/initrd.gz -append console=ttyS0 \\"
	@echo "    -netdev user,id=n0,hostfwd=tcp:127.0.0.1:8443-:8443 -device virtio-net-pci,netdev=n0"
	@echo "then: kvmbox remote add appliance 127.0.0.1:8443 --password-file build/appliance/trust-password \\"
	@echo "        --fingerprint $$(cat build/appliance/server.fingerprint)"

# Every fuzz target of fuzz/ for FUZZ_SECONDS each (scripts/fuzz.sh).
FUZZ_SECONDS ?= 600
fuzz: deps
	@FUZZ_SECONDS=$(FUZZ_SECONDS) sh scripts/fuzz.sh

# The fault tests at length: kvmboxd SIGKILLed during FAULT_ROUNDS changes
# (qemu-tests/test_crash.sh), then QEMU, the AppArmor helper and a full
# state disk failing, as `make test` runs them; the races on a caller's
# files (tests/host_files.rs) for RACE_ROUNDS rounds where `make test` runs
# 50; then the long load runs (bench/soak-load.sh), which must end clean.
FAULT_ROUNDS ?= 20
RACE_ROUNDS ?= 200
soak: deps
	@$(MAKE) --no-print-directory all
	@sh qemu-tests/assets.sh >/dev/null
	@run=$$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n'); \
	dir=$$(mktemp -d "$${TMPDIR:-/tmp}/kvmbox-soak.XXXXXX") || exit 1; \
	chmod 711 "$$dir"; rc=0; \
	for t in test_crash test_qemu_death test_aa_faults test_state_full; do \
		KVMBOX_TEST_RUN=$$run TMPDIR=$$dir FAULT_ROUNDS=$(FAULT_ROUNDS) TEST_FILTER=$$t \
		KVMBOX_BIN=$(CURDIR)/build/kvmbox sh tests/sh/run.sh tests/sh qemu-tests || rc=1; \
	done; \
	KVMBOX_TEST_RUN=$$run TMPDIR=$$dir KVMBOX_RACE_ROUNDS=$(RACE_ROUNDS) \
		KVMBOX_BIN=$(CURDIR)/build/kvmbox KVMBOX_REQUIRE_GUESTS=1 \
		$(CARGO) test --locked --test host_files || rc=1; \
	KVMBOX_TEST_RUN=$$run sh scripts/strays.sh "$$dir" || rc=1; \
	rm -rf "$$dir"; \
	KVMBOX_BIN=$(CURDIR)/build/kvmbox sh bench/soak-load.sh || rc=1; \
	exit $$rc

# One Markdown table (and build/bench.json); about 6 minutes on 2 quiet cores,
# most of it booting guests under TCG.
bench: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory all ARCH=aarch64
	@sh bench/run.sh

# The daemon and the AppArmor helper are hard links, not symlinks: AppArmor
# attaches a profile to the resolved path, so each needs a path of its own
# (profiles/usr.sbin.kvmboxd, profiles/usr.libexec.kvmbox-aa-helper; they
# name /usr, so install with PREFIX=/usr where AppArmor is enforced).
install: $(OUT)
	install -D -m 0755 $(OUT) $(DESTDIR)$(PREFIX)/bin/kvmbox
	ln -sf kvmbox $(DESTDIR)$(PREFIX)/bin/kvmbox-cert
	mkdir -p $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/libexec
	ln -f $(DESTDIR)$(PREFIX)/bin/kvmbox $(DESTDIR)$(PREFIX)/sbin/kvmboxd
	ln -f $(DESTDIR)$(PREFIX)/bin/kvmbox $(DESTDIR)$(PREFIX)/libexec/kvmbox-aa-helper
	install -D -m 0644 profiles/abstractions/kvmbox-qemu $(DESTDIR)/etc/apparmor.d/abstractions/kvmbox-qemu
	install -D -m 0644 profiles/usr.sbin.kvmboxd $(DESTDIR)/etc/apparmor.d/usr.sbin.kvmboxd
	install -D -m 0644 profiles/usr.libexec.kvmbox-aa-helper $(DESTDIR)/etc/apparmor.d/usr.libexec.kvmbox-aa-helper
	install -D -m 0644 profiles/TEMPLATE.qemu $(DESTDIR)/etc/apparmor.d/kvmbox/TEMPLATE.qemu
	@# The services of dist/, with the daemon's installed path filled in:
	@# a systemd unit, an OpenRC script and a runit (or busybox runsv)
	@# service directory. Installing them starts nothing.
	mkdir -p $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSCONFDIR)/init.d \
		$(DESTDIR)$(SYSCONFDIR)/sv/kvmboxd/log
	sed 's|@SBINDIR@|$(PREFIX)/sbin|g' dist/systemd/kvmboxd.service >$(DESTDIR)$(SYSTEMDUNITDIR)/kvmboxd.service
	sed 's|@SBINDIR@|$(PREFIX)/sbin|g' dist/openrc/kvmboxd >$(DESTDIR)$(SYSCONFDIR)/init.d/kvmboxd
	sed 's|@SBINDIR@|$(PREFIX)/sbin|g' dist/runit/kvmboxd/run >$(DESTDIR)$(SYSCONFDIR)/sv/kvmboxd/run
	cp dist/runit/kvmboxd/log/run $(DESTDIR)$(SYSCONFDIR)/sv/kvmboxd/log/run
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/kvmboxd.service
	chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/kvmboxd $(DESTDIR)$(SYSCONFDIR)/sv/kvmboxd/run \
		$(DESTDIR)$(SYSCONFDIR)/sv/kvmboxd/log/run

clean:
	rm -rf build target
