# PKI mode (LXD's) with certificates from kvmbox-cert and revocation and
# expiry from the real `openssl ca`: a server certificate signed by the
# client's client.ca is accepted without a prompt; client certificates are
# checked against server.ca and server.crl during the handshake; a client
# certificate from another CA, a revoked one and an expired one are refused.
# A CA-signed certificate the trust store does not list gets
# core.pki_default_role (none unless set); one removed from the trust store
# stays refused, across restarts; server.crl is read again when it changes.
# Revocation is checked along the whole chain (an intermediate CA revoked
# by the root refuses what it signed), an expired CRL refuses what its CA
# signed, and a CRL that turns unusable keeps the last one read in force.
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
client second ca
client foreign other
client revoked ca
client listedrev ca

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

kv_as() { d=$1; shift; KVMBOX_CONF=$PWD/$d applet kvmbox "$@"; }
# The local administrator, over the Unix socket.
adm() { kv_as local "$@"; }

# Signed by the CA but not in the trust store, with core.pki_default_role
# unset: no role, and told why.
expect_fail kv_as good remote add pki "localhost:$port" </dev/null
contains "$ERR" "does not trust this client yet"
code=$(curl -sS -o body.json -w '%{http_code}' --cacert ca.crt --cert good/client.crt \
    --key good/client.key "https://localhost:$port/1.0/instances") || fail "curl"
[ "$code" = 403 ] || fail "unlisted CA-signed client got $code: $(cat body.json)"
contains "$(cat body.json)" "signed by the server's CA but is not in the trust store, and core.pki_default_role is unset"
expect_fail adm config set core.pki_default_role root
contains "$ERR" "none, auditor, user, operator or admin"

# As auditor: it reads, it does not start anything.
adm config set core.pki_default_role auditor
# No terminal, no flag, no password: client.ca vouches for the server and
# server.ca for the client.
out=$(kv_as good remote add pki "localhost:$port" </dev/null) || fail "remote add in PKI mode"
contains "$out" "signed by client.ca"
[ ! -e good/servercerts/pki.crt ] || fail "a CA-checked remote was pinned"
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "list over PKI"
contains "$(kv_as good info pki:)" "auditor"
expect_fail kv_as good start pki:vm1
contains "$ERR" "needs the user role"
# With the setting unset again, the kvmbox client says why too.
adm config unset core.pki_default_role
expect_fail kv_as good list pki:
contains "$ERR" "core.pki_default_role is unset"
adm config set core.pki_default_role auditor

# Trusted as admin, then removed: refused, not promoted to a default
# role, and still after a restart; adding it again lifts that.
adm config trust add good/client.crt --name good --role admin
contains "$(kv_as good info pki:)" "admin"
good_fp=$($C fingerprint good/client.crt)
adm config trust remove "$good_fp"
expect_fail kv_as good list pki:
contains "$ERR" "not authorized"
stop
start
expect_fail kv_as good list pki:
contains "$ERR" "its certificate was never added, or was removed"
code=$(curl -sS -o body.json -w '%{http_code}' --cacert ca.crt --cert good/client.crt \
    --key good/client.key "https://localhost:$port/1.0") || fail "curl"
contains "$(cat body.json)" '"auth":"untrusted"'
adm config trust add good/client.crt --name good --role admin
contains "$(kv_as good info pki:)" "admin"
# Unlisted clients still get the default role.
kv_as second remote add pki "localhost:$port" </dev/null >/dev/null || fail "second client"
contains "$(kv_as second info pki:)" "auditor"

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
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -revoke listedrev/client.crt >/dev/null 2>&1 || fail "openssl ca -revoke"
mkdir -p expired; cp ca.crt expired/client.ca
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout expired/client.key \
    -out e.csr -subj /CN=expired 2>/dev/null
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in e.csr -out expired/client.crt \
    -startdate 20200101000000Z -enddate 20200102000000Z >/dev/null 2>&1 || fail "openssl ca (expired)"

# A CRL written while the daemon runs applies at once, no restart, to
# listed certificates too.
adm config trust add listedrev/client.crt --name listedrev --role user
kv_as listedrev remote add lr "127.0.0.1:$port" </dev/null >/dev/null || fail "listed, before the CRL was written"
kv_as revoked remote add before "127.0.0.1:$port" </dev/null >/dev/null || fail "revoked before the CRL was written"
[ "$(kv_as revoked list before: --format json)" = "[]" ] || fail "revoked before the CRL was written"
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -gencrl -out state/server.crl >/dev/null 2>&1 || fail "openssl ca -gencrl"
expect_fail kv_as revoked list before:
grep -qi "revoked" daemon.log || fail "revocation not the reason: $(cat daemon.log)"
expect_fail kv_as listedrev list lr:
grep -q "server.crl loaded: 1 certificate revocation list" daemon.log || fail "CRL not reloaded: $(cat daemon.log)"
expect_fail kv_as expired remote add pki "127.0.0.1:$port"
grep -qi "expired" daemon.log || fail "expiry not the reason: $(cat daemon.log)"
# The other clients are unaffected by the CRL.
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "good client after CRL"
[ "$(kv_as second list pki: --format json)" = "[]" ] || fail "second client after CRL"

# An expired CRL (past its next update) refuses what its CA signed, listed
# or not; a current one lets them in again.
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -gencrl -out state/server.crl \
    -crl_lastupdate 20200101000000Z -crl_nextupdate 20200102000000Z >/dev/null 2>&1 || fail "openssl ca -gencrl (expired)"
expect_fail kv_as good list pki:
grep -q "revocation list expired" daemon.log || fail "CRL expiry not the reason: $(cat daemon.log)"
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -gencrl -out root.crl >/dev/null 2>&1 || fail "openssl ca -gencrl"
cp root.crl state/server.crl
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "good client after a current CRL"

# An intermediate CA signed by ours, and a client it issued that sends the
# chain (curl): server.crl must hold both CAs' CRLs, and revoking the
# intermediate refuses its client.
mkdir -p sub/db/new; : >sub/db/index.txt; echo 2000 >sub/db/serial; echo 01 >sub/db/crlnumber
sed 's|db/|sub/db/|' ca.cnf >sub/ca.cnf
cat >>ca.cnf <<CNF
[inter]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout sub/ca.key \
    -out sub/ca.csr -subj "/CN=Intermediate CA" 2>/dev/null
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -extensions inter -notext -days 30 \
    -in sub/ca.csr -out sub/ca.crt >/dev/null 2>&1 || fail "openssl ca (intermediate)"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout sub/client.key \
    -out sub/client.csr -subj /CN=sub 2>/dev/null
openssl ca -batch -config sub/ca.cnf -cert sub/ca.crt -keyfile sub/ca.key -notext -days 30 \
    -in sub/client.csr -out sub/client.crt >/dev/null 2>&1 || fail "openssl ca (sub client)"
cat sub/client.crt sub/ca.crt >sub/chain.pem
openssl ca -batch -config sub/ca.cnf -cert sub/ca.crt -keyfile sub/ca.key -gencrl \
    -out sub/ca.crl >/dev/null 2>&1 || fail "openssl ca -gencrl (intermediate)"
sub_get() {
    curl -sS -o body.json --cacert ca.crt --cert sub/chain.pem --key sub/client.key \
        "https://localhost:$port/1.0" 2>curl.err
}
# Only the root's CRL: nothing tells the client's status, so it is refused.
sub_get && fail "a client whose status no CRL tells got in: $(cat body.json)"
cat root.crl sub/ca.crl >state/server.crl
sub_get || fail "client of the intermediate CA: $(cat curl.err) $(cat daemon.log)"
contains "$(cat body.json)" '"auth_role":"auditor"'
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -revoke sub/ca.crt >/dev/null 2>&1 || fail "openssl ca -revoke (intermediate)"
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -gencrl -out root.crl >/dev/null 2>&1 || fail "openssl ca -gencrl"
cat root.crl sub/ca.crl >state/server.crl
sub_get && fail "the client of a revoked intermediate CA got in: $(cat body.json)"
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "good client after revoking the intermediate"

# A CRL that turns invalid while the daemon runs fails closed: a client the
# trust store does not list is refused, saying why; a listed one goes on,
# checked against the last CRL read, which still refuses a revoked one.
echo "not a crl" >state/server.crl
expect_fail kv_as second list pki:
contains "$ERR" "server.crl) is unusable"
grep -q "server.crl is unusable" daemon.log || fail "no log line for the bad CRL: $(cat daemon.log)"
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "listed client with a bad CRL"
expect_fail kv_as listedrev list lr:
rm state/server.crl
expect_fail kv_as listedrev list lr:
[ "$(kv_as good list pki: --format json)" = "[]" ] || fail "listed client with the CRL deleted"
echo "not a crl" >state/server.crl

# At start, an unreadable CRL stops the daemon rather than being ignored.
stop
if bin/kvmboxd $group_args --https "127.0.0.1:$port" 2>err.txt; then fail "started with a bad CRL"; fi
contains "$(cat err.txt)" "server.crl"
