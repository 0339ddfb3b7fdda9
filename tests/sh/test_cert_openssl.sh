# kvmbox-cert against the real OpenSSL: each side reads what the other made.
. "$TESTLIB"
C="applet kvmbox-cert"

$C ca init --key ca.key --cert ca.crt --cn "Test CA"
$C issue --ca-key ca.key --ca-cert ca.crt --key srv.key --cert srv.crt --cn localhost --server --san localhost --san 127.0.0.1
$C issue --ca-key ca.key --ca-cert ca.crt --key cli.key --cert cli.crt --cn alice --client --curve p384
$C gen --key self.key --cert self.crt --cn edge1 --san edge1.example

# Keys are private.
for k in ca.key srv.key cli.key self.key; do
    [ "$(stat -c %a "$k")" = 600 ] || fail "$k mode $(stat -c %a "$k")"
done

# OpenSSL verifies our chain and reads our extensions.
openssl verify -CAfile ca.crt srv.crt | grep -q ": OK" || fail "openssl verify srv"
openssl verify -CAfile ca.crt -purpose sslserver srv.crt >/dev/null || fail "srv not for sslserver"
openssl verify -CAfile ca.crt -purpose sslclient cli.crt >/dev/null || fail "cli not for sslclient"
if openssl verify -CAfile ca.crt -purpose sslclient srv.crt >/dev/null 2>&1; then fail "server leaf usable as client"; fi
openssl verify -CAfile self.crt self.crt >/dev/null || fail "self-signed does not verify against itself"
openssl x509 -in ca.crt -noout -text | grep -q "CA:TRUE" || fail "CA lacks CA:TRUE"
openssl x509 -in srv.crt -noout -text | grep -q "ecdsa-with-SHA256" || fail "srv signature alg"
openssl x509 -in srv.crt -noout -ext subjectAltName | grep -q "IP Address:127.0.0.1" || fail "srv IP SAN"
openssl x509 -in cli.crt -noout -text | grep -q "NIST CURVE: P-384" || fail "p384 client key"
openssl pkey -in cli.key -noout || fail "openssl cannot read our key"

# Our fingerprint is OpenSSL's, lowercase without colons.
for c in ca.crt srv.crt cli.crt self.crt; do
    ours=$($C fingerprint "$c")
    theirs=$(openssl x509 -in "$c" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f)
    [ "$ours" = "$theirs" ] || fail "fingerprint $c: $ours vs $theirs"
    [ ${#ours} -eq 64 ] || fail "fingerprint length"
done

# OpenSSL-made EC certificates are read by show, fingerprint and verify.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout o.key -out o.crt \
    -subj /CN=openssl-made -days 2 -addext subjectAltName=DNS:o.example 2>/dev/null
$C show o.crt | grep -q "Key type:    ecdsa-p384" || fail "show openssl cert"
$C show --format json o.crt | grep -q '"subject": "CN=openssl-made"' || fail "show json"
$C show --format json o.crt | grep -q '"DNS:o.example"' || fail "show json sans"
[ "$($C fingerprint o.crt)" = "$(openssl x509 -in o.crt -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f)" ] || fail "fingerprint of openssl cert"
$C issue --ca-key self.key --ca-cert self.crt --key x.key --cert x.crt --cn x --client 2>err.txt && fail "issued from a non-CA cert"
[ ! -e x.key ] && [ ! -e x.crt ] || fail "a refused issue wrote files"
contains "$(cat err.txt)" "not a CA"

# verify: our chain passes, a foreign CA and expiry fail.
$C verify --ca ca.crt srv.crt >/dev/null
$C ca init --key ca2.key --cert ca2.crt
expect_fail $C verify --ca ca2.crt srv.crt
contains "$ERR" "not issued by the given CA"
# An expired leaf signed by our CA, made with `openssl ca` (it can backdate).
mkdir -p db/new; : >db/index.txt; echo 1000 >db/serial
cat >ca.cnf <<CNF
[ca]
default_ca = d
[d]
database = db/index.txt
new_certs_dir = db/new
serial = db/serial
default_md = sha256
policy = p
x509_extensions = ext
[ext]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
[p]
commonName = supplied
CNF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout e.key -out e.csr -subj /CN=expired 2>/dev/null
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in e.csr -out e.crt \
    -startdate 20200101000000Z -enddate 20200102000000Z >/dev/null 2>&1 || fail "openssl ca"
expect_fail $C verify --ca ca.crt e.crt
contains "$ERR" "expired"
one_line "$ERR"

# TLS with the real OpenSSL on both ends: our server cert/key in s_server,
# our client cert/key in s_client; the server demands and checks the client cert.
port=$(( 20000 + $$ % 20000 ))
openssl s_server -accept "127.0.0.1:$port" -cert srv.crt -key srv.key -CAfile ca.crt \
    -Verify 1 -verify_return_error -naccept 1 -www >server.log 2>&1 &
spid=$!
i=0; until grep -q ACCEPT server.log 2>/dev/null; do i=$((i+1)); [ $i -lt 50 ] || fail "s_server did not start"; sleep 0.1; done
out=$(printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -connect "127.0.0.1:$port" -servername localhost \
    -CAfile ca.crt -verify_return_error -cert cli.crt -key cli.key -ign_eof 2>&1) || true
wait $spid || true
contains "$out" "Verify return code: 0 (ok)"
contains "$out" "Protocol  : TLSv1.3"
contains "$(cat server.log)" "depth=0 CN = alice"
