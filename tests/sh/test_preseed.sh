# Preseed through the static binary: `kvmbox admin init --preseed` applies
# config + a certificate + an instance; each took effect; a second run says
# unchanged for every step and leaves the state files byte-identical; a
# document with a typo'd key, a bad memory size or a malformed PEM fails
# with one line and changes nothing; a step only the daemon can refuse
# fails naming itself; the same document over TLS to a REMOTE: is unchanged
# there too; `kvmboxd --preseed` applies the same
# document on a fresh state directory before it serves, and does not add
# back a certificate an administrator removed.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: instances get their own uid, which needs root"; exit 0; }

export KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
chmod 711 .
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox; ln -sf "$K" bin/kvmbox-cert
kv() { bin/kvmbox "$@"; }
dpid=""
trap 'kill ${dpid:-} 2>/dev/null || true' EXIT
start_daemon() { # STATE [ARGS…]
    state=$1; shift
    KVMBOX_DIR=$state bin/kvmboxd --state-dir "$state" --group root "$@" 2>>daemon.log &
    dpid=$!
    i=0; while ! KVMBOX_DIR=$state kv info >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "daemon did not start: $(cat daemon.log)"; sleep 0.1
    done
}
stop_daemon() { kill "$dpid"; wait "$dpid" || true; dpid=""; }
# What preseed may change: the state files, not the runtime ones.
digest() { (cd "$1" && sha256sum ./*.json instances/*/instance.json images/*.json 2>/dev/null); }

# No boot happens: a kernel file is all create checks for.
: >vmlinuz
truncate -s 1M base.img
bin/kvmbox-cert gen --key alice.key --cert alice.crt --cn alice >/dev/null
fp=$(bin/kvmbox-cert fingerprint alice.crt)
pem=$(sed 's/$/\\n/' alice.crt | tr -d '\r\n')
cat >doc.json <<DOC
{
  "config": {"instances.accel": "tcg", "core.trust_password": "s3cret-s3cret"},
  "certificates": [{"name": "alice", "type": "client", "certificate": "$pem", "role": "operator"}],
  "images": [{"alias": "base", "path": "$PWD/base.img"}],
  "instances": [{"name": "img1", "source": {"alias": "base"}, "config": {"boot.kernel": "$PWD/vmlinuz"}},
                {"name": "vm1", "config": {"boot.kernel": "$PWD/vmlinuz", "limits.memory": "256MiB"},
                 "devices": {"eth0": {"type": "nic", "nictype": "user"}}, "state": "stopped"}]
}
DOC

export KVMBOX_DIR=$PWD/state
start_daemon "$KVMBOX_DIR" --https 127.0.0.1:0
out=$(kv admin init --preseed doc.json)
echo "$out"
contains "$out" "config instances.accel: created"
contains "$out" "config core.trust_password: created"
contains "$out" "certificate alice (${fp%"${fp#????????????}"}): created"
contains "$out" "image base: created"
contains "$out" "instance img1: created"
contains "$out" "instance vm1: created"
contains "$out" "instance vm1 stopped: unchanged"
[ "$(kv config get instances.accel)" = tcg ] || fail "instances.accel not set"
contains "$(kv config trust list --format csv)" "$fp"
contains "$(kv config trust list)" "operator"
contains "$(kv list)" "vm1"
contains "$(kv image list)" "base"
contains "$(kv info img1 --format json)" '"image.alias": "base"'
contains "$(kv info vm1 --format json)" '"limits.memory": "256MiB"'
before=$(digest state)

# Again, from stdin: every step unchanged, not a byte of state rewritten.
out=$(kv admin init --preseed - <doc.json)
echo "$out"
[ "$(echo "$out" | grep -vc ': unchanged$')" -eq 0 ] || fail "not all unchanged: $out"
[ "$(echo "$out" | wc -l)" -eq 7 ] || fail "expected seven steps: $out"
[ "$(digest state)" = "$before" ] || fail "state changed on the second run"

# A drifted value is put back, and only it.
kv config set vm1 limits.memory 1GiB
out=$(kv admin init --preseed doc.json)
contains "$out" "instance vm1: updated"
[ "$(echo "$out" | grep -c ': updated$')" -eq 1 ] || fail "more than one update: $out"
[ "$(digest state)" = "$before" ] || fail "state not put back as it was"

# Bad documents: exit 1, one line, nothing applied (the good step before
# the bad one included).
bad() { # NEEDLE SED-EXPRESSION
    sed "$2" doc.json >bad.json
    cmp -s bad.json doc.json && fail "the edit '$2' changed nothing"
    expect_fail kv admin init --preseed bad.json
    contains "$ERR" "$1"; one_line "$ERR"
    [ "$(digest state)" = "$before" ] || fail "state changed by a bad document ($1)"
}
bad 'unknown field `confg`' 's/"config": {"boot/"confg": {"boot/'
bad 'unknown configuration key "core.https_adress"' 's/"instances.accel": "tcg"/"core.https_adress": "[::]:8443"/'
bad 'limits.memory' 's/"tcg"/"kvm"/;s/256MiB/12 bananas/'
bad 'not a PEM X.509 certificate' 's/"tcg"/"kvm"/;s/"certificate": "-----BEGIN CERTIFICATE-----\\nM/"certificate": "-----BEGIN CERTIFICATE-----\\nX/'
[ "$(kv config get instances.accel)" = tcg ] || fail "a bad document changed instances.accel"
bad 'instances.accel' 's/"tcg"/"fast"/'
# What only the daemon can tell fails at its step, naming it; the steps
# before it stay applied and a fixed document carries on from there.
sed 's/"name": "vm1", "config"/"name": "vm2", "source": {"alias": "nope"}, "config"/' doc.json >later.json
expect_fail kv admin init --preseed later.json
contains "$ERR" "instance vm2: "; one_line "$ERR"
contains "$(cat out.txt)" "config instances.accel: unchanged"
expect_fail kv info vm2
expect_fail kv admin init --preseed nope.json
contains "$ERR" "cannot read nope.json"; one_line "$ERR"
expect_fail kv admin init doc.json
contains "$ERR" "--preseed"

# Over TLS to a REMOTE: the same steps, the same answers; an instance
# added to the document is created there.
port=$(https_port daemon.log)
token=$(kv config trust add --name far --role admin 2>/dev/null)
far() { KVMBOX_CONF=$PWD/conf2 bin/kvmbox "$@"; }
far remote add host "127.0.0.1:$port" --token "$token" >/dev/null 2>&1 || fail "remote add failed"
out=$(far admin init --preseed doc.json host:)
[ "$(echo "$out" | grep -vc ': unchanged$')" -eq 0 ] || fail "not all unchanged remotely: $out"
sed 's/"name": "vm1", "config"/"name": "vm3", "config"/' doc.json >vm3.json
out=$(far admin init --preseed - host: <vm3.json)
contains "$out" "instance vm3: created"
contains "$(kv list)" "vm3"
stop_daemon

# kvmboxd --preseed on a fresh state directory: the same document, applied
# before the first client is served.
export KVMBOX_DIR=$PWD/fresh
start_daemon "$KVMBOX_DIR" --preseed doc.json
[ "$(kv config get instances.accel)" = tcg ] || fail "kvmboxd --preseed did not set instances.accel"
contains "$(kv config trust list --format csv)" "$fp"
contains "$(kv list)" "vm1"
contains "$(cat daemon.log)" "preseed: instance vm1: created"
# And on restart with the same document: nothing changes.
after=$(digest fresh)
stop_daemon
: >daemon.log
start_daemon "$KVMBOX_DIR" --preseed doc.json
[ "$(digest fresh)" = "$after" ] || fail "kvmboxd --preseed changed state on a second start"
[ "$(grep -c 'preseed: .*: unchanged' daemon.log)" -eq 7 ] || fail "expected seven unchanged: $(cat daemon.log)"
# A certificate an administrator removed is not added back at the next
# start, which says so; an administrator's own preseed adds it back.
kv config trust remove "$fp" >/dev/null
stop_daemon
: >daemon.log
start_daemon "$KVMBOX_DIR" --preseed doc.json
contains "$(cat daemon.log)" "preseed: certificate alice (${fp%"${fp#????????????}"}): denied"
contains "$(cat daemon.log)" "kvmbox config trust add"
case "$(kv config trust list --format csv)" in *"$fp"*) fail "kvmboxd --preseed added a removed certificate back" ;; esac
out=$(kv admin init --preseed doc.json)
contains "$out" "certificate alice (${fp%"${fp#????????????}"}): created"
contains "$(kv config trust list --format csv)" "$fp"
stop_daemon

# A bad document stops the daemon with one line, before it serves.
sed 's/256MiB/12 bananas/' doc.json >bad.json
set +e; KVMBOX_DIR=$PWD/other bin/kvmboxd --group root --preseed bad.json 2>err.txt; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "kvmboxd with a bad document exited $rc"
contains "$(cat err.txt)" "limits.memory"; one_line "$(cat err.txt)"
[ ! -e other ] || fail "a bad document created the state directory"
echo "ok"
