#!/bin/sh
# Installs what building and testing kvmbox needs on a Debian machine, as
# root. Idempotent and quick when everything is present: it asks dpkg and
# rustup first and only calls apt-get for what is missing.
set -eu

# Build: musl-gcc for ring's C parts; the aarch64, armv7 and riscv64 cross
# compilers (with their C headers) and qemu-user-static for the cross builds
# and their smoke test.
# Tests and benchmarks: the real peers (QEMU, apparmor_parser, lxc, openssl,
# libvirt), busybox-static for guest initramfs images, mmdebstrap and
# e2fsprogs for the Debian guest's root disk, file and time.
PACKAGES="curl musl-tools qemu-user-static
gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
qemu-system-x86 qemu-utils busybox-static apparmor lxd-client openssl
libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients file time cpio
iproute2 xz-utils zstd util-linux passwd mmdebstrap e2fsprogs"

missing_packages() {
    for p in $PACKAGES; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || printf ' %s' "$p"
    done
}

# Two rounds: installing one package can remove another (Debian's QEMU 7.2
# system emulator replaces a newer qemu-utils from backports, taking
# qemu-img with it), so what is missing is asked again after each round.
for round in 1 2; do
    missing=$(missing_packages)
    [ -n "$missing" ] || break
    if [ "$(id -u)" != 0 ]; then
        echo "deps: missing Debian packages:$missing (run as root to install them)" >&2
        exit 1
    fi
    echo "deps: installing$missing"
    [ "$round" = 2 ] || apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
done
missing=$(missing_packages)
if [ -n "$missing" ]; then
    echo "deps: still missing after installing:$missing" >&2
    exit 1
fi

# Tests, clippy and rustfmt use the stable toolchain of rust-toolchain.toml
# (rustup installs what it names, quickly when it is there); the release
# binaries the nightly and zig pinned in cross/release.env (why: see there).
cd "$(dirname "$0")/.."
# Quiet when it has nothing to do; said again, loudly, when it fails.
rustup toolchain install >/dev/null 2>&1 || rustup toolchain install
. cross/release.env
sysroot=$(rustup run "$RELEASE_TOOLCHAIN" rustc --print sysroot 2>/dev/null || true)
if [ -z "$sysroot" ] || [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
    echo "deps: installing Rust $RELEASE_TOOLCHAIN with its source"
    rustup toolchain install "$RELEASE_TOOLCHAIN" --profile minimal --component rust-src
fi

zig_dir=$KVMBOX_TOOLS/ziglang-$ZIG_VERSION
if [ ! -x "$zig_dir/ziglang/zig" ]; then
    echo "deps: installing zig $ZIG_VERSION into $zig_dir"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    printf 'ziglang==%s --hash=sha256:%s\n' "$ZIG_VERSION" "$ZIG_SHA256" >"$tmp/requirements.txt"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps --require-hashes --target "$tmp/zig" -r "$tmp/requirements.txt"
    mkdir -p "$KVMBOX_TOOLS"
    # Into place whole, so that an interrupted install is not taken as done.
    mv "$tmp/zig" "$zig_dir"
fi

# The conformance test's Ansible (qemu-tests/ansible/versions.env).
. qemu-tests/ansible/versions.env
if [ ! -x "$ANSIBLE_DIR/bin/ansible-playbook" ]; then
    echo "deps: installing ansible-core $ANSIBLE_CORE_VERSION and community.general into $ANSIBLE_DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target "$tmp/ansible" "ansible-core==$ANSIBLE_CORE_VERSION"
    printf 'ansible==%s --hash=sha256:%s\n' "$ANSIBLE_VERSION" "$ANSIBLE_SHA256" >"$tmp/requirements.txt"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --dest "$tmp/wheel" -r "$tmp/requirements.txt"
    # Only the one collection of the 50 MB package is needed.
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist()
    if n.startswith("ansible_collections/community/general/")])' \
        "$tmp/wheel/ansible-$ANSIBLE_VERSION-py3-none-any.whl" "$tmp/ansible"
    mkdir -p "$KVMBOX_TOOLS"
    mv "$tmp/ansible" "$ANSIBLE_DIR"
fi
