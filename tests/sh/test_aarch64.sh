# The aarch64 build runs under qemu-user and makes a certificate.
. "$TESTLIB"
A=$(dirname "$K")/aarch64/kvmbox
[ -x "$A" ] || fail "no aarch64 build at $A"
file -L "$A" | grep -q "ARM aarch64" || fail "not aarch64: $(file -L "$A")"
[ "$(qemu-aarch64-static "$A" --list-applets | wc -l)" -eq 4 ] || fail "aarch64 --list-applets"
qemu-aarch64-static "$A" --applet kvmbox-cert gen --key k.pem --cert c.pem --cn arm
openssl x509 -in c.pem -noout -subject | grep -q "CN *= *arm" || fail "aarch64 cert subject"
openssl pkey -in k.pem -noout || fail "aarch64 key unreadable by openssl"
