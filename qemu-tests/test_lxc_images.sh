# Images uploaded through LXD's API, as the real `lxc` 5.0 sends them: a
# unified tarball and the split form (metadata tarball + qcow2 rootfs),
# their fingerprints as LXD computes them, aliases created, renamed and
# deleted, and a VM launched from an uploaded image. Every refusal an
# upload can meet is tried, and none may leave anything in the store:
# too large, truncated, stalled, compressed, for another architecture,
# not a VM image, a wrong X-LXD-fingerprint, content already there.
. "$TESTLIB"
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"
command -v curl >/dev/null || fail "curl is not installed"

chmod 711 .
guest_assets
# Requests (and upload reads) time out after 4 s, for the stalled upload.
KVMBOXD_ARGS="--timeout 4" lxc_daemon
boot="-c boot.kernel=$kernel -c boot.initrd=$initrd -c boot.cmdline=console=ttyS0 -c limits.memory=256MiB"
kv config set core.trust_password images-pw
timeout 60 lxc remote add kb "https://127.0.0.1:$port" --accept-certificate \
    --password images-pw >/dev/null 2>&1 || fail "lxc remote add"
store=$PWD/state/images
sock=$PWD/state/lxd/unix.socket

# Nothing but committed images and the alias table in the store.
store_clean() {
    left=$(ls -A "$store" | grep -v -e '^[0-9a-f]\{64\}\.img$' -e '^[0-9a-f]\{64\}\.json$' -e '^aliases\.json$' || true)
    [ -z "$left" ] || fail "$1 left $left in the image store"
}
images_now() { ls "$store" | grep -c '\.img$' || true; }
api() { curl -s --max-time 60 --unix-socket "$sock" "$@"; }
# upload FILE CURL-ARGS…: POSTs FILE as an image over the LXD socket and
# prints the finished operation (or the error answer).
upload() {
    f=$1; shift
    out=$(api -X POST -H 'Content-Type: application/octet-stream' "$@" --data-binary "@$f" http://kb/1.0/images)
    op=$(printf '%s' "$out" | sed -n 's|.*"operation":"\(/1.0/operations/[^"]*\)".*|\1|p')
    if [ -z "$op" ]; then printf '%s\n' "$out"; return; fi
    api "http://kb$op/wait?timeout=60"
}
fp_of() { lxc image info "kb:$1" | sed -n 's/^Fingerprint: //p'; }
sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# The images: metadata.yaml as LXD writes it, an empty qcow2 disk (the
# busybox guest boots from its kernel and initrd).
arch=$(uname -m)
meta() {
    mkdir -p "m-$1"
    printf 'architecture: %s\ncreation_date: 1700000000\nproperties:\n  description: "%s image"\n  os: busybox\ntemplates: {}\n' \
        "$2" "$1" >"m-$1/metadata.yaml"
}
meta uni "$arch"
qemu-img create -q -f qcow2 m-uni/rootfs.img 64M
tar -C m-uni -cf unified.tar metadata.yaml rootfs.img
meta split "$arch"
tar -C m-split -cf meta.tar metadata.yaml
qemu-img create -q -f qcow2 rootfs-split.qcow2 96M

# A unified tarball: the fingerprint is SHA-256 of the whole of it.
out=$(timeout 120 lxc image import unified.tar kb: --alias uni 2>&1) || fail "lxc image import unified: $out"
contains "$out" "Image imported with fingerprint: $(sha unified.tar)"
[ "$(fp_of uni)" = "$(sha unified.tar)" ] || fail "unified: fingerprint $(fp_of uni)"
# The split form: SHA-256 of the metadata tarball then the rootfs.
out=$(timeout 120 lxc image import meta.tar rootfs-split.qcow2 kb: --alias split 2>&1) ||
    fail "lxc image import split: $out"
[ "$(fp_of split)" = "$(sha meta.tar rootfs-split.qcow2)" ] || fail "split: fingerprint $(fp_of split)"
# The stored image is the disk, byte for byte.
cmp "$store/$(sha meta.tar rootfs-split.qcow2).img" rootfs-split.qcow2 || fail "the stored disk is not the rootfs"
cmp "$store/$(sha unified.tar).img" m-uni/rootfs.img || fail "the stored disk is not the tarball's rootfs.img"
list=$(timeout 30 lxc image list kb: --format csv)
contains "$list" "uni,$(sha unified.tar | cut -c1-12),no,uni image,$arch,VIRTUAL-MACHINE"
contains "$list" "split,$(sha meta.tar rootfs-split.qcow2 | cut -c1-12),no,split image,$arch,VIRTUAL-MACHINE"
# Real images are many times a request head: lxc sends them chunked, 32 KiB
# at a time, and 150 MiB of them must go through whole.
qemu-img create -q -f qcow2 large.qcow2 256M
qemu-io -f qcow2 -c "write -P 0x5a 0 150M" large.qcow2 >/dev/null || fail "qemu-io write"
out=$(timeout 300 lxc image import meta.tar large.qcow2 kb: --alias large 2>&1) ||
    fail "lxc image import of 150 MiB: $out"
[ "$(fp_of large)" = "$(sha meta.tar large.qcow2)" ] || fail "large: fingerprint $(fp_of large)"
cmp "$store/$(sha meta.tar large.qcow2).img" large.qcow2 || fail "large: the stored disk differs"
timeout 60 lxc image delete kb:large || fail "lxc image delete large"
rm -f large.qcow2
store_clean "two imports"

# Aliases: several per image, each unique, renamed, retargeted, deleted.
timeout 30 lxc image alias create kb:extra "$(fp_of uni)" || fail "lxc image alias create"
contains "$(timeout 30 lxc image info kb:extra)" "Fingerprint: $(sha unified.tar)"
contains "$(timeout 30 lxc image alias list kb: --format csv)" "extra,$(sha unified.tar | cut -c1-12)"
expect_fail timeout 30 lxc image alias create kb:extra "$(fp_of split)"
contains "$ERR" "already exists"
expect_fail timeout 30 lxc image alias create kb:nothere 0123456789ab
contains "$ERR" "not found"
expect_fail timeout 30 lxc image alias create kb:Bad_Name "$(fp_of uni)"
contains "$ERR" "invalid image alias"
timeout 30 lxc image alias rename kb:extra renamed || fail "lxc image alias rename"
aliases=$(timeout 30 lxc image alias list kb: --format csv)
contains "$aliases" "renamed,"
case "$aliases" in *"extra,"*) fail "the old name is still listed: $aliases" ;; esac
expect_fail timeout 30 lxc image alias rename kb:renamed split
contains "$ERR" "already exists"
expect_fail timeout 30 lxc image alias rename kb:gone other
contains "$ERR" "not found"
# Retarget and describe it (PATCH, as lxc image alias edit does with PUT).
api -X PATCH -d "{\"target\":\"$(fp_of split)\",\"description\":\"moved\"}" http://kb/1.0/images/aliases/renamed |
    grep -q '"status_code":200' || fail "PATCH of an alias"
contains "$(timeout 30 lxc image alias list kb: --format csv)" "renamed,$(sha meta.tar rootfs-split.qcow2 | cut -c1-12),VIRTUAL-MACHINE,moved"
timeout 30 lxc image alias delete kb:renamed || fail "lxc image alias delete"
expect_fail timeout 30 lxc image alias delete kb:renamed
contains "$ERR" "not found"
[ "$(images_now)" = 2 ] || fail "an alias change touched the images: $(ls "$store")"

# A VM launched from an uploaded image, by its alias; an image in use is
# not deleted.
# shellcheck disable=SC2086 # $boot is a list of options
timeout 180 lxc launch kb:uni kb:vm1 --vm $boot >/dev/null || fail "lxc launch kb:uni --vm"
contains "$(timeout 30 lxc list kb: --format csv -c ns)" "vm1,RUNNING"
expect_fail timeout 30 lxc image delete kb:uni
contains "$ERR" "in use"
[ -e "$store/$(sha unified.tar).img" ] || fail "the image in use went"

# The same content again: refused, and the stored image stays.
expect_fail timeout 120 lxc image import unified.tar kb:
contains "$ERR" "already exists"
[ -e "$store/$(sha unified.tar).img" ] || fail "a refused duplicate removed the stored image"
store_clean "a duplicate upload"
timeout 120 lxc delete kb:vm1 --force || fail "lxc delete vm1"

# Refused, each leaving nothing: a container image, a compressed tarball,
# another architecture, no metadata.yaml, a split form whose rootfs is a
# squashfs (lxc sends it as a container's "rootfs" part).
before=$(images_now)
meta ctr "$arch"; head -c 4096 /dev/zero >m-ctr/rootfs.squashfs
tar -C m-ctr -cf container.tar metadata.yaml rootfs.squashfs
expect_fail timeout 120 lxc image import container.tar kb:
contains "$ERR" "only virtual-machine images"
gzip -c unified.tar >unified.tar.gz
expect_fail timeout 120 lxc image import unified.tar.gz kb:
contains "$ERR" "gzip-compressed"
meta other s390x; qemu-img create -q -f qcow2 m-other/rootfs.img 32M
tar -C m-other -cf other.tar metadata.yaml rootfs.img
expect_fail timeout 120 lxc image import other.tar kb:
contains "$ERR" "is for \"s390x\""
tar -C m-other -cf nometa.tar rootfs.img
expect_fail timeout 120 lxc image import nometa.tar kb:
contains "$ERR" "no metadata.yaml"
{ printf hsqs; head -c 4096 /dev/zero; } >rootfs.squashfs
expect_fail timeout 120 lxc image import meta.tar rootfs.squashfs kb:
contains "$ERR" "container image"
[ "$(images_now)" = "$before" ] || fail "a refused upload stored an image"
store_clean "refused uploads"

# A bare disk, as kvmbox's client sends one, with aliases in the header;
# X-LXD-fingerprint is checked.
head -c 65536 /dev/urandom >raw.img
out=$(upload raw.img -H 'X-LXD-fingerprint: 0000000000000000000000000000000000000000000000000000000000000000')
contains "$out" "fingerprints don't match"
store_clean "a wrong fingerprint"
out=$(upload raw.img -H "X-LXD-fingerprint: $(sha raw.img)" -H 'X-LXD-aliases: rawa,rawb')
contains "$out" "\"fingerprint\":\"$(sha raw.img)\""
[ "$(fp_of rawa)" = "$(sha raw.img)" ] && [ "$(fp_of rawb)" = "$(sha raw.img)" ] || fail "X-LXD-aliases"
out=$(upload raw.img)
contains "$out" "already exists"
[ -e "$store/$(sha raw.img).img" ] || fail "a refused duplicate removed the stored image"
# Aliases taken: the upload is refused whole.
head -c 65536 /dev/urandom >raw2.img
out=$(upload raw2.img -H 'X-LXD-aliases: fresh,rawa')
contains "$out" "already exists"
expect_fail timeout 30 lxc image info kb:fresh
store_clean "an upload with a taken alias"

# Over images.max_upload_size: refused at once with a Content-Length,
# mid-body when chunked (as lxc sends it).
kv config set images.max_upload_size 32MiB
head -c 40M /dev/urandom >m-other/rootfs.img
tar -C m-other -cf big.tar metadata.yaml rootfs.img
# (curl waits for the answer before it sends the body, so the refusal
# cannot race the upload.)
out=$(upload m-other/rootfs.img -H 'Expect: 100-continue')
contains "$out" "larger than the 33554432 bytes"
out=$(python3 - "$sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"POST /1.0/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n4000\r\n" + b"x" * 16384 + b"\r\n2000000\r\n")
s.settimeout(30)
print(s.recv(4096).decode(errors="replace"))
EOF
)
contains "$out" "HTTP/1.1 413"
contains "$out" "larger than the 33554432 bytes"
expect_fail timeout 120 lxc image import big.tar kb:
store_clean "an upload over the limit"
kv config set images.max_upload_size 1GiB
expect_fail kv config set images.max_upload_size lots
[ "$(images_now)" = "$((before + 1))" ] || fail "uploads over the limit stored an image"

# Truncated and stalled: a raw socket sends part of the body, then closes
# (or goes silent past the daemon's timeout). While it sends, the upload
# is in the store; after, nothing is.
python3 - "$sock" "$store" <<'EOF' || fail "truncated uploads"
import os, socket, sys, time
sock, store = sys.argv[1], sys.argv[2]
def staged():
    return [f for f in os.listdir(store) if f.startswith(".")]
def wait(cond, what):
    for _ in range(200):
        if cond():
            return
        time.sleep(0.05)
    sys.exit(what + ": " + repr(staged()))
for framing in (b"Content-Length: 1000000\r\n", b"Transfer-Encoding: chunked\r\n"):
    for end in ("close", "stall"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(b"POST /1.0/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n" + framing + b"\r\n")
        data = b"x" * 65536
        s.sendall((b"10000\r\n" + data + b"\r\n") if b"chunked" in framing else data)
        wait(lambda: staged(), "no upload staged while it came")
        if end == "close":
            s.close()
        else:
            s.settimeout(30)
            answer = s.recv(4096)
            if b"408" not in answer.split(b"\r\n")[0]:
                sys.exit("a stalled upload got " + repr(answer[:80]))
            s.close()
        wait(lambda: not staged(), "a %s upload left files" % end)
EOF
store_clean "truncated uploads"

# kvmbox's own client uploads to a remote (it cannot name a path there).
srv_fp=$(kv info --format json | sed -n 's/.*"certificate_fingerprint": "\([0-9a-f]*\)".*/\1/p')
printf 'images-pw\n' >pw
timeout 60 bin/kvmbox remote add kbx "127.0.0.1:$port" --fingerprint "$srv_fp" --password-file pw >/dev/null ||
    fail "kvmbox remote add"
qemu-img create -q -f qcow2 kvdisk.qcow2 48M
out=$(timeout 120 bin/kvmbox image import kvdisk.qcow2 --alias kbx:kvup 2>&1) || fail "kvmbox image import to a remote: $out"
contains "$out" "$(sha kvdisk.qcow2)"
[ "$(fp_of kvup)" = "$(sha kvdisk.qcow2)" ] || fail "kvmbox upload: fingerprint $(fp_of kvup)"
expect_fail timeout 120 bin/kvmbox image import kvdisk.qcow2 --alias kbx:kvup2
contains "$ERR" "already exists"
store_clean "kvmbox uploads"
