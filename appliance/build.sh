#!/bin/sh
# Builds the example appliance: a bootable initramfs holding busybox
# (Debian's busybox-static), kvmbox with its applet symlinks, QEMU with its
# firmware, a tiny busybox guest to run, appliance/init as /init and a
# preseed document, beside the kernel it boots (Debian's cloud kernel, the
# one the guest tests use; qemu-tests/assets.sh fetches it).
#
# Usage: build.sh KVMBOX-BIN OUT-DIR. OUT-DIR gets
#   vmlinuz          the kernel
#   initrd.gz        the initramfs (newc cpio, gzip)
#   trust-password   core.trust_password, for `remote add`
#   server.crt, server.key, server.fingerprint
#                    the appliance's TLS identity, for pinning
#   preseed.json     the document the appliance applies at every boot
# The secrets are made once and kept: a rebuild keeps clients' pins and
# password valid. To choose the password, write it (letters, digits, . _ -)
# to OUT-DIR/trust-password before the first build. The initramfs carries
# both secrets: keep it as private as the key.
set -eu
bin=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
for p in busybox cpio gzip qemu-system-x86_64 ldd; do
    command -v "$p" >/dev/null || { echo "appliance: $p is not installed" >&2; exit 1; }
done
busybox=$(command -v busybox)
file -L "$busybox" 2>/dev/null | grep -q static || ldd "$busybox" 2>&1 | grep -q "not a dynamic" ||
    { echo "appliance: $busybox is not static; install busybox-static" >&2; exit 1; }
[ -x "$bin" ] || { echo "appliance: no kvmbox binary at $bin (make all)" >&2; exit 1; }
cache=$(sh "$repo/qemu-tests/assets.sh" | tail -n 1)
kver=$(ls "$cache/kernel/lib/modules" | head -n 1)
mods=$cache/kernel/lib/modules/$kver
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root" # it becomes /, which the VMs' own uids traverse

# --- Secrets, made once --------------------------------------------------
umask 077
if [ ! -s "$out/trust-password" ]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$out/trust-password"
    echo >>"$out/trust-password"
fi
password=$(head -n 1 "$out/trust-password")
# It goes into JSON by sed: only characters that need no quoting in either.
case $password in
'' | *[!A-Za-z0-9._-]*)
    echo "appliance: $out/trust-password must be letters, digits, '.', '_' or '-'" >&2; exit 1 ;;
esac
if [ ! -s "$out/server.key" ] || [ ! -s "$out/server.crt" ]; then
    rm -f "$out/server.key" "$out/server.crt"
    "$bin" --applet kvmbox-cert gen --key "$out/server.key" --cert "$out/server.crt" \
        --cn root@kvmbox-appliance --san kvmbox-appliance --san kvmbox >/dev/null
fi
"$bin" --applet kvmbox-cert fingerprint "$out/server.crt" >"$out/server.fingerprint"
chmod 644 "$out/server.crt" "$out/server.fingerprint"
sed "s/@TRUST_PASSWORD@/$password/" "$here/preseed.json" >"$out/preseed.json"
umask 022

# --- The tree -------------------------------------------------------------
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/dev" "$root/proc" "$root/sys" \
    "$root/run" "$root/tmp" "$root/etc/kvmbox" "$root/var/lib/kvmbox" "$root/srv/guest" "$root/lib/modules"
chmod 1777 "$root/tmp"
# busybox's applets as links made here: the root is read-only once booted.
cp "$busybox" "$root/bin/busybox"
for a in $("$busybox" --list-full); do
    [ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"
done
# kvmbox, and a symlink to it for each of its other applets.
cp "$bin" "$root/usr/bin/kvmbox"
for a in $("$bin" --list-applets); do
    [ "$a" = kvmbox ] || ln -s kvmbox "$root/usr/bin/$a"
done

# QEMU with the shared libraries it loads (at the paths ldd names), TCG,
# which Debian builds as a module, and its x86 firmware and option ROMs.
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
copy_with_libs "$(command -v qemu-system-x86_64)" /usr/lib/*/qemu/accel-tcg-x86_64.so
mkdir -p "$root/usr/share/qemu"
for f in /usr/share/qemu/*; do
    case ${f##*/} in
    # Firmware for other architectures.
    *.dtb | openbios-* | s390-* | slof.bin | skiboot.lid | palcode-* | hppa-* | opensbi-* | \
        npcm7xx_* | QEMU,* | vof.bin | u-boot* | trace-events-all) continue ;;
    esac
    cp -rL "$f" "$root/usr/share/qemu/"
done
# Debian's QEMU also looks for firmware in these: SeaBIOS, and the iPXE
# option ROM of the virtio NIC.
cp -rL /usr/share/seabios "$root/usr/share/"
if [ -d /usr/lib/ipxe/qemu ]; then
    mkdir -p "$root/usr/lib/ipxe/qemu"
    cp -L /usr/lib/ipxe/qemu/*virtio* "$root/usr/lib/ipxe/qemu/"
fi

# The guest the preseed runs: the guest tests' busybox initramfs and kernel.
cp "$cache/vmlinuz" "$cache/initrd.gz" "$root/srv/guest/"
chmod 644 "$root/srv/guest/vmlinuz" "$root/srv/guest/initrd.gz"

# The NIC (virtio-net) and its dependencies, in load order.
: >"$root/lib/modules/order"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover \
    virtio_net; do
    ko=$(find "$mods" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n 1)
    [ -n "$ko" ] || { echo "appliance: module $m not found in kernel $kver" >&2; exit 1; }
    case "$ko" in
    *.xz) xz -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *.zst) zstd -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *) cp "$ko" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/order"
done

install -m 755 "$here/init" "$root/init"
install -m 755 "$here/udhcpc.script" "$root/etc/udhcpc.script"
install -m 600 "$out/preseed.json" "$root/etc/kvmbox/preseed.json"
install -m 600 "$out/server.key" "$root/etc/kvmbox/server.key"
install -m 644 "$out/server.crt" "$root/etc/kvmbox/server.crt"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
ln -s /run/resolv.conf "$root/etc/resolv.conf"

# The archive: the real cpio, in the kernel's newc format, owned by root.
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$out/initrd.gz.tmp"
chmod 600 "$out/initrd.gz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
cp "$cache/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
