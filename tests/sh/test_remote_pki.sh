# PKI mode (SPEC L7) with certificates from kvmbox-cert and revocation and
# expiry from the real `openssl ca`: a server certificate signed by the
# client's client.ca is accepted without a prompt; client certificates are
# checked against server.ca and server.crl during the handshake; a client
# certificate from another CA, a revoked one and an expired one are refused.
. "$TESTLIB"
command -v openssl >/dev/null || { echo "openssl not installed: skipped"; exit 0; }
C="applet kvmbox-cert"
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
export KVMBOX_DIR=$PWD/state

$C ca init --key ca.key --cert ca.crt --cn "PKI test CA" >/dev/null
$C ca init --key other.key --cert other.crt --cn "Another CA" >/dev/null
mkdir -m 711 state
$C issue --ca-key ca.key --ca-cert ca.crt --key state/server.key --cert state/server.crt \
    --cn kvmbox-pki --server --san localhost --san 127.0.0.1 >/dev/null
cp ca.crt state/server.ca
# client NAME CA: a client config dir whose key pair that CA issued, and
# which trusts our CA for servers.
client() {
    mkdir -p "$1"
    $C issue --ca-key "$2.key" --ca-cert "$2.crt" --key "$1/client.key" --cert "$1/client.crt" \
        --cn "$1" --client --curve p384 >/dev/null
    cp ca.crt "$1/client.ca"
}
client good ca
client foreign other
client revoked ca

port=0
group_args=""
[ "$(id -u)" -ne 0 ] || group_args="--group root"
mkdir -p bin; ln -sf "$K" bin/kvmboxd
# start: the first time on a port the kernel picks, then on the same one.
start() {
    bin/kvmboxd $group_args --https "127.0.0.1:$port" 2>>daemon.log &
    pid=$!
    port=$(https_port daemon.log)
}
stop() { kill -TERM $pid; wait $pid || fail "kvmboxd exited non-zero"; pid=""; : >daemon.log; }
pid=""
trap '[ -z "$pid" ] || kill $pid 2>/dev/null || true' EXIT
start
contains "$(cat daemon.log)" "PKI mode"

kv() { KVMBOX_CONF=$PWD/$1 applet kvmbox "$@"; }
kv_as() { d=$1; shift; KVMBOX_CONF=$PWD/$d applet kvmbox "$@"; }

# No terminal, no flag, no password: client.ca vouches for the server and
# server.ca for the client.
out=$(kv_as good remote add pki "localhost:$port" </dev/null) || fail "remote add in PKI mode"
contains "$out" "signed by client.ca"
[ ! -e good/servercerts/pki.crt ] || fail "a CA-checked remote was pinned"
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "list over PKI"
contains "$(kv_as good info pki:)" "admin"

# A client whose certificate another CA issued: the handshake is refused.
expect_fail kv_as foreign remote add pki "127.0.0.1:$port"
grep -q "TLS handshake with 127.0.0.1:.* failed" daemon.log || fail "foreign client not refused in the handshake: $(cat daemon.log)"

# A server certificate client.ca did not sign falls back to the prompt,
# which without a terminal is an error.
mkdir -p wary; cp good/client.key good/client.crt wary/; cp other.crt wary/client.ca
expect_fail kv_as wary remote add pki "127.0.0.1:$port"
contains "$ERR" "no terminal"

# Revocation and expiry, by `openssl ca` with our CA's key.
mkdir -p db/new; : >db/index.txt; echo 1000 >db/serial; echo 01 >db/crlnumber
cat >ca.cnf <<CNF
[ca]
default_ca = d
[d]
database = db/index.txt
new_certs_dir = db/new
serial = db/serial
crlnumber = db/crlnumber
default_md = sha256
default_crl_days = 7
policy = p
x509_extensions = ext
crl_extensions = crl_ext
[ext]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
[crl_ext]
authorityKeyIdentifier = keyid:always
[p]
commonName = supplied
CNF
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -revoke revoked/client.crt >/dev/null 2>&1 || fail "openssl ca -revoke"
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -gencrl -out state/server.crl >/dev/null 2>&1 || fail "openssl ca -gencrl"
mkdir -p expired; cp ca.crt expired/client.ca
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout expired/client.key \
    -out e.csr -subj /CN=expired 2>/dev/null
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in e.csr -out expired/client.crt \
    -startdate 20200101000000Z -enddate 20200102000000Z >/dev/null 2>&1 || fail "openssl ca (expired)"

# Before the restart the CRL is not read: the revoked client still gets in.
kv_as revoked remote add before "127.0.0.1:$port" </dev/null >/dev/null || fail "revoked before the CRL was loaded"
stop
start
expect_fail kv_as revoked list before:
grep -qi "revoked" daemon.log || fail "revocation not the reason: $(cat daemon.log)"
expect_fail kv_as expired remote add pki "127.0.0.1:$port"
grep -qi "expired" daemon.log || fail "expiry not the reason: $(cat daemon.log)"
# The good client is unaffected by the CRL.
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "good client after CRL"

# An unreadable CRL stops the daemon rather than being ignored.
echo "not a crl" >state/server.crl
stop
if bin/kvmboxd $group_args --https "127.0.0.1:$port" 2>err.txt; then fail "started with a bad CRL"; fi
contains "$(cat err.txt)" "server.crl"
