#!/bin/sh
# The Debian guest's own settings, run by image.sh as mmdebstrap's last
# hook on the finished root (outside it, as root).
# Usage: customize.sh ROOT LABEL
set -eu
r=$1 label=$2

# Root is the file system with this label, whichever disk it is on; no fsck
# on a disposable overlay.
echo "LABEL=$label / ext4 rw,errors=remount-ro 0 0" >"$r/etc/fstab"
echo debian >"$r/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 debian\n' >"$r/etc/hosts"

# cloud-init tries NoCloud (a disk labelled "cidata", or ds=nocloud on the
# kernel command line) and otherwise falls back to None at once: there is no
# network data source to wait for. C.UTF-8 is built into libc: asking for
# it spares the locale generation cloud-init would run (the locale sources
# are left out of the image). It makes the SSH host keys at first boot, so
# that VMs do not share them, but no RSA or DSA key: an RSA key takes some
# 20 s under TCG, and the login prompt waits for it.
echo LANG=C.UTF-8 >"$r/etc/default/locale"
cat >"$r/etc/cloud/cloud.cfg.d/90-kvmbox.cfg" <<CFG
datasource_list: [NoCloud, None]
locale: C.UTF-8
ssh_genkeytypes: [ed25519, ecdsa]
CFG
rm -f "$r"/etc/ssh/ssh_host_*

# e2fsprogs' e2scrub checks ext4 on LVM snapshots, and there is no LVM here.
# Its boot-time reaper, which multi-user.target waits for, runs at idle CPU
# priority: under TCG it kept that target from being reached for minutes.
for u in e2scrub_reap.service e2scrub_all.timer; do
    ln -sf /dev/null "$r/etc/systemd/system/$u"
done
