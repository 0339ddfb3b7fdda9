# A file operand `-` is stdin (stdout where written) in every applet, as for
# any Unix tool, and never a file named "-": kvmboxd --preseed,
# kvmbox remote add --password-file, authenticate --passphrase-file, config
# trust add, kvmbox-cert inputs and outputs. Where stdin cannot serve (a path
# the daemon opens, the aa-helper whose stdin is the VM, stdin read twice)
# it is refused clearly.
. "$TESTLIB"
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: the other uid needs root"; exit 0; }
command -v setpriv >/dev/null || { echo "SKIPPED: no setpriv"; exit 0; }

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
mkdir -p bin
for a in kvmboxd kvmbox kvmbox-cert kvmbox-aa-helper; do ln -sf "$K" "bin/$a"; done
echo '{"config": {"core.trust_password": "pw-from-stdin", "local.passphrase": "pp-from-stdin"}}' |
    bin/kvmboxd --group root --https 127.0.0.1:0 --preseed - 2>daemon.log &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
port=$(https_port daemon.log)
[ ! -e ./- ] || fail "a file named - appeared"
fp=$(bin/kvmbox info --format json | sed -n 's/.*"certificate_fingerprint": "\([0-9a-f]*\)".*/\1/p')

# The trust password set from the preseed on stdin, given on stdin again.
printf 'pw-from-stdin\n' | KVMBOX_CONF=$PWD/c1 bin/kvmbox remote add r "127.0.0.1:$port" --fingerprint "$fp" --password-file - >out.txt 2>&1 ||
    fail "remote add --password-file -: $(cat out.txt)"
KVMBOX_CONF=$PWD/c1 bin/kvmbox list r: >/dev/null || fail "the remote added with --password-file - is not trusted"

# Another uid authenticates with the local passphrase on stdin, once a
# member of the admin group has been trusted and so opened the socket.
chmod 755 "$PWD" bin
uid=$((52000 + $$ % 1000)) admin=$((53000 + $$ % 1000))
mkdir c2 c3; chown $uid c2; chown $admin c3
env KVMBOX_CONF="$PWD/c3" setpriv --reuid $admin --regid $admin --groups 0 -- bin/kvmbox info >/dev/null ||
    fail "the admin-group member is not trusted"
printf 'pp-from-stdin\n' | env KVMBOX_CONF="$PWD/c2" setpriv --reuid $uid --regid $uid --clear-groups -- \
    bin/kvmbox authenticate --passphrase-file - >out.txt 2>&1 || fail "authenticate --passphrase-file -: $(cat out.txt)"
env KVMBOX_CONF="$PWD/c2" setpriv --reuid $uid --regid $uid --clear-groups -- bin/kvmbox info >out.txt 2>&1
contains "$(cat out.txt)" "trusted"

# kvmbox-cert: a certificate to stdout, read back from stdin.
bin/kvmbox-cert gen --key k.pem --cert - --cn from-stdout >c.pem
openssl x509 -in c.pem -noout -subject | grep -q "CN *= *from-stdout" || fail "no certificate on stdout"
[ ! -e ./- ] || fail "kvmbox-cert wrote a file named -"
[ "$(bin/kvmbox-cert fingerprint - <c.pem)" = "$(bin/kvmbox-cert fingerprint c.pem)" ] || fail "fingerprint - differs"
bin/kvmbox-cert verify --ca - c.pem <c.pem >/dev/null || fail "verify --ca - failed"
expect_fail bin/kvmbox-cert verify --ca - - <c.pem
contains "$ERR" "standard input is already read"; one_line "$ERR"
expect_fail bin/kvmbox-cert gen --key - --cert -
contains "$ERR" "only one can be -"

# config trust add - : the certificate from stdin.
bin/kvmbox config trust add --name piped - <c.pem >/dev/null || fail "config trust add -"
contains "$(bin/kvmbox config trust list --format csv)" "piped,client"

# A `-` operand keeps its place among the others.
expect_fail bin/kvmbox remote rename - nosuch
contains "$ERR" 'no remote named "-"'

# Refused where stdin cannot stand in for the file.
set +e; bin/kvmbox init vm1 --kernel - </dev/null >/dev/null 2>err.txt; rc=$?; set -e
[ "$rc" -eq 2 ] || fail "--kernel - exit code $rc"
contains "$(cat err.txt)" "the daemon opens this file by its path"; one_line "$(cat err.txt)"
set +e; bin/kvmbox-aa-helper show --template - </dev/null >/dev/null 2>err.txt; rc=$?; set -e
[ "$rc" -eq 2 ] || fail "aa-helper --template - exit code $rc"
contains "$(cat err.txt)" "stdin carries the VM definition"
[ ! -e ./- ] || fail "a file named - appeared"

kill -TERM $pid; wait $pid || fail "kvmboxd exited non-zero: $(cat daemon.log)"
