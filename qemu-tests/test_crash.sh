# kvmboxd SIGKILLed at a random moment of a random change, FAULT_ROUNDS
# times (5 here; `make soak` runs 20): creating, starting, stopping,
# deleting and snapshotting instances, importing an image, trusting and
# untrusting a certificate; then snapshots, restores and deletions of a VM
# with a root disk. After each kill the daemon starts again on the
# same state, and then:
# - a change the client saw succeed is there; one cut off is there whole
#   or not at all;
# - nothing else changed: every other instance has its status, snapshots
#   and, when it ran, its very QEMU (re-adopted, same pid); images and
#   trusted certificates are as they were;
# - no QEMU runs for an instance that is not Running, none twice;
# - the state directory is consistent (state_consistent in lib.sh).
# Guests are the busybox test guest under TCG; profiles go to ./aa.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: per-VM uids need root"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }
rounds=${FAULT_ROUNDS:-5}

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
chmod 711 .
guest_assets
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox; ln -sf "$K" bin/kvmbox-cert
kv() { bin/kvmbox "$@"; }
start_daemon() {
    bin/kvmboxd --group root 2>>daemon.log &
    dpid=$!
    i=0; while ! kv info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 200 ] || fail "daemon did not start: $(tail -5 daemon.log)"; sleep 0.1; done
}
trap end_daemon EXIT
boot="--kernel $kernel --initrd $initrd --memory 128MiB"

# observe: what the daemon shows, one fact a line, sorted:
#   instance NAME STATUS [PID] | snapshot NAME SNAP | image ALIAS FP | trusted FP
observe() {
    python3 - "$PWD/bin/kvmbox" <<'EOF' | sort
import json, subprocess, sys
kv = sys.argv[1]
def get(*args):
    return json.loads(subprocess.run([kv, *args, "--format", "json"], check=True,
                                     capture_output=True, text=True).stdout)
for i in get("list"):
    pid = f" {i['pid']}" if i["status"] == "Running" else ""
    print(f"instance {i['name']} {i['status']}{pid}")
    for s in get("info", i["name"]).get("snapshots") or []:
        print(f"snapshot {i['name']} {s['name']}")
for img in get("image", "list"):
    for a in img["aliases"]:
        print(f"image {a['name']} {img['fingerprint']}")
for c in get("config", "trust", "list"):
    print(f"trusted {c['fingerprint']}")
EOF
}
# about KEY FILE: the lines of FILE about KEY (an instance, alias or fingerprint).
about() { awk -v k="$1" '$2 == k' "$2"; }
others() { awk -v k="$1" '$2 != k' "$2"; }
# pick N: a random number below N.
pick() { echo $(($(od -An -N2 -tu2 /dev/urandom) % $1)); }
# one of the lines of stdin at random (nothing for none).
one_of() { awk -v r="$(pick 1000)" '{l[NR] = $0} END {if (NR) print l[r % NR + 1]}'; }

# qemus_match WHEN: one QEMU for each Running instance in ./after, none
# for any other.
qemus_match() {
    for n in $(awk '$1 == "instance" {print $2}' after); do
        u=$(kv info "$n" --format json | sed -n 's/^ *"volatile.uuid": "\(.*\)",\{0,1\}$/\1/p' | head -n 1)
        qemus=$(qemus_of "$u")
        if grep -q "^instance $n Running" after; then want=1; else want=0; fi
        [ "$qemus" -eq $want ] || fail "$1: $qemus QEMUs for $(grep "^instance $n " after)"
    done
}

start_daemon
kv config set security.apparmor_profile_dir "$PWD/aa"
kv init a0 $boot >/dev/null
kv init b0 $boot >/dev/null
kv start a0

round=0
while [ $round -lt "$rounds" ]; do
    round=$((round + 1))
    observe >before
    vm=$(awk '$1 == "instance" {print $2}' before | one_of)
    # op KEY: what this round changes, then the client's arguments.
    case $(pick 8) in
    0) key=c$round; set -- init "$key" $boot ;;
    1) key=$vm; set -- start "$key" ;;
    2) key=$vm; set -- stop "$key" --force ;;
    3) key=$vm; set -- delete "$key" --force ;;
    4) key=$vm; set -- snapshot "$key" "s$round" ;;
    5) # Big enough that the copy is under way for a while.
       head -c $((48 << 20)) /dev/urandom >"i$round.img"
       key=i$round; set -- image import "$PWD/i$round.img" --alias "$key" ;;
    6) bin/kvmbox-cert gen --key "t$round.key" --cert "t$round.crt" --cn "t$round" >/dev/null
       key=$(bin/kvmbox-cert fingerprint "t$round.crt")
       set -- config trust add "t$round.crt" --name "t$round" ;;
    *) key=$(awk '$1 == "trusted" {print $2}' before | one_of)
       set -- config trust remove "$key" ;;
    esac
    [ -n "$key" ] || { round=$((round - 1)); continue; }
    op="$*"
    (if kv "$@" >op.out 2>op.err; then echo 0; else echo 1; fi >op.rc) &
    job=$!
    # Anywhere from before the request arrives to after it is answered:
    # most changes take a few hundred milliseconds.
    sleep "0.$(printf %03d "$(pick 500)")"
    kill -9 "$dpid"; wait "$dpid" 2>/dev/null || true
    wait "$job" || true
    acked=$(cat op.rc)
    echo "round $round: kvmbox $op: $([ "$acked" = 0 ] && echo acknowledged || echo "not acknowledged ($(cat op.err))")"
    start_daemon
    observe >after

    # --- Nothing but this round's subject changed.
    others "$key" before >b.others; others "$key" after >a.others
    cmp -s b.others a.others || fail "round $round ($op) changed more than $key: $(diff b.others a.others)"
    # --- The subject: as before, or changed whole (and so when acknowledged).
    about "$key" before >b.key; about "$key" after >a.key
    case $1 in
    init) grep -qx "instance $key Stopped" a.key ;;
    start) grep -q "^instance $key Running [0-9]" a.key ;;
    stop) grep -qx "instance $key Stopped" a.key ;;
    delete) [ ! -s a.key ] ;;
    snapshot) grep -qx "snapshot $key s$round" a.key && grep -qx "$(grep '^instance' b.key)" a.key ;;
    image) grep -qx "image $key $(sha256sum <"i$round.img" | cut -d' ' -f1)" a.key ;;
    config) if [ "$2" = trust ] && [ "$3" = add ]; then grep -qx "trusted $key" a.key; else [ ! -s a.key ]; fi ;;
    esac && whole=1 || whole=0
    if [ "$acked" = 0 ]; then
        [ $whole = 1 ] || fail "round $round: acknowledged $op is not there: $(cat a.key)"
    elif [ $whole = 0 ]; then
        # A forced delete stops a running VM first, as LXD's does: cut off
        # between the two, the instance is there, whole and stopped.
        stopped=$(sed "s/^instance $key Running.*/instance $key Stopped/" b.key)
        { cmp -s b.key a.key || { [ "$1" = delete ] && [ "$stopped" = "$(cat a.key)" ]; }; } ||
            fail "round $round: cut-off $op is half there: before: $(cat b.key); after: $(cat a.key)"
    fi
    qemus_match "round $round"
    state_consistent state
    rm -f "i$round.img"
done
echo "$rounds rounds; at the end: $(tr '\n' ';' <after)"

# --- Snapshots and restores of a VM with a root disk, cut off: after each
# kill its disk opens and holds exactly the snapshots the daemon lists
# (a change cut off is finished or undone by the daemon when it starts).
qemu-img create -f raw base.img 16M >/dev/null
kv image import "$PWD/base.img" --alias base >/dev/null
kv init base d0 $boot >/dev/null
kv start d0
kv snapshot d0 first
disk=state/instances/d0/root.qcow2
for r in $(seq 1 $((rounds > 6 ? rounds : 6))); do
    case $((r % 3)) in
    0) kv snapshot d0 "c$r"; set -- delete "d0/c$r" ;;
    1) set -- snapshot d0 "c$r" ;;
    *) set -- restore d0 first ;;
    esac
    (if kv "$@" >op.out 2>op.err; then echo 0; else echo 1; fi >op.rc) &
    job=$!
    # A live snapshot waits up to 2 s for a guest agent: up to 3 s.
    ms=$(pick 3000)
    sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
    kill -9 "$dpid"; wait "$dpid" 2>/dev/null || true
    wait "$job" || true
    echo "disk round $r: kvmbox $*: $([ "$(cat op.rc)" = 0 ] && echo acknowledged || echo "not acknowledged ($(cat op.err))")"
    start_daemon
    observe >after
    listed=$(awk '$1 == "snapshot" && $2 == "d0" {print $3}' after | sort | tr '\n' ' ')
    ondisk=$(qemu-img info -U --output=json "$disk" | python3 -c 'import json, sys
print(" ".join(sorted(s["name"] for s in json.load(sys.stdin).get("snapshots", []))), end=" ")') ||
        fail "disk round $r ($*): the disk does not open"
    [ "$listed" = "$ondisk" ] || fail "disk round $r ($*): listed '$listed', on the disk '$ondisk'"
    [ "$(cat op.rc)" != 0 ] || case $1 in
        snapshot) echo "$listed" | grep -qw "c$r" ;;
        delete) ! echo "$listed" | grep -qw "c$r" ;;
        *) true ;;
        esac || fail "disk round $r: acknowledged $* is not there: $listed"
    qemus_match "disk round $r"
    grep -q "^instance d0 Running" after || kv start d0
    state_consistent state
done
