#!/bin/sh
# Installs what building and testing kvmbox needs on a Debian machine, as
# root. Idempotent and quick when everything is present: it asks dpkg and
# rustup first and only calls apt-get for what is missing.
set -eu

# Build: musl-gcc for ring's C parts; the aarch64 cross compiler and
# qemu-user-static for the aarch64 build and its smoke test.
# Tests and benchmarks: the real peers (QEMU, apparmor_parser, lxc, openssl,
# libvirt), busybox-static for guest initramfs images, mmdebstrap and
# e2fsprogs for the Debian guest's root disk, file and time.
PACKAGES="curl musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
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

# The toolchain and targets are pinned in rust-toolchain.toml; rustup adds
# what is missing.
installed=$(rustup target list --installed 2>/dev/null || true)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    case "$installed" in
        *"$t"*) ;;
        *) rustup target add "$t" ;;
    esac
done
