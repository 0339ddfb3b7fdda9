# Helpers sourced by the shell tests: each check says what it expected.
set -eu
K=$KVMBOX_BIN
# The release binary's size budget, for every architecture: 2.5 MiB. The
# x86_64 build measured 2,209,552 bytes when it was set; what is left is
# room for the features still to come, not slack to spend casually.
SIZE_BUDGET=$((5 * 1024 * 1024 / 2))

fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_fail CMD…: the command must exit non-zero; its stderr is kept in $ERR.
expect_fail() {
    if "$@" >out.txt 2>err.txt; then fail "expected failure: $*"; fi
    ERR=$(cat err.txt)
}

# contains HAYSTACK NEEDLE
contains() { case "$1" in *"$2"*) ;; *) fail "expected '$2' in: $1" ;; esac; }

# one_line TEXT: an error message must be exactly one line.
one_line() { [ "$(printf '%s\n' "$1" | wc -l)" -eq 1 ] || fail "not one line: $1"; }

# applet NAME ARGS…: runs an applet through a symlink, as installed.
applet() { n=$1; shift; mkdir -p bin; ln -sf "$K" "bin/$n"; "bin/$n" "$@"; }

# https_port LOG: waits for kvmboxd to log its TLS listener (started on port
# 0, so that the kernel picks a free one) and prints the port.
https_port() {
    i=0
    until grep -q "listening on https://" "$1" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 200 ] || fail "no TLS listener: $(cat "$1")"; sleep 0.05
    done
    sed -n 's|.*listening on https://[^ ]*:\([0-9][0-9]*\)$|\1|p' "$1" | tail -n 1
}

# Sets $kernel and $initrd to copies of the test guest under ./guest, where
# a VM's own uid can read them: the cache sits inside the clone, whose
# parent directories may be closed to other users. The scratch directory
# must be open to them (chmod 711 .).
guest_assets() {
    _cache=$(sh "$REPO/qemu-tests/assets.sh" | tail -n 1) || fail "cannot build the guest assets"
    mkdir -p guest
    cp "$_cache/vmlinuz" "$_cache/initrd.gz" guest/ || fail "cannot copy the guest assets"
    chmod 755 guest && chmod 644 guest/vmlinuz guest/initrd.gz
    kernel=$PWD/guest/vmlinuz initrd=$PWD/guest/initrd.gz
}

# dgram_sink ADDR FILE: receives Unix datagrams at ADDR (a path, or @NAME
# for an abstract socket), appending each to FILE and a newline after it;
# runs until killed. FILE appears, empty, once the socket is bound.
dgram_sink() {
    python3 -c '
import socket, sys
addr, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
f = open(out, "ab", buffering=0)
while True:
    f.write(s.recv(65536) + b"\n")
' "$1" "$2" &
    _i=0
    until [ -e "$2" ]; do _i=$((_i + 1)); [ $_i -lt 200 ] || fail "no datagram sink at $1"; sleep 0.05; done
}

# wait_for FILE PATTERN: until a line of FILE matches (grep -E), 10 s at most.
wait_for() {
    _i=0
    until grep -Eq "$2" "$1" 2>/dev/null; do
        _i=$((_i + 1)); [ $_i -lt 200 ] || fail "no '$2' in $1: $(cat "$1" 2>/dev/null)"; sleep 0.05
    done
}

# lxc_daemon: starts kvmboxd on ./state (admin group root) with a TLS
# listener on a free loopback port, left in $port, for the client `kv` and
# the real `lxc` (its config in ./lxc); HOME and the like are unset, as on
# a bare host; the VMs' AppArmor profiles go to ./aa; KVMBOXD_ARGS, if set,
# adds options to kvmboxd's. On exit the daemon and every QEMU of ./state
# are killed.
lxc_daemon() {
    export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf LXD_CONF=$PWD/lxc
    unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
    mkdir -p bin lxc; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
    # shellcheck disable=SC2086 # KVMBOXD_ARGS is a list of options
    bin/kvmboxd --group root --https 127.0.0.1:0 ${KVMBOXD_ARGS:-} 2>daemon.log &
    dpid=$!
    trap end_daemon EXIT
    port=$(https_port daemon.log)
    # The VMs' AppArmor profiles go to the scratch directory, and with it.
    kv config set security.apparmor_profile_dir "$PWD/aa"
}
kv() { bin/kvmbox "$@"; }
end_daemon() {
    kill -9 "$dpid" 2>/dev/null || true
    for p in $(grep -lasF "$PWD/state/instances/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        kill -9 "$p" 2>/dev/null || true
    done
}

# state_consistent DIR: the daemon's state directory DIR is in no state a
# crash or a full disk may leave and must not: every JSON file parses, no
# temporary file is left (write_atomic's `.NAME.tmpPID`, an import's
# `.import-*`), every instance directory has its record, and every image
# its record and its disk, whose SHA-256 is its name.
state_consistent() {
    python3 - "$1" <<'PY' || fail "state directory $1 is inconsistent"
import hashlib, json, os, re, sys
d, bad = sys.argv[1], []
for root, _, files in os.walk(d):
    for f in files:
        p = os.path.join(root, f)
        if re.match(r"^\..*\.tmp[0-9]+$", f) or f.startswith(".import-"):
            bad.append(f"temporary file {p} left")
        elif f.endswith(".json"):
            try:
                json.load(open(p))
            except ValueError as e:
                bad.append(f"{p}: {e}")
inst = os.path.join(d, "instances")
for n in sorted(os.listdir(inst)) if os.path.isdir(inst) else []:
    if not os.path.exists(os.path.join(inst, n, "instance.json")):
        bad.append(f"instance directory {n} without a record")
img = os.path.join(d, "images")
for f in sorted(os.listdir(img)) if os.path.isdir(img) else []:
    base, ext = os.path.splitext(f)
    if ext == ".img":
        if not os.path.exists(os.path.join(img, base + ".json")):
            bad.append(f"image {f} without a record")
        with open(os.path.join(img, f), "rb") as data:
            h = hashlib.sha256(data.read()).hexdigest()
        if h != base:
            bad.append(f"image {f} has SHA-256 {h}")
    elif f == "aliases.json":
        # The alias table: every alias names a stored image.
        try:
            targets = json.load(open(os.path.join(img, f))).get("targets", {})
        except ValueError:
            targets = {}
        for name, fp in sorted(targets.items()):
            if not os.path.exists(os.path.join(img, fp + ".img")):
                bad.append(f"alias {name} names {fp}, which is not stored")
    elif ext == ".json" and not os.path.exists(os.path.join(img, base + ".img")):
        bad.append(f"image record {f} without its disk")
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# qemus_of UUID: how many processes have UUID in their command line (the
# pattern is bracketed so that grep's own command line does not match).
qemus_of() {
    grep -las "$(echo "$1" | sed 's/^\(.\)/[\1]/')" /proc/[0-9]*/cmdline | wc -l
}

# parser_wrapper: ./parser.sh, an apparmor_parser for kernels without
# AppArmor (given to the daemon as KVMBOX_AA_PARSER): it logs its arguments
# to ./parser.log, one call a line, compiles what it is asked to load with
# the real `apparmor_parser -Q -K -T`, and takes unloads as done.
parser_wrapper() {
    _parser=$(command -v apparmor_parser || echo /sbin/apparmor_parser)
    : >parser.log
    cat >parser.sh <<WRAPPER
#!/bin/sh
echo "\$*" >>"$PWD/parser.log"
mode=; args=
while [ \$# -gt 0 ]; do
    case \$1 in
    -r) mode=load ;;
    -R) mode=unload ;;
    -W) ;;
    -L) shift ;;
    *) args="\$args \$1" ;;
    esac
    shift
done
[ "\$mode" = unload ] && { cat >/dev/null; exit 0; }
exec $_parser -Q -K -T \$args
WRAPPER
    chmod 755 parser.sh
}
