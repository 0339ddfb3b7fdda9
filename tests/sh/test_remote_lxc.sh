# The TCP listener against real peers: LXD 5.0.2's own `lxc` client (remote
# add by password, by --accept-certificate and by token; trust list; list;
# refusal after revocation), and OpenSSL's s_client for the TLS policy
# (TLS 1.3, or 1.2 with ECDHE-ECDSA AEAD suites). Skips (passes) only if
# lxc or openssl is not installed.
. "$TESTLIB"
command -v lxc >/dev/null || { echo "lxc not installed: skipped"; exit 0; }
command -v openssl >/dev/null || { echo "openssl not installed: skipped"; exit 0; }

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf LXD_CONF=$PWD/lxc
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
mkdir -p lxc bin; ln -sf "$K" bin/kvmboxd
group_args=""
[ "$(id -u)" -ne 0 ] || group_args="--group root"
bin/kvmboxd $group_args 2>daemon.log &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
i=0; while [ ! -S state/unix.socket ]; do i=$((i + 1)); [ $i -lt 200 ] || fail "no socket: $(cat daemon.log)"; sleep 0.05; done

# The address is set live, through the API; port 0 lets the kernel pick.
applet kvmbox config set core.https_address 127.0.0.1:0
port=$(https_port daemon.log)
applet kvmbox config set core.trust_password lxc-interop-pw
[ "$(applet kvmbox config get core.trust_password)" = true ] || fail "trust password readable"
url="https://127.0.0.1:$port"

# --- TLS policy with the real OpenSSL ---------------------------------------
# tls_ok ARGS…: the handshake succeeds with these s_client options.
tls() { echo | timeout 10 openssl s_client -connect "127.0.0.1:$port" "$@" 2>&1 | grep -E "^(New|    Protocol)" || true; }
for v in -tls1 -tls1_1; do
    out=$(tls $v -cipher 'DEFAULT:@SECLEVEL=0')
    contains "$out" "Cipher is (NONE)"
done
for c in AES128-GCM-SHA256 AES256-SHA ECDHE-ECDSA-AES128-SHA ECDHE-ECDSA-AES256-SHA384 ECDHE-RSA-AES128-GCM-SHA256; do
    out=$(tls -tls1_2 -cipher "$c")
    contains "$out" "Cipher is (NONE)"
done
for c in ECDHE-ECDSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-GCM-SHA384 ECDHE-ECDSA-CHACHA20-POLY1305; do
    out=$(tls -tls1_2 -cipher "$c")
    contains "$out" "TLSv1.2, Cipher is $c"
done
contains "$(tls -tls1_3)" "TLSv1.3, Cipher is TLS_"
# Finite-field DH is not offered even when it is the only choice.
contains "$(tls -tls1_2 -cipher DHE-RSA-AES128-GCM-SHA256)" "Cipher is (NONE)"

# --- the real lxc ------------------------------------------------------------
# An untrusted lxc gets GET / and GET /1.0; a wrong password is refused.
expect_fail timeout 60 lxc remote add bad "$url" --accept-certificate --password wrong
contains "$ERR" "not authorized"
timeout 60 lxc remote add kb "$url" --accept-certificate --password lxc-interop-pw >out.txt 2>&1 || fail "lxc remote add: $(cat out.txt)"
contains "$(cat out.txt)" "now trusted"
[ -s lxc/servercerts/kb.crt ] || fail "lxc did not pin the server certificate"
out=$(timeout 30 lxc config trust list kb: --format csv) || fail "lxc config trust list"
contains "$out" "client,remote-127.0.0.1"
out=$(timeout 30 lxc list kb: --format csv) || fail "lxc list: $out"
[ -z "$out" ] || fail "lxc list not empty: $out"
# lxc's certificate is ECDSA P-384 signed with SHA-384: what the trust store got.
fp=$(openssl x509 -in lxc/client.crt -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f)
contains "$(openssl x509 -in lxc/client.crt -noout -text)" "ecdsa-with-SHA384"
contains "$(applet kvmbox config trust list --format json)" "\"$fp\""
# lxc info shows the server; lxc manages the trust store (it sends base64 DER).
srv_fp=$(applet kvmbox info --format json | sed -n 's/.*"certificate_fingerprint": "\([0-9a-f]*\)".*/\1/p')
contains "$(timeout 30 lxc info kb:)" "certificate_fingerprint: $srv_fp"
applet kvmbox-cert gen --key x.key --cert x.crt --cn from-lxc >/dev/null
timeout 30 lxc config trust add kb: x.crt || fail "lxc config trust add"
xfp=$(applet kvmbox-cert fingerprint x.crt)
contains "$(applet kvmbox config trust list --format json)" "\"$xfp\""
timeout 30 lxc config trust remove "kb:$xfp" || fail "lxc config trust remove"
case "$(applet kvmbox config trust list --format json)" in *"$xfp"*) fail "lxc trust remove did nothing" ;; esac
# An instance that does not exist: lxc is told so, cleanly.
expect_fail timeout 30 lxc start kb:vm1
contains "$ERR" "instance \"vm1\" not found"

# kvmbox shows lxc in its trust store; removing it locks lxc out at once.
applet kvmbox config trust remove "$(echo "$fp" | cut -c1-12)" >/dev/null
expect_fail timeout 30 lxc list kb:
contains "$ERR" "not authorized"
contains "$ERR" "kvmbox remote add"

# A token, in LXD's join-token shape, works with lxc's `remote add NAME TOKEN`
# (fresh lxc config, so a fresh lxc key pair).
token=$(applet kvmbox config trust add --name lxc2 --role auditor 2>/dev/null)
[ -n "$token" ] || fail "no token"
mkdir lxc2
LXD_CONF=$PWD/lxc2 timeout 60 lxc remote add kb2 "$token" >out.txt 2>&1 || fail "lxc remote add TOKEN: $(cat out.txt)"
LXD_CONF=$PWD/lxc2 timeout 30 lxc list kb2: >/dev/null || fail "lxc list after token"
contains "$(applet kvmbox config trust list --format csv)" "lxc2,client,auditor"
# The same token again: refused.
mkdir lxc3
expect_fail env LXD_CONF=$PWD/lxc3 timeout 60 lxc remote add kb3 "$token"

# Unset the trust password (as production should): password joins stop working.
applet kvmbox config unset core.trust_password
mkdir lxc4
expect_fail env LXD_CONF=$PWD/lxc4 timeout 60 lxc remote add kb4 "$url" --accept-certificate --password lxc-interop-pw
contains "$ERR" "not authorized"

kill -TERM $pid
wait $pid || fail "kvmboxd exited non-zero: $(cat daemon.log)"
