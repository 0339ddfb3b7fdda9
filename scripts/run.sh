#!/bin/sh
# `make run` (after `make all`): prepares a small demo guest (Debian's cloud
# kernel and a busybox initramfs, built once by qemu-tests/assets.sh), then
# starts kvmboxd in the foreground on a scratch state directory under the
# checkout, Unix socket only, with the current user's group as admin group,
# after printing the one command that boots the guest from another
# terminal. Ctrl-C stops it.
# Env: KVMBOX_RUN_DIR (default ./run), KVMBOX_BIN (default build/kvmbox).
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
run=${KVMBOX_RUN_DIR:-$repo/run}
bin=${KVMBOX_BIN:-$repo/build/kvmbox}
state=$run/state
demo=$run/demo
mkdir -p "$state" "$demo"
# QEMU runs under a uid of its own: it must reach the guest's files.
chmod 755 "$run" "$demo"
cache=$(sh "$repo/qemu-tests/assets.sh" | tail -n 1)
for f in vmlinuz initrd.gz; do
    cp "$cache/$f" "$demo/$f.tmp" && chmod 644 "$demo/$f.tmp" && mv -f "$demo/$f.tmp" "$demo/$f"
done
if [ "$(id -u)" -eq 0 ]; then
    # Root: the socket's group is root's; unprivileged, the daemon uses the
    # caller's primary group by itself.
    set -- --group "$(id -gn)"
fi
cat <<EOF
kvmboxd is starting on $state/unix.socket (Ctrl-C stops it).
In another terminal, boot the demo guest and watch its console:
  KVMBOX_SOCKET=$state/unix.socket $bin launch demo --kernel $demo/vmlinuz --initrd $demo/initrd.gz --memory 256MiB
  KVMBOX_SOCKET=$state/unix.socket $bin console demo --show-log
EOF
exec "$bin" --applet kvmboxd --state-dir "$state" "$@"
