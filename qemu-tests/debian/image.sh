#!/bin/sh
# Builds a Debian 12 (bookworm) guest that runs real software — systemd,
# qemu-guest-agent, cloud-init, OpenSSH — from Debian's packages, into
# qemu-tests/cache/debian/ (git-ignored):
#   root.qcow2   the root file system (ext4 labelled kvmbox-debian, 2 GiB
#                virtual, about 100 MiB on disk)
#   vmlinuz      Debian's cloud kernel, taken out of the root's /boot
#   initrd.img   its initramfs-tools initrd (finds the root by label)
#   cmdline      the kernel command line that boots it on a serial console
#   packages     the package versions it holds
# Built once: the cache is keyed on the content of this file (which holds
# the package list) and of customize.sh, so editing either rebuilds, and
# `rm -rf qemu-tests/cache/debian` forces it. Needs root (mmdebstrap's
# unshare mode as root keeps file ownership right and mounts nothing on the
# host) and Debian's mirror. Prints the directory.
# Usage: image.sh [CACHE-DIR]      Env: DEBIAN_MIRROR (default deb.debian.org)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-$here/../cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
out=$cache/debian
key=$(cat "$here/image.sh" "$here/customize.sh" | sha256sum | cut -c1-16)
fresh() { [ "$(cat "$out/key" 2>/dev/null)" = "$key" ] && [ -s "$out/root.qcow2" ]; }
if fresh; then echo "$out"; exit 0; fi

[ "$(id -u)" -eq 0 ] || { echo "debian image: building it needs root" >&2; exit 1; }
for p in mmdebstrap mkfs.ext4 qemu-img flock; do
    command -v "$p" >/dev/null || { echo "debian image: $p is not installed (scripts/deps.sh)" >&2; exit 1; }
done
# One build at a time; a second caller waits and then finds it done.
exec 9>"$cache/debian.lock"
flock 9
if fresh; then echo "$out"; exit 0; fi

# What later tests need in the guest: an init and udev, the agent QEMU
# talks to, cloud-init for NoCloud provisioning, a network tool and sshd.
# systemd-resolved and e2fsprogs because cloud-init's network and resizefs
# steps restart the one and run the other's resize2fs, and fail its job
# without them.
packages="linux-image-cloud-amd64 systemd-sysv udev dbus qemu-guest-agent
cloud-init iproute2 openssh-server systemd-resolved e2fsprogs"
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
label=kvmbox-debian
size=2G
# Dates that maintainer scripts write (password ages in /etc/shadow, say)
# are this one, not the build day's. The package versions are whatever the
# mirror has: bookworm's change only at point releases.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

work=$(mktemp -d "$cache/debian.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
root=$work/root
mkdir "$root"

# No documentation, manual pages, translations or locale sources. /usr is
# merged by mmdebstrap's hook rather than by the usrmerge package, which
# would bring Perl.
mmdebstrap --mode=unshare --variant=apt --format=directory --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/i18n/*' \
    --include="$(echo $packages | tr ' ' ,)" \
    --customize-hook="sh $here/customize.sh \"\$1\" $label" \
    --customize-hook="chroot \"\$1\" dpkg-query -W -f='\${Package} \${Version}\n' >$work/packages" \
    "$suite" "$root" "$mirror"

# The kernel and initrd boot it from outside (QEMU's -kernel/-initrd).
kver=$(ls "$root/lib/modules" | head -n1)
[ -s "$root/boot/vmlinuz-$kver" ] && [ -s "$root/boot/initrd.img-$kver" ] ||
    { echo "debian image: no kernel or initrd for $kver in /boot" >&2; exit 1; }
mv "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
mv "$root/boot/initrd.img-$kver" "$work/initrd.img"
echo "console=ttyS0 root=LABEL=$label rw" >"$work/cmdline"

# A sparse raw ext4 made from the directory (no mount), then a qcow2
# compressed with zstd: a third of the size, and QEMU decompresses on the
# host, outside the emulated CPU.
mkfs.ext4 -q -L "$label" -U 6b766d62-6f78-4465-8269-616e00000001 \
    -E root_owner=0:0,hash_seed=6b766d62-6f78-4465-8269-616e00000001 \
    -d "$root" "$work/root.raw" "$size"
qemu-img convert -q -c -o compression_type=zstd -f raw -O qcow2 "$work/root.raw" "$work/root.qcow2"
rm -rf "$work/root.raw" "$root"
chmod 644 "$work"/*
echo "$key" >"$work/key"

rm -rf "$out"
mv "$work" "$out"
trap - EXIT
echo "$out"
