# instances.uid_range never hands a VM the id of a host account: a range
# starting below 65536, or holding the uid of a user in /etc/passwd or the gid
# of a group in /etc/group, or overlapping a user's subordinate uids or gids
# (/etc/subuid, /etc/subgid: the ids their user namespaces run as), is
# refused when set, naming the account; an account added later stops
# instance creation from that range, and a subordinate range given out later
# stops an instance that runs as one of its ids from starting.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: useradd needs root"; exit 0; }
command -v useradd >/dev/null || { echo "SKIPPED: no useradd"; exit 0; }

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
kv() { bin/kvmbox "$@"; }
# Ids no other test uses, far from the default range (1000000:65536).
base=$((3500000 + ($$ % 10000) * 100))
user=kbu$$ late=kbl$$ group=kbg$$ sub=kbs$$
# No subordinate ids for these throwaway users unless the test gives them.
add_user() { useradd -K UID_MAX=4294967294 -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 -M -N -s /bin/false "$@"; }
# usermod gives subordinate ids only where the files exist (Debian's passwd
# package makes them empty); made here if missing, and removed if still empty.
made=
for f in /etc/subuid /etc/subgid; do
    [ -e "$f" ] || { : >"$f"; made="$made $f"; }
done
cleanup() {
    bin/kvmbox delete --force vm1 >/dev/null 2>&1 || true
    kill ${dpid:-} 2>/dev/null || true; wait 2>/dev/null || true
    for u in $user $late $sub; do userdel "$u" 2>/dev/null || true; done
    groupdel "$group" 2>/dev/null || true
    for f in $made; do [ -s "$f" ] || rm -f "$f"; done
}
trap cleanup EXIT
bin/kvmboxd --group root 2>daemon.log &
dpid=$!
i=0; while ! kv info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || fail "daemon did not start: $(cat daemon.log)"; sleep 0.1; done

expect_fail kv config set instances.uid_range 1000:10
contains "$ERR" "below 65536"; one_line "$ERR"

add_user -u $((base + 5)) "$user"
expect_fail kv config set instances.uid_range "$base:10"
contains "$ERR" "uid $((base + 5)) belongs to user \"$user\" in /etc/passwd"; one_line "$ERR"
[ -z "$(kv config get instances.uid_range)" ] || fail "a refused range was stored"
groupadd -K GID_MAX=4294967294 -g $((base + 20)) "$group"
expect_fail kv config set instances.uid_range "$((base + 10)):11"
contains "$ERR" "gid $((base + 20)) belongs to group \"$group\" in /etc/group"
kv config set instances.uid_range "$((base + 10)):10"
[ "$(kv config get instances.uid_range)" = "$((base + 10)):10" ] || fail "a free range was not stored"

# An account that appears after the range was set.
add_user -u $((base + 19)) "$late"
expect_fail kv init vm1 --kernel "$K"
contains "$ERR" "uid $((base + 19)) belongs to user \"$late\""; one_line "$ERR"
[ "$(kv list --format csv)" = "name,state,type" ] || fail "an instance was made: $(kv list)"
[ -z "$(ls state/instances)" ] || fail "a refused creation left $(ls state/instances)"
userdel "$late"
kv init vm1 --kernel "$K" >/dev/null
kv delete vm1

# Subordinate ids: refused when set, naming their owner and the entry.
add_user "$sub"
usermod --add-subuids $((base + 30))-$((base + 39)) "$sub"
expect_fail kv config set instances.uid_range "$((base + 35)):10"
contains "$ERR" "uid $((base + 35)) is a subordinate uid of \"$sub\" in /etc/subuid ($((base + 30)):10)"
one_line "$ERR"
usermod --del-subuids $((base + 30))-$((base + 39)) --add-subgids $((base + 44))-$((base + 44)) "$sub"
expect_fail kv config set instances.uid_range "$((base + 35)):10"
contains "$ERR" "gid $((base + 44)) is a subordinate gid of \"$sub\" in /etc/subgid ($((base + 44)):1)"
kv config set instances.uid_range "$((base + 35)):9"
kv config set instances.uid_range "$((base + 10)):10"

# A subordinate range given out after the instance was made: it no longer
# starts (its QEMU would run as an id the owner's namespaces can be), and
# stays stopped.
kv init vm1 --kernel "$K" >/dev/null
usermod --add-subuids $((base + 10))-$((base + 19)) "$sub"
expect_fail kv start vm1
contains "$ERR" "instance \"vm1\" cannot run as uid $((base + 10)): uid $((base + 10)) is a subordinate uid of \"$sub\" in /etc/subuid"
one_line "$ERR"
contains "$(kv list --format csv)" "vm1,Stopped,"
usermod --del-subuids $((base + 10))-$((base + 19)) "$sub"
kv delete vm1
