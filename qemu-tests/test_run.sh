# `make run` as a newcomer meets it (scripts/run.sh): the daemon starts in
# the foreground and prints the one command that boots the demo guest; that
# command, typed as printed, boots it (guest marker on its console), and
# Ctrl-C's signal stops the daemon, leaving no process behind.
. "$TESTLIB"

command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }
chmod 711 .
export KVMBOX_RUN_DIR=$PWD/run KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true

sh "$REPO/scripts/run.sh" >run.out 2>run.err &
pid=$!
stop() { kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
trap stop EXIT
i=0
until [ -S run/state/unix.socket ]; do
    i=$((i + 1)); [ $i -lt 600 ] || fail "no socket: $(cat run.out run.err)"; sleep 0.1
done

launch=$(grep ' launch demo ' run.out) || fail "no launch command printed: $(cat run.out)"
console=$(grep ' console demo' run.out) || fail "no console command printed: $(cat run.out)"
sh -c "$launch" >launch.out 2>&1 || fail "the printed command failed: $(cat launch.out)"
i=0
until sh -c "$console" 2>/dev/null | grep -q KVMBOX-GUEST-READY; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "the demo guest did not boot: $(sh -c "$console" | tail -5)"; sleep 0.2
done
sh -c "${launch%% launch *} delete --force demo" || fail "cannot delete the demo guest"
stop
trap - EXIT
[ ! -S run/state/unix.socket ] || fail "the daemon left its socket"
echo ok
