#!/bin/sh
# Builds the guest assets the VM tests boot, into qemu-tests/cache/ (git-ignored):
#   vmlinuz        Debian's cloud kernel (apt-get download + dpkg-deb -x)
#   initrd.gz      a busybox-static initramfs with the virtio and ACPI button
#                  modules and an /init that reports what the tests look for
# Idempotent: with both files present it only prints their paths.
# Usage: assets.sh [CACHE-DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-$here/cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# Bump when /init or the module list changes so that old caches are rebuilt.
version=7
if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.gz" ] && [ "$(cat "$cache/version" 2>/dev/null)" = "$version" ]; then
    echo "$cache"; exit 0
fi

busybox=$(command -v busybox) || { echo "assets: busybox (busybox-static) is not installed" >&2; exit 1; }
file -L "$busybox" 2>/dev/null | grep -q static || ldd "$busybox" 2>&1 | grep -q "not a dynamic" ||
    { echo "assets: $busybox is not static; install busybox-static" >&2; exit 1; }

work=$(mktemp -d)
chmod 755 "$work" # apt-get download drops to _apt
trap 'rm -rf "$work"' EXIT

# linux-image-cloud-amd64 is a metapackage: the kernel is in the package it depends on.
if [ ! -d "$cache/kernel" ]; then
    resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1; }
    real=$(resolve)
    # A machine whose packages were installed long ago may have no lists.
    [ -n "$real" ] || { apt-get update -q >/dev/null 2>&1 || true; real=$(resolve); }
    [ -n "$real" ] || { echo "assets: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
    (cd "$work" && apt-get download "$real" >/dev/null 2>&1)
    dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
    rm -f "$work"/linux-image-*.deb
    mv "$work/kernel" "$cache/kernel"
fi
kver=$(ls "$cache/kernel/lib/modules" | head -n1)
cp "$cache/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

root=$work/root
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/lib/modules"
cp "$busybox" "$root/bin/busybox"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk button evdev; do
    ko=$(find "$cache/kernel/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)
    [ -n "$ko" ] || { echo "assets: module $m not found in kernel $kver" >&2; exit 1; }
    case "$ko" in
    *.xz) xz -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *.zst) zstd -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *) cp "$ko" "$root/lib/modules/$m.ko" ;;
    esac
done

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk button evdev; do
    insmod /lib/modules/$m.ko || echo "KVMBOX-INSMOD-FAILED $m"
done
# The ACPI power button (evdev gives it a /dev/input node) produces an event
# only when QEMU presses it (system_powerdown), so the first bytes read mean
# "power down". busybox acpid is not used: it needs a map file per event.
# The device is opened here, before the marker below, so that a press right
# after the marker is queued for the reader and not lost.
fd=3
for e in /sys/class/input/event*; do
    [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] || continue
    eval "exec $fd</dev/input/${e##*/}"
    (
        # One struct input_event (24 bytes on 64-bit); evdev refuses shorter reads.
        eval "dd bs=24 count=1 <&$fd" >/dev/null 2>&1 || exit 0
        echo KVMBOX-POWERDOWN >/dev/console
        sync
        poweroff -f
    ) &
    fd=$((fd + 1))
done
# Report every virtio disk once, including those hot-plugged later.
(
    seen=" "
    while :; do
        for d in /sys/block/vd*; do
            [ -e "$d" ] || continue
            n=${d##*/}
            case "$seen" in *" $n "*) continue ;; esac
            seen="$seen$n "
            echo "KVMBOX-DISK $n" >/dev/console
        done
        sleep 0.2
    done
) &
echo KVMBOX-GUEST-READY >/dev/console
while :; do sleep 3600; done
INIT
chmod 755 "$root/init"

(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$work/initrd.gz"
mv "$work/vmlinuz" "$cache/vmlinuz"
mv "$work/initrd.gz" "$cache/initrd.gz"
echo "$version" >"$cache/version"
echo "$cache"
