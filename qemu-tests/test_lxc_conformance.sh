# LXD's own tools drive kvmboxd through a VM's whole life, as they drive
# LXD: the real `lxc` 5.0 over TLS (trusted by password, then by token)
# and over the LXD-compatible socket, then Ansible's lxd_container module
# over both, twice. README.md's compatibility table lists what this test
# runs.
. "$TESTLIB"
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"
KVMBOX_TOOLS=$(sed -n 's/^KVMBOX_TOOLS=//p' "$REPO/cross/release.env")
. "$REPO/qemu-tests/ansible/versions.env"
[ -x "$ANSIBLE_DIR/bin/ansible-playbook" ] || fail "Ansible is not installed: run scripts/deps.sh"

chmod 711 .
guest_assets
lxc_daemon
mkdir -p lxc-token
boot="-c boot.kernel=$kernel -c boot.initrd=$initrd -c boot.cmdline=console=ttyS0 -c limits.memory=256MiB"
qemu-img create -q -f qcow2 base.qcow2 64M
kv image import "$PWD/base.qcow2" --alias base >/dev/null

# Trusted by password, then another client by a token (lxc config trust add
# --name), each as an LXD user does it.
kv config set core.trust_password conformance-pw
timeout 60 lxc remote add kb "https://127.0.0.1:$port" --accept-certificate \
    --password conformance-pw >/dev/null 2>&1 || fail "lxc remote add with a password"
# lxc 5.0 asks the default remote for a token (a remote given alone is
# read as a certificate file's name).
lxc remote switch kb
token=$(timeout 30 lxc config trust add --name by-token --quiet) || fail "lxc config trust add --name: $token"
LXD_CONF=$PWD/lxc-token timeout 60 lxc remote add kbt "$token" >/dev/null 2>&1 ||
    fail "lxc remote add with a token"
[ "$(LXD_CONF=$PWD/lxc-token timeout 30 lxc list kbt: --format csv)" = "" ] ||
    fail "the token's client does not see the empty list"
# The LXD-compatible socket: plain HTTP, the caller known by its uid.
timeout 30 lxc remote add kbl "unix://$PWD/state/lxd/unix.socket" >/dev/null ||
    fail "lxc remote add unix://"

# running R NAME / stopped R NAME: what lxc list says.
state_is() {
    got=$(timeout 30 lxc list "$1:" --format csv -c ns | grep "^$2,") || fail "$2 is not listed on $1"
    [ "$got" = "$2,$3" ] || fail "$2 on $1: $got, not $3"
}

# The lifecycle on remote $1, with instance $2.
lifecycle() {
    r=$1 vm=$2
    # Discovery, as lxc's commands ask before they act.
    for what in profile project storage; do
        out=$(timeout 30 lxc $what list "$r:" --format csv) || fail "lxc $what list $r: $out"
        contains "$out" "default"
    done
    timeout 30 lxc network list "$r:" --format csv >/dev/null || fail "lxc network list $r:"
    contains "$(timeout 30 lxc image list "$r:" --format csv)" "base,"
    contains "$(timeout 30 lxc image alias list "$r:" --format csv)" "base,"

    # shellcheck disable=SC2086 # $boot is a list of options
    timeout 120 lxc init "$r:base" "$r:$vm" --vm $boot >/dev/null || fail "lxc init $r:base --vm"
    state_is "$r" "$vm" STOPPED
    timeout 30 lxc config set "$r:$vm" limits.cpu 2 || fail "lxc config set"
    [ "$(timeout 30 lxc config get "$r:$vm" limits.cpu)" = 2 ] || fail "limits.cpu not set"
    timeout 30 lxc config show "$r:$vm" | sed 's/limits.cpu: "2"/limits.cpu: "1"/' |
        timeout 30 lxc config edit "$r:$vm" || fail "lxc config edit"
    [ "$(timeout 30 lxc config get "$r:$vm" limits.cpu)" = 1 ] || fail "lxc config edit did not apply"
    qemu-img create -q -f raw "data-$vm.img" 8M
    timeout 30 lxc config device add "$r:$vm" data disk source="$PWD/data-$vm.img" >/dev/null ||
        fail "lxc config device add"
    contains "$(timeout 30 lxc config device list "$r:$vm")" "data"
    timeout 30 lxc config device remove "$r:$vm" data >/dev/null || fail "lxc config device remove"
    ! timeout 30 lxc config device list "$r:$vm" | grep -q data || fail "the device is still there"
    timeout 30 lxc config device add "$r:$vm" net1 nic nictype=user >/dev/null || fail "lxc config device add nic"
    contains "$(timeout 30 lxc config device list "$r:$vm")" "net1"
    timeout 30 lxc config device remove "$r:$vm" net1 >/dev/null || fail "lxc config device remove nic"

    timeout 120 lxc start "$r:$vm" || fail "lxc start"
    state_is "$r" "$vm" RUNNING
    info=$(timeout 30 lxc info "$r:$vm") || fail "lxc info: $info"
    contains "$info" "Status: RUNNING"
    contains "$info" "Type: virtual-machine"
    timeout 120 lxc restart "$r:$vm" --force || fail "lxc restart"
    state_is "$r" "$vm" RUNNING
    timeout 120 lxc stop "$r:$vm" --force || fail "lxc stop"
    state_is "$r" "$vm" STOPPED
    timeout 120 lxc start "$r:$vm" || fail "lxc start again"
    # The image it overlays cannot go while it exists.
    expect_fail timeout 30 lxc image delete "$r:base"
    contains "$ERR" "in use by instance"
    timeout 120 lxc delete "$r:$vm" --force || fail "lxc delete --force"
    ! timeout 30 lxc list "$r:" --format csv | grep -q "^$vm," || fail "$vm is still listed"
    # shellcheck disable=SC2086
    timeout 120 lxc launch "$r:base" "$r:$vm" --vm $boot >/dev/null || fail "lxc launch"
    state_is "$r" "$vm" RUNNING
    timeout 120 lxc delete "$r:$vm" --force || fail "lxc delete --force after launch"
}
lifecycle kb vm-tls
lifecycle kbl vm-local
# The token's client, an administrator too, drives a VM as well.
(LXD_CONF=$PWD/lxc-token; lifecycle kbt vm-token)

# Snapshots: the root disk's content comes back with the config. A pattern
# is written into the disk from the host (qemu-io) between snapshots.
pattern() { qemu-io -f qcow2 -c "$1 -P $2 0 64k" "state/instances/vm-snap/root.qcow2" >/dev/null; }
# shellcheck disable=SC2086
timeout 120 lxc init kb:base kb:vm-snap --vm $boot >/dev/null || fail "lxc init for snapshots"
pattern write 0xaa
timeout 60 lxc snapshot kb:vm-snap s0 || fail "lxc snapshot"
pattern write 0xbb
timeout 30 lxc config set kb:vm-snap limits.cpu 2
timeout 120 lxc start kb:vm-snap || fail "lxc start for snapshots"
timeout 60 lxc snapshot kb:vm-snap s1 || fail "lxc snapshot of a running VM"
expect_fail timeout 60 lxc snapshot kb:vm-snap ../s2
contains "$ERR" "invalid snapshot name"
# Restoring a running VM stops it, puts disk and config back, starts it.
vm_pid() { kv list --format json | python3 -c 'import json, sys; print(*[i.get("pid") for i in json.load(sys.stdin) if i["name"] == sys.argv[1]])' "$1"; }
pid0=$(vm_pid vm-snap)
timeout 120 lxc restore kb:vm-snap s0 || fail "lxc restore of a running VM"
state_is kb vm-snap RUNNING
pid1=$(vm_pid vm-snap)
[ -n "$pid1" ] && [ "$pid1" != "$pid0" ] || fail "the VM was not started again (pid $pid0, then $pid1)"
[ -z "$(timeout 30 lxc config get kb:vm-snap limits.cpu)" ] || fail "the config did not come back"
timeout 120 lxc stop kb:vm-snap --force || fail "lxc stop for snapshots"
pattern read 0xaa || fail "the disk did not come back as snapshot s0 had it"
info=$(timeout 30 lxc info kb:vm-snap)
contains "$info" "s0"
contains "$info" "s1"
# A rename keeps the disk's own snapshot under its first name; a new s1
# gets another, and each restores its own content.
timeout 60 lxc move kb:vm-snap/s1 kb:vm-snap/s1b || fail "lxc move INSTANCE/SNAP INSTANCE/NEW"
info=$(timeout 30 lxc info kb:vm-snap)
contains "$info" "s1b"
! echo "$info" | grep -qw s1 || fail "s1 is still listed after its rename: $info"
pattern write 0xdd
timeout 60 lxc snapshot kb:vm-snap s1 || fail "a new s1 after the rename"
timeout 60 lxc restore kb:vm-snap s1b || fail "lxc restore of a renamed snapshot"
pattern read 0xbb || fail "the renamed s1b did not bring back what s1 had"
timeout 60 lxc restore kb:vm-snap s1 || fail "lxc restore of the new s1"
pattern read 0xdd || fail "the new s1 did not bring back its own content"
timeout 60 lxc delete kb:vm-snap/s1b || fail "lxc delete INSTANCE/SNAPSHOT"
timeout 60 lxc delete kb:vm-snap/s1 || fail "lxc delete of the new s1"
! qemu-img snapshot -l state/instances/vm-snap/root.qcow2 | grep -q " s1" || fail "s1 is still in the disk"
# kvmbox's own client, on its socket, does the same.
kv snapshot vm-snap k1
pattern write 0xcc
kv rename vm-snap/k1 k2
kv restore vm-snap k2
pattern read 0xdd || fail "kvmbox restore did not bring the disk back"
expect_fail kv rename vm-snap/k2 "k 3"
contains "$ERR" "invalid snapshot name"
kv delete vm-snap/k2
expect_fail kv restore vm-snap k2
contains "$ERR" "not found"
# Names that are numbers: qemu-img reads a number as a snapshot's id first,
# so each must still bring back its own content.
pattern write 0x11
kv snapshot vm-snap 1
pattern write 0x22
kv snapshot vm-snap 2
kv restore vm-snap 1
pattern read 0x11 || fail "snapshot 1 brought back another's content"
kv restore vm-snap 2
pattern read 0x22 || fail "snapshot 2 brought back another's content"
kv delete vm-snap/1
kv restore vm-snap 2
pattern read 0x22 || fail "deleting snapshot 1 took snapshot 2's content"
timeout 120 lxc delete kb:vm-snap --force || fail "lxc delete with snapshots"

# Trust: a certificate added from a file is removed by the 12-character
# fingerprint lxc shows.
applet kvmbox-cert gen --key other.key --cert other.crt --cn other >/dev/null
timeout 30 lxc config trust add kb: other.crt || fail "lxc config trust add FILE"
fp=$("$K" --applet kvmbox-cert fingerprint other.crt)
short=$(printf %.12s "$fp")
contains "$(timeout 30 lxc config trust list kb: --format csv)" "$short"
timeout 30 lxc config trust remove "kb:$short" || fail "lxc config trust remove PREFIX"
! timeout 30 lxc config trust list kb: --format csv | grep -q "$short" || fail "still trusted"

# Ansible, twice over each way in: the same changes each time. Over TLS
# it checks the server's certificate (pinned here as its CA file) and that
# it names 127.0.0.1.
playbook() {
    SSL_CERT_FILE=$PWD/state/server.crt HOME=$PWD/ansible-home PYTHONPATH=$ANSIBLE_DIR ANSIBLE_LOCAL_TEMP=$PWD/ansible-tmp ANSIBLE_REMOTE_TEMP=$PWD/ansible-tmp \
        ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false \
        timeout 600 "$ANSIBLE_DIR/bin/ansible-playbook" -e "kernel=$kernel" -e "initrd=$initrd" \
        "$@" "$REPO/qemu-tests/ansible/lifecycle.yml" >ansible.log 2>&1 ||
        fail "ansible-playbook $*: $(tail -n 30 ansible.log)"
    grep -q "ok=6 *changed=4 *unreachable=0 *failed=0" ansible.log ||
        fail "ansible-playbook $*: $(tail -n 5 ansible.log)"
}
for run in 1 2; do
    playbook -e "lxd_url=unix:$PWD/state/lxd/unix.socket"
    playbook -e "lxd_url=https://127.0.0.1:$port" \
        -e "client_cert=$LXD_CONF/client.crt" -e "client_key=$LXD_CONF/client.key"
done

# Nothing left: the image can go now.
timeout 30 lxc image delete kb:base || fail "lxc image delete"
[ "$(timeout 30 lxc image list kb: --format csv)" = "" ] || fail "the image is still listed"
