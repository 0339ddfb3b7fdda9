# The cross builds (make cross ARCH=…) run under qemu-user: each is static,
# within the size budget (lib.sh), lists its applets, makes a certificate that
# OpenSSL reads, and runs the daemon, which answers `kvmbox info` from the
# same build over its Unix socket.
. "$TESTLIB"

# ARCH:what `file` says:its qemu-user:Rust's name for the arch
arches="aarch64:ARM aarch64:qemu-aarch64-static:aarch64
armv7:ARM, EABI5:qemu-arm-static:arm
riscv64:RISC-V:qemu-riscv64-static:riscv64"

group_args=""
[ "$(id -u)" -ne 0 ] || group_args="--group root"
pid=""
# A failing check must not leave a daemon behind.
trap '[ -z "$pid" ] || kill $pid 2>/dev/null || true' EXIT

# Not a `while read` in a pipeline: its subshell would not run the trap.
IFS='
'
for rec in $arches; do
    IFS=:; set -- $rec; unset IFS
    arch=$1 machine=$2 qemu=$3 rust_arch=$4
    A=$(dirname "$K")/$arch/kvmbox
    [ -x "$A" ] || fail "no $arch build at $A (make cross ARCH=$arch)"
    info=$(file -L "$A")
    contains "$info" "$machine"
    # Rust links a static PIE only on x86_64 (test_binary.sh checks that one).
    case "$info" in *"statically linked"*|*"static-pie linked"*) ;; *) fail "$arch: not static: $info" ;; esac
    size=$(stat -c %s "$A")
    [ "$size" -le "$SIZE_BUDGET" ] || fail "$arch binary is $size bytes, budget $SIZE_BUDGET"
    echo "$arch size $size bytes"

    [ "$("$qemu" "$A" --list-applets | tr '\n' ' ')" = "kvmbox kvmbox-aa-helper kvmbox-cert kvmboxd " ] \
        || fail "$arch --list-applets"

    mkdir "$arch"; cd "$arch"
    "$qemu" "$A" --applet kvmbox-cert gen --key k.pem --cert c.pem --cn "$arch"
    openssl x509 -in c.pem -noout -subject | grep -q "CN *= *$arch" || fail "$arch cert subject"
    openssl pkey -in k.pem -noout || fail "$arch key unreadable by openssl"
    [ "$("$qemu" "$A" --applet kvmbox-cert fingerprint c.pem)" = \
      "$(openssl x509 -in c.pem -outform der | sha256sum | cut -d' ' -f1)" ] || fail "$arch fingerprint"
    contains "$("$qemu" "$A" --applet kvmbox-cert show c.pem)" "ecdsa-p256"

    # qemu-user runs the program in its own process: $! is the daemon.
    "$qemu" "$A" --applet kvmboxd $group_args --state-dir "$PWD/state" 2>daemon.log &
    pid=$!
    i=0
    while [ ! -S state/unix.socket ]; do
        i=$((i + 1)); [ $i -lt 600 ] || fail "$arch: no socket: $(cat daemon.log)"; sleep 0.05
    done
    out=$(KVMBOX_CONF=$PWD/conf "$qemu" "$A" --applet kvmbox --socket state/unix.socket info --format json) \
        || fail "$arch: kvmbox info: $(cat daemon.log)"
    contains "$out" '"auth": "trusted"'
    # The answer comes from this build's daemon, not from another one.
    contains "$(echo "$out" | tr -d ' \n')" "\"architectures\":[\"$rust_arch\"]"
    kill -TERM $pid
    wait $pid || fail "$arch: kvmboxd exited non-zero on SIGTERM: $(cat daemon.log)"
    pid=""
    [ ! -e state/unix.socket ] || fail "$arch: socket left behind"
    cd ..
done
