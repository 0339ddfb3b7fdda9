# Scripted provisioning as in an initramfs: a client with an empty
# environment (no HOME, no XDG_RUNTIME_DIR, no KVMBOX_*), a uid with no
# passwd entry and no terminal adds a remote by --fingerprint and --token,
# lists it, and fails cleanly with a wrong fingerprint. Needs root (setpriv).
. "$TESTLIB"
[ "$(id -u)" -eq 0 ] || { echo "needs root: skipped"; exit 0; }
command -v setpriv >/dev/null || { echo "setpriv not installed: skipped"; exit 0; }

uid=$(( 40000 + $$ % 20000 ))
while getent passwd $uid >/dev/null; do uid=$((uid + 1)); done
conf=/tmp/kvmbox-client-$uid
rm -rf "$conf"
export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
bin/kvmboxd --group root --https 127.0.0.1:0 2>daemon.log &
pid=$!
hold=""
trap 'kill $pid $hold 2>/dev/null || true; rm -rf "$conf"' EXIT
port=$(https_port daemon.log)
fp=$(bin/kvmbox info --format json | sed -n 's/.*"certificate_fingerprint": "\([0-9a-f]*\)".*/\1/p')
[ ${#fp} -eq 64 ] || fail "no server fingerprint"
token=$(bin/kvmbox config trust add --name initramfs --role operator 2>/dev/null)
chmod 755 "$PWD" bin
# guest CMD…: as the passwd-less uid, with nothing in the environment and
# stdin not a terminal.
guest() { env -i setpriv --reuid $uid --regid $uid --clear-groups -- "$PWD/bin/kvmbox" "$@" </dev/null; }
wrong=$(echo "$fp" | tr 0-9a-f 1-9a-f0)
expect_fail guest remote add host "127.0.0.1:$port" --fingerprint "$wrong"
contains "$ERR" "not the expected"
one_line "$ERR"
expect_fail guest remote add host "127.0.0.1:$port" --fingerprint "$wrong" --token "$token"
contains "$ERR" "different server certificates"
[ ! -e "$conf/config.json" ] || fail "a refused remote was saved"
guest remote add host "127.0.0.1:$port" --fingerprint "$fp" --token "$token" >out.txt 2>&1 || fail "remote add: $(cat out.txt)"
[ "$(guest list host: --format json)" = "[]" ] || fail "list host: as the guest"
[ "$(stat -c %u:%a "$conf")" = "$uid:700" ] || fail "config dir $(stat -c %u:%a "$conf")"
[ -s "$conf/servercerts/host.crt" ] || fail "server certificate not pinned"
contains "$(bin/kvmbox config trust list --format csv)" "initramfs,client,operator"
# The token was spent: a second guest key pair cannot reuse it.
rm -rf "$conf"
expect_fail guest remote add host "127.0.0.1:$port" --fingerprint "$fp" --token "$token"
contains "$ERR" "not authorized"

# With a terminal (script(1) gives one): the fingerprint is shown and asked
# about, the password is read without echo; "n" refuses the server.
if command -v script >/dev/null; then
    bin/kvmbox config set core.trust_password tty-secret
    (sleep 1; printf 'y\n'; sleep 1; printf 'tty-secret\n'; sleep 1) |
        KVMBOX_CONF=$PWD/tty script -qec "$PWD/bin/kvmbox remote add t 127.0.0.1:$port" /dev/null >tty.txt 2>&1 ||
        fail "remote add on a terminal: $(cat tty.txt)"
    contains "$(cat tty.txt)" "Certificate fingerprint: $fp"
    contains "$(cat tty.txt)" "Remote t added"
    case "$(cat tty.txt)" in *tty-secret*) fail "the password was echoed" ;; esac
    (sleep 1; printf 'n\n'; sleep 1) |
        KVMBOX_CONF=$PWD/tty2 script -qec "$PWD/bin/kvmbox remote add t 127.0.0.1:$port" /dev/null >tty.txt 2>&1 &&
        fail "a refused fingerprint was accepted"
    contains "$(cat tty.txt)" "not accepted"
    [ ! -e tty2/config.json ] || fail "a refused remote was saved"
fi
kill -TERM $pid; wait $pid || fail "kvmboxd exited non-zero"

# --https names exactly one address: one already in use stops the daemon.
# Another kvmboxd holds the port.
mkdir -m 711 state2
bin/kvmboxd --group root --state-dir state2 --https 127.0.0.1:0 2>holder.log &
hold=$!
busy=$(https_port holder.log)
if bin/kvmboxd --group root --https "127.0.0.1:$busy" 2>err.txt; then fail "started on a busy address"; fi
contains "$(cat err.txt)" "cannot listen on 127.0.0.1:$busy"
one_line "$(cat err.txt)"
kill $hold
