#!/bin/sh
# Builds the confinement guest: an initramfs for Debian's cloud kernel (which
# has AppArmor built in) holding busybox, apparmor_parser, qemu-system-x86_64
# with its firmware, kvmbox as `make install PREFIX=/usr` lays it out, the
# tiny inner guest of assets.sh, and init.sh as /init.
# Rebuilt on every call (a few seconds): it carries the binary under test.
# Usage: image.sh KVMBOX-BIN OUT-DIR   → OUT-DIR/vmlinuz, OUT-DIR/initrd.gz
set -eu
bin=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=$(sh "$here/../assets.sh" | tail -n 1)
for p in busybox apparmor_parser qemu-system-x86_64 qemu-img musl-gcc; do
    command -v "$p" >/dev/null || { echo "image: $p is not installed" >&2; exit 1; }
done
mkdir -p "$out"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root" # it becomes /, which the VMs' own uids traverse

# Programs with the shared libraries they load, at the paths ldd names.
copy_with_libs() {
    for f in "$@"; do
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
        for lib in $(ldd "$f" | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^\s*\(\/[^ ]*\) (.*/\1/p'); do
            [ -e "$root$lib" ] && continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
}
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp" "$root/run" "$root/srv/guest" "$root/etc" \
    "$root/var/lib"
cp "$(command -v busybox)" "$root/bin/busybox"
# QEMU loads TCG as a module (Debian builds it so).
copy_with_libs "$(command -v apparmor_parser)" "$(command -v qemu-system-x86_64)" "$(command -v qemu-img)" \
    /usr/lib/*/qemu/accel-tcg-x86_64.so
# QEMU's firmware and option ROMs (its /usr/share/qemu links into seabios).
mkdir -p "$root/usr/share"
cp -a /usr/share/qemu /usr/share/seabios "$root/usr/share/"
# The host's policy building blocks that the profiles include, then kvmbox
# installed over them as an administrator would.
mkdir -p "$root/etc/apparmor.d"
cp -a /etc/apparmor.d/abi /etc/apparmor.d/tunables /etc/apparmor.d/abstractions "$root/etc/apparmor.d/"
# parser.conf pins the feature set the policy is compiled for.
[ ! -d /etc/apparmor ] || cp -a /etc/apparmor "$root/etc/"
[ ! -d /usr/share/apparmor-features ] || cp -a /usr/share/apparmor-features "$root/usr/share/"
make -s -C "$repo" -o "$bin" install OUT="$bin" DESTDIR="$root" PREFIX=/usr >/dev/null
musl-gcc -static -Os -o "$root/usr/bin/uconnect" "$here/uconnect.c"

cp "$cache/vmlinuz" "$cache/initrd.gz" "$root/srv/guest/"
# KVM, for the daemon's accelerator probe: under TCG the guest's CPU has SVM,
# so /dev/kvm opens, but its vCPUs never run guest code (the case the probe
# is there to catch). Listed in load order; dpkg-deb -x ran no depmod.
kver=$(ls "$cache/kernel/lib/modules" | head -n1)
mkdir -p "$root/lib/modules"
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd; do
    cp "$cache/kernel/lib/modules/$kver/kernel/$m.ko" "$root/lib/modules/"
done
cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
# A stand-in secret, world-readable so that only AppArmor can refuse it.
printf 'root:$6$secret:19000:0:99999:7:::\n' >"$root/etc/shadow"
chmod 644 "$root/etc/shadow"

(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$out/initrd.gz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
cp "$cache/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
