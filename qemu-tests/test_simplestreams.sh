# Images pulled from a simplestreams server, as LXD pulls them: a local
# mirror (index, products, an LXD metadata tarball and a qcow2 disk) served
# over HTTPS by its own CA, which the daemon and lxc trust through
# SSL_CERT_FILE. The real `lxc image copy MIRROR:debian/12 kb: --vm`, then
# `lxc launch`, and `lxc launch MIRROR:debian/12` straight from it;
# `kvmbox launch images:debian/12` with `images` pointed at
# the mirror; then a server that truncates, stalls, redirects, lies about
# a hash or a size, sends a chunked body, or serves bad JSON: each pull
# fails within its bound and leaves the image store as it was.
. "$TESTLIB"
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"
command -v openssl >/dev/null || fail "openssl is not installed"

chmod 711 .
guest_assets
boot="-c boot.kernel=$kernel -c boot.initrd=$initrd -c boot.cmdline=console=ttyS0 -c limits.memory=256MiB"

# The CA and the mirror's certificate (for 127.0.0.1 only).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=mirror-ca -keyout ca.key -out ca.crt 2>/dev/null || fail "cannot make the CA"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=mirror \
    -keyout srv.key -out srv.csr 2>/dev/null || fail "cannot make the server key"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >srv.ext
openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile srv.ext -out srv.crt 2>/dev/null || fail "cannot sign the server certificate"
export SSL_CERT_FILE=$PWD/ca.crt

# The mirror: a small qcow2 disk (the guest's initramfs on it, so that its
# content is the test's own) and LXD's metadata tarball.
m=mirror
mkdir -p $m/streams/v1 $m/images/d $m/badjson/streams/v1 $m/trunc $m/stall $m/redirect $m/chunked
truncate -s 4M raw.img
dd if="$initrd" of=raw.img conv=notrunc 2>/dev/null
qemu-img convert -f raw -O qcow2 raw.img $m/images/d/disk.qcow2
mkdir meta
printf 'architecture: x86_64\ncreation_date: 1704067200\nproperties:\n  os: Debian\n  release: "12"\n' \
    >meta/metadata.yaml
tar -C meta -cJf $m/images/d/lxd.tar.xz metadata.yaml
for d in trunc stall redirect chunked; do cp -r $m/images $m/$d/; done
echo '{"index": {' >$m/badjson/streams/v1/index.json

python3 - "$m" <<'EOF'
import hashlib, json, os, sys
m = sys.argv[1]
def item(path, ftype, **extra):
    data = open(os.path.join(m, path), "rb").read()
    return dict(ftype=ftype, path=path, sha256=hashlib.sha256(data).hexdigest(),
                size=len(data), **extra)
meta = open(m + "/images/d/lxd.tar.xz", "rb").read()
disk = open(m + "/images/d/disk.qcow2", "rb").read()
fp = hashlib.sha256(meta + disk).hexdigest()
open("fingerprint", "w").write(fp)
def product(alias, disk_path, disk_change={}, meta_change={}):
    mi = item("images/d/lxd.tar.xz", "lxd.tar.xz", **{"combined_disk-kvm-img_sha256": fp})
    mi.update(meta_change)
    di = item(disk_path, "disk-kvm.img")
    di.update(disk_change)
    return {"aliases": alias + "/default," + alias, "arch": "amd64", "os": "Debian",
            "release": "12", "release_title": "bookworm",
            "versions": {"20240101_00:00": {"items": {"lxd.tar.xz": mi, "disk.qcow2": di}}}}
products = {
    "debian:12:amd64:default": product("debian/12", "images/d/disk.qcow2"),
    "trunc:12": product("trunc/12", "trunc/images/d/disk.qcow2"),
    "stall:12": product("stall/12", "stall/images/d/disk.qcow2"),
    "redirect:12": product("redirect/12", "redirect/images/d/disk.qcow2"),
    "chunked:12": product("chunked/12", "chunked/images/d/disk.qcow2"),
    "badsha:12": product("badsha/12", "images/d/disk.qcow2", {"sha256": "0" * 64}),
    "badfp:12": product("badfp/12", "images/d/disk.qcow2",
                        meta_change={"combined_disk-kvm-img_sha256": "1" * 64}),
    "short:12": product("short/12", "images/d/disk.qcow2", {"size": len(disk) - 1}),
    "long:12": product("long/12", "images/d/disk.qcow2", {"size": len(disk) + 1}),
    "gone:12": product("gone/12", "images/d/disk.qcow2", {"path": "images/d/nothing.qcow2"}),
    # 256 GiB: the largest disk the daemon pulls, more than the store has free.
    "huge:12": product("huge/12", "images/d/disk.qcow2", {"size": 256 << 30}),
}
json.dump({"format": "products:1.0", "content_id": "images", "datatype": "image-downloads",
           "products": products}, open(m + "/streams/v1/images.json", "w"))
json.dump({"format": "index:1.0", "index": {"images": {
    "datatype": "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
    "products": sorted(products)}}}, open(m + "/streams/v1/index.json", "w"))
EOF
fp=$(cat fingerprint)

(cd $m && exec python3 "$REPO/qemu-tests/simplestreams_server.py" ../srv.crt ../srv.key ../mport ../requests.log) \
    2>server.log &
spid=$!
i=0
until [ -s mport ]; do i=$((i + 1)); [ $i -lt 200 ] || fail "the mirror did not start: $(cat server.log)"; sleep 0.05; done
mport=$(cat mport)
mirror=https://127.0.0.1:$mport

lxc_daemon
trap 'end_daemon; kill $spid 2>/dev/null || true' EXIT
store=$PWD/state/images
# count: the files in the image store (temporary ones included), its alias
# table aside.
count() { ls -A "$store" 2>/dev/null | grep -vx aliases.json | wc -l; }

# lxc pulls it into kvmboxd, and launches it.
kv config set core.trust_password ss-pw
timeout 60 lxc remote add kb "https://127.0.0.1:$port" --accept-certificate --password ss-pw \
    >/dev/null 2>&1 || fail "lxc remote add kb"
timeout 30 lxc remote add mirror "$mirror" --protocol simplestreams >/dev/null 2>&1 ||
    fail "lxc remote add mirror --protocol simplestreams"
out=$(timeout 120 lxc image copy mirror:debian/12 kb: --vm 2>&1) || fail "lxc image copy: $out"
contains "$out" "Image copied successfully"
list=$(timeout 30 lxc image list kb: --format csv) || fail "lxc image list: $list"
contains "$list" "debian-12,$(echo "$fp" | cut -c1-12),"
[ -f "$store/$fp.img" ] || fail "the disk is not stored under LXD's fingerprint $fp"
cmp "$store/$fp.img" $m/images/d/disk.qcow2 || fail "the stored disk is not the mirror's"
[ "$(count)" -eq 2 ] || fail "the store holds more than the image: $(ls -A "$store")"
# shellcheck disable=SC2086 # $boot is a list of options
timeout 120 lxc launch kb:debian-12 kb:vm1 --vm $boot >/dev/null 2>&1 || fail "lxc launch kb:debian-12"
contains "$(timeout 30 lxc list kb: --format csv -c ns)" "vm1,RUNNING"

# The same content again, while an instance uses it: reported, not touched.
inode=$(stat -c %i "$store/$fp.img")
out=$(timeout 120 lxc image copy mirror:debian/12 kb: --vm 2>&1) || fail "lxc image copy again: $out"
[ "$(stat -c %i "$store/$fp.img")" = "$inode" ] || fail "the image in use was replaced"
[ "$(count)" -eq 2 ] || fail "a second copy left files: $(ls -A "$store")"
contains "$(cat daemon.log)" "pulled again: it is in the store already"
timeout 60 lxc delete kb:vm1 --force || fail "lxc delete"
timeout 60 lxc image delete "kb:$fp" || fail "lxc image delete"
[ "$(count)" -eq 0 ] || fail "the store is not empty: $(ls -A "$store")"

# kvmbox's own client: `images` pointed at the mirror; the daemon downloads.
kv remote add images "$mirror" --protocol simplestreams >/dev/null || fail "kvmbox remote add images"
contains "$(kv remote list --format csv)" "images,$mirror,simplestreams"
expect_fail kv remote switch images
contains "$ERR" "image server"
: >requests.log
# shellcheck disable=SC2086
timeout 120 bin/kvmbox launch images:debian/12 vm2 $boot >launch.out 2>progress.txt ||
    fail "kvmbox launch images:debian/12: $(cat progress.txt)"
contains "$(cat progress.txt)" "Retrieving image: rootfs: 100%"
contains "$(cat requests.log)" "/images/d/disk.qcow2"
contains "$(kv image list --format csv)" "debian-12,$(echo "$fp" | cut -c1-12)"
contains "$(kv list --format csv)" "vm2"
out=$(kv image copy images:debian/12) || fail "kvmbox image copy again: $out"
contains "$out" "in the image store already"
kv delete vm2 --force || fail "kvmbox delete vm2"

# lxc launching straight from the mirror: one operation on the daemon pulls
# the image and makes the instance on it.
timeout 60 lxc image delete "kb:$fp" || fail "lxc image delete"
: >requests.log
# shellcheck disable=SC2086
timeout 180 lxc launch mirror:debian/12 kb:vm3 --vm $boot >/dev/null 2>launch3.err ||
    fail "lxc launch mirror:debian/12 kb:vm3: $(cat launch3.err)"
contains "$(timeout 30 lxc list kb: --format csv -c ns)" "vm3,RUNNING"
contains "$(cat requests.log)" "/images/d/disk.qcow2"
contains "$(kv image list --format csv)" "debian-12,$(echo "$fp" | cut -c1-12)"
# shellcheck disable=SC2086
expect_fail timeout 60 lxc launch mirror:debian/12 kb:vm3 --vm $boot
contains "$ERR" "already exists"
timeout 60 lxc delete kb:vm3 --force || fail "lxc delete vm3"

# Each failure: a clear error, within its bound, and the store as it was
# (another image in it; the mirror's gone, or its content would be found
# there and nothing downloaded).
timeout 60 lxc image delete "kb:$fp" || fail "lxc image delete"
qemu-img create -q -f qcow2 other.qcow2 16M
kv image import "$PWD/other.qcow2" --alias other >/dev/null
before=$(ls -A "$store")
[ "$(count)" -eq 2 ] || fail "the store holds $(ls -A "$store")"
pull_fails() { # ALIAS EXPECTED-WORDS [REMOTE]
    start=$(date +%s)
    if timeout 120 bin/kvmbox image copy "${3:-images}:$1" >out.txt 2>err.txt; then
        fail "pulling $1 succeeded"
    fi
    took=$(($(date +%s) - start))
    err=$(cat err.txt)
    contains "$err" "$2"
    [ "$took" -lt 75 ] || fail "pulling $1 took ${took}s"
    [ "$(ls -A "$store")" = "$before" ] || fail "pulling $1 changed the store: $(ls -A "$store")"
}
pull_fails trunc/12 "the body ended after"
pull_fails badsha/12 "its SHA-256 is"
pull_fails badfp/12 "and its metadata: its SHA-256 is"
pull_fails short/12 "more than the"
pull_fails long/12 "the body ended after"
pull_fails gone/12 "404"
pull_fails redirect/12 "redirects are not followed"
pull_fails chunked/12 "chunked or encoded bodies are not supported"
pull_fails nosuch/12 "has no virtual-machine image \"nosuch/12\""
kv remote add badjson "$mirror/badjson" --protocol simplestreams >/dev/null
pull_fails debian/12 "is not a simplestreams catalogue" badjson
if [ "$(df -B1 --output=avail "$store" | tail -n 1)" -lt $((256 << 30)) ]; then
    pull_fails huge/12 "bytes do not fit in the"
fi
# A server whose certificate no CA the daemon trusts signed.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=rogue \
    -addext subjectAltName=IP:127.0.0.1 -keyout rogue.key -out rogue.crt 2>/dev/null ||
    fail "cannot make the rogue certificate"
(cd $m && exec python3 "$REPO/qemu-tests/simplestreams_server.py" ../rogue.crt ../rogue.key ../rport ../rogue.log) \
    2>rogue-server.log &
rpid=$!
trap 'end_daemon; kill $spid $rpid 2>/dev/null || true' EXIT
i=0
until [ -s rport ]; do i=$((i + 1)); [ $i -lt 200 ] || fail "the rogue server did not start"; sleep 0.05; done
kv remote add rogue "https://127.0.0.1:$(cat rport)" --protocol simplestreams >/dev/null
pull_fails debian/12 "invalid peer certificate" rogue
# The certificate names 127.0.0.1, not localhost.
kv remote add byname "https://localhost:$mport" --protocol simplestreams >/dev/null
pull_fails debian/12 "https://localhost:$mport/streams/v1/index.json failed: invalid peer certificate" byname
pull_fails stall/12 "the server stalled"
# lxc is told the daemon's error.
out=$(timeout 120 lxc image copy mirror:badsha/12 kb: --vm 2>&1) && fail "lxc copied a bad image"
contains "$out" "its SHA-256 is"
[ "$(ls -A "$store")" = "$before" ] || fail "lxc's failed copy changed the store"

# On a terminal the progress is redrawn in place (`script` gives the
# client one); the content is gone from the store, so it downloads again.
out=$(timeout 120 script -qec "bin/kvmbox image copy images:debian/12" /dev/null) ||
    fail "kvmbox image copy on a terminal: $out"
contains "$out" "$(printf '\r')Retrieving image: "
contains "$out" "rootfs: 100%"
contains "$out" "Image copied with fingerprint: $fp"
