# instances.uid_range never hands a VM the id of a host account: a range
# starting below 65536, or holding the uid of a user in /etc/passwd or the gid
# of a group in /etc/group, is refused when set, naming the account; an
# account added later stops instance creation from that range.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: useradd needs root"; exit 0; }
command -v useradd >/dev/null || { echo "SKIPPED: no useradd"; exit 0; }

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
kv() { bin/kvmbox "$@"; }
# Ids no other test uses, far from the default range (1000000:65536).
base=$((3500000 + ($$ % 10000) * 100))
user=kbu$$ late=kbl$$ group=kbg$$
cleanup() {
    kill ${dpid:-} 2>/dev/null || true; wait 2>/dev/null || true
    for u in $user $late; do userdel "$u" 2>/dev/null || true; done
    groupdel "$group" 2>/dev/null || true
}
trap cleanup EXIT
bin/kvmboxd --group root 2>daemon.log &
dpid=$!
i=0; while ! kv info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || fail "daemon did not start: $(cat daemon.log)"; sleep 0.1; done

expect_fail kv config set instances.uid_range 1000:10
contains "$ERR" "below 65536"; one_line "$ERR"

useradd -K UID_MAX=4294967294 -M -N -s /bin/false -u $((base + 5)) "$user"
expect_fail kv config set instances.uid_range "$base:10"
contains "$ERR" "uid $((base + 5)) belongs to user \"$user\" in /etc/passwd"; one_line "$ERR"
[ -z "$(kv config get instances.uid_range)" ] || fail "a refused range was stored"
groupadd -K GID_MAX=4294967294 -g $((base + 20)) "$group"
expect_fail kv config set instances.uid_range "$((base + 10)):11"
contains "$ERR" "gid $((base + 20)) belongs to group \"$group\" in /etc/group"
kv config set instances.uid_range "$((base + 10)):10"
[ "$(kv config get instances.uid_range)" = "$((base + 10)):10" ] || fail "a free range was not stored"

# An account that appears after the range was set.
useradd -K UID_MAX=4294967294 -M -N -s /bin/false -u $((base + 19)) "$late"
expect_fail kv init vm1 --kernel "$K"
contains "$ERR" "uid $((base + 19)) belongs to user \"$late\""; one_line "$ERR"
[ "$(kv list --format csv)" = "name,state,type" ] || fail "an instance was made: $(kv list)"
[ -z "$(ls state/instances)" ] || fail "a refused creation left $(ls state/instances)"
userdel "$late"
kv init vm1 --kernel "$K" >/dev/null
kv delete vm1
