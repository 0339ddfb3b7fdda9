# The example appliance (`make appliance`, appliance/build.sh) booted as a
# VM under TCG: kvmboxd comes up from its preseed on a read-only root with
# its state on tmpfs, and from this host the real kvmbox and lxc reach it
# through a forwarded TLS port, pinning the certificate made at build time
# and joining with the trust password: info, list, launch, delete. The
# preseeded busybox guest runs inside it, TCG inside TCG.
. "$TESTLIB"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is not installed"
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"

export KVMBOX_CONF=$PWD/conf LXD_CONF=$PWD/lxc
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
mkdir -p lxc bin; ln -sf "$K" bin/kvmbox
kv() { bin/kvmbox "$@"; }
# The password goes into the JSON document as it is: one that would need
# quoting is refused before anything is built.
mkdir -p quoted && printf 'a"b\n' >quoted/trust-password
expect_fail sh "$REPO/appliance/build.sh" "$K" "$PWD/quoted"
contains "$ERR" "must be letters, digits"
[ ! -e quoted/initrd.gz ] || fail "an initrd was built with a password that needs quoting"

# A password chosen before the first build is the one used; the server
# identity is made then, and kept by the next build.
a=$PWD/appliance
mkdir -p "$a" && echo appliance-test.pw_1 >"$a/trust-password"
t0=$(date +%s)
sh "$REPO/appliance/build.sh" "$K" "$a" || fail "appliance/build.sh failed"
echo "appliance: built in $(($(date +%s) - t0)) s"
for f in vmlinuz initrd.gz trust-password server.fingerprint; do
    [ -s "$a/$f" ] || fail "the build made no $f"
done
contains "$(cat "$a/preseed.json")" '"core.trust_password": "appliance-test.pw_1"'
fp=$(cat "$a/server.fingerprint")
sh "$REPO/appliance/build.sh" "$K" "$a" || fail "appliance/build.sh failed the second time"
[ "$(cat "$a/server.fingerprint")" = "$fp" ] || fail "a rebuild made a new server identity"
[ "$(cat "$a/trust-password")" = appliance-test.pw_1 ] || fail "a rebuild changed the password"
# The archive is the kernel's newc cpio, with kvmbox and its applets.
listing=$(gzip -dc "$a/initrd.gz" | cpio -t --quiet) || fail "initrd.gz is not a gzipped cpio archive"
for f in init bin/busybox usr/bin/kvmbox usr/bin/kvmboxd usr/bin/kvmbox-cert usr/bin/kvmbox-aa-helper \
    etc/kvmbox/preseed.json srv/guest/vmlinuz srv/guest/initrd.gz usr/bin/qemu-system-x86_64; do
    printf '%s\n' "$listing" | grep -qx "$f" || fail "$f is not in the appliance"
done
echo "appliance: initrd.gz $(wc -c <"$a/initrd.gz") bytes, vmlinuz $(wc -c <"$a/vmlinuz") bytes"
pw=$(cat "$a/trust-password")

# lxc makes its client certificate valid from the second it makes it (and
# kvmbox's is backdated a minute). The appliance sets its clock from the
# RTC's whole seconds at boot, so it may run up to a second behind this
# host and refuse a certificate made just before as not yet valid: lxc
# makes its own now, on a remote add that has nothing to connect to.
expect_fail timeout 120 lxc remote add none https://127.0.0.1:1 --accept-certificate --password none
[ -s lxc/client.crt ] || fail "lxc made no client certificate: $ERR"

# The appliance's HTTPS port, 8443, forwarded to a free loopback port. The
# port is free when chosen, but may be taken before QEMU binds it: QEMU then
# exits at once and the next one is tried.
free_port() { p=$1; while [ -n "$(ss -Hltn "sport = :$p")" ]; do p=$((p + 1)); done; echo $p; }
console=$PWD/console.log
qpid=""
trap '[ -z "$qpid" ] || { kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; }; true' EXIT
port=$(free_port $((30000 + $$ % 20000)))
tries=0
while :; do
    t0=$(date +%s)
    qemu-system-x86_64 -accel tcg -smp 2 -m 1536 -nographic -no-reboot \
        -kernel "$a/vmlinuz" -initrd "$a/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:8443" -device virtio-net-pci,netdev=n0 \
        </dev/null >"$console" 2>&1 &
    qpid=$!
    sleep 1
    kill -0 "$qpid" 2>/dev/null && break
    wait "$qpid" 2>/dev/null; qpid=""
    tries=$((tries + 1)); [ $tries -lt 5 ] || fail "QEMU did not start: $(cat "$console")"
    port=$(free_port $((port + 1)))
done
# Ready: kvmboxd has applied the preseed and listens on TLS. A daemon that
# exits, or a guest that is gone, fails at once rather than at the timeout.
i=0
until grep -q "KVMBOX-APPLIANCE-READY" "$console"; do
    grep -q "KVMBOX-APPLIANCE-FAILED" "$console" && fail "the appliance failed: $(tr -d '\r' <"$console" | tail -20)"
    kill -0 "$qpid" 2>/dev/null || fail "the appliance's QEMU exited: $(tr -d '\r' <"$console" | tail -20)"
    i=$((i + 1)); [ $i -lt 600 ] || fail "the appliance was not ready in 300 s: $(tr -d '\r' <"$console" | tail -20)"
    sleep 0.5
done
echo "appliance: ready $(($(date +%s) - t0)) s after QEMU started ($(tr -d '\r' <"$console" | sed -n 's/^KVMBOX-APPLIANCE-READY //p'))"
grep -q "KVMBOX-APPLIANCE-ROOT read-only" "$console" || fail "the appliance's root is not read-only"
grep -q "KVMBOX-APPLIANCE-NET 10.0.2.15/" "$console" || fail "the appliance got no DHCP lease: $(grep NET "$console")"
! grep -q "KVMBOX-APPLIANCE-INSMOD-FAILED" "$console" || fail "$(grep INSMOD-FAILED "$console")"

# --- kvmbox, pinning the build's certificate -----------------------------
# A fingerprint that is not the appliance's is refused, and nothing is kept.
bad=$(printf '%s' "$fp" | tr 0-9a-f 1-9a-f0)
expect_fail timeout 120 bin/kvmbox remote add wrong "127.0.0.1:$port" --fingerprint "$bad" --password-file "$a/trust-password"
contains "$ERR" "$fp"
out=$(timeout 120 bin/kvmbox remote add appl "127.0.0.1:$port" --fingerprint "$fp" --password-file "$a/trust-password" 2>&1) ||
    fail "kvmbox remote add: $out"
contains "$out" "$fp"
info=$(timeout 60 bin/kvmbox info appl:) || fail "kvmbox info: $info"
contains "$info" "auth_role                admin"
contains "$info" "certificate_fingerprint  $fp"
contains "$info" "accelerator              tcg"
out=$(timeout 60 bin/kvmbox list appl: --format csv) || fail "kvmbox list: $out"
contains "$out" "demo,Running"

# --- the real lxc --------------------------------------------------------
expect_fail timeout 120 lxc remote add nope "https://127.0.0.1:$port" --accept-certificate --password wrong
contains "$ERR" "not authorized"
timeout 120 lxc remote add lx "https://127.0.0.1:$port" --accept-certificate --password "$pw" >out.txt 2>&1 ||
    fail "lxc remote add: $(cat out.txt)"
# lxc pinned the same certificate the build made.
[ "$("$K" --applet kvmbox-cert fingerprint lxc/servercerts/lx.crt)" = "$fp" ] || fail "lxc pinned another certificate"
out=$(timeout 60 lxc list lx: --format csv -c ns) || fail "lxc list: $out"
[ "$out" = "demo,RUNNING" ] || fail "lxc list: $out"
contains "$(timeout 60 lxc info lx:demo)" "Status: RUNNING"

# --- launch from here, on files of the appliance -------------------------
# The kernel is named by config key: --kernel names a file on this host.
out=$(timeout 120 bin/kvmbox launch appl:vm2 -c boot.kernel=/srv/guest/vmlinuz -c boot.initrd=/srv/guest/initrd.gz \
    -c "boot.cmdline=console=ttyS0 quiet panic=-1" --memory 256MiB 2>&1) || fail "kvmbox launch: $out"
out=$(timeout 60 lxc list lx: --format csv -c ns) || fail "lxc list: $out"
[ "$out" = "$(printf 'demo,RUNNING\nvm2,RUNNING')" ] || fail "lxc list after the launch: $out"
timeout 120 lxc stop --force lx:vm2 || fail "lxc stop"
[ "$(timeout 60 lxc list lx: --format csv -c ns)" = "$(printf 'demo,RUNNING\nvm2,STOPPED')" ] || fail "lxc stop left vm2 running"
timeout 120 lxc delete lx:vm2 || fail "lxc delete"
out=$(timeout 60 bin/kvmbox list appl: --format csv) || fail "kvmbox list: $out"
[ "$(printf '%s\n' "$out" | sed 1d | cut -d, -f1)" = demo ] || fail "vm2 is still listed: $out"

# --- the preseeded guest, TCG inside TCG ---------------------------------
# The first line of its kernel on its console shows that QEMU runs it. Its
# whole boot takes minutes here (110 to 190 s on a busy 2-core machine), too
# long for every run: KVMBOX_APPLIANCE_GUEST_BOOT=1 waits for its marker too.
wait_demo() { # TEXT SECONDS
    i=0
    until timeout 60 bin/kvmbox console appl:demo --show-log 2>/dev/null | grep -q "$1"; do
        i=$((i + 1)); [ $i -lt $(($2 / 2)) ] || fail "no '$1' from demo in $2 s: $(kv console appl:demo --show-log | tail -5)"
        sleep 2
    done
    echo "appliance: '$1' on demo's console $(($(date +%s) - t0)) s after the appliance's QEMU started"
}
wait_demo "Linux version" 300
[ "${KVMBOX_APPLIANCE_GUEST_BOOT:-}" != 1 ] || wait_demo KVMBOX-GUEST-READY 900
