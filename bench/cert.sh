# Binary sizes and certificate generation against OpenSSL.
. "$BENCHLIB"
x86=$(stat -c %s "$K")
arm=$(stat -c %s "$(dirname "$K")/aarch64/kvmbox" 2>/dev/null || echo 0)
echo "| binary size x86_64 (bytes) | $x86 | budget 2621440 | $(ratio "$x86" 2621440) |"
echo "| binary size aarch64 (bytes) | $arm | budget 2621440 | $(ratio "$arm" 2621440) |"

ours() { rm -f k.pem c.pem; "$K" --applet kvmbox-cert gen --key k.pem --cert c.pem --cn bench; }
peer() {
    rm -f k.pem c.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout k.pem -out c.pem -subj /CN=bench -days 3650
}
ours >/dev/null 2>&1; peer >/dev/null 2>&1 # warm the page cache for both
row "cert gen P-256 wall ms, mean of 50 (ours fsyncs key, cert and dir; openssl req does not)" "$(wall_ms 50 ours)" "$(wall_ms 50 peer)"
row "cert gen P-256 peak RSS KiB vs openssl req" "$(peak_kib ours)" "$(peak_kib peer)"
