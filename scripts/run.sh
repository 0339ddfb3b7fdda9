#!/bin/sh
# `make run` (after `make all`): starts kvmboxd in the foreground on a
# scratch state directory under the checkout, Unix socket only, with the
# current user's group as admin group, after printing the command to type
# next in another terminal. Ctrl-C stops it.
set -eu
state=${KVMBOX_RUN_DIR:-$PWD/run/state}
mkdir -p "$state"
if [ "$(id -u)" -eq 0 ]; then
    # Root: the socket's group is root's; unprivileged, the daemon uses the
    # caller's primary group by itself.
    set -- --group "$(id -gn)"
fi
echo "In another terminal: KVMBOX_SOCKET=$state/unix.socket build/kvmbox info"
exec build/kvmbox --applet kvmboxd --state-dir "$state" "$@"
