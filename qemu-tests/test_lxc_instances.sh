# The real `lxc` 5.0 manages a kvmbox VM over the remote API: list, info,
# stop and start a real guest (TCG), then is locked out once its
# certificate is removed from the trust store.
. "$TESTLIB"
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"

chmod 711 .
guest_assets
lxc_daemon
kv config set core.trust_password lxc-vm-pw
kv init vm1 --kernel "$kernel" --initrd "$initrd" \
    --cmdline "console=ttyS0 quiet" --memory 256MiB >/dev/null
timeout 60 lxc remote add kb "https://127.0.0.1:$port" --accept-certificate --password lxc-vm-pw >/dev/null 2>&1 ||
    fail "lxc remote add"

# lxc list and info show the stopped VM as LXD would.
out=$(timeout 30 lxc list kb: --format csv -c ns) || fail "lxc list: $out"
[ "$out" = "vm1,STOPPED" ] || fail "lxc list: $out"
timeout 60 lxc start kb:vm1 || fail "lxc start"
i=0
until kv console vm1 --show-log 2>/dev/null | grep -q KVMBOX-GUEST-READY; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "no guest marker: $(kv console vm1 --show-log | tail -5)"; sleep 0.1
done
[ "$(timeout 30 lxc list kb: --format csv -c ns)" = "vm1,RUNNING" ] || fail "not RUNNING after lxc start"
info=$(timeout 30 lxc info kb:vm1) || fail "lxc info: $info"
contains "$info" "Status: RUNNING"
contains "$info" "Type: virtual-machine"
pid=$(kv info vm1 --format json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -n1)
contains "$info" "PID: $pid"
# Starting it again is refused with kvmbox's reason, and changes nothing.
expect_fail timeout 60 lxc start kb:vm1
contains "$ERR" "running"
# A graceful stop: the guest sees the ACPI power button.
timeout 90 lxc stop kb:vm1 || fail "lxc stop"
kv console vm1 --show-log | grep -q KVMBOX-POWERDOWN || fail "the guest did not see the power button"
[ "$(timeout 30 lxc list kb: --format csv -c ns)" = "vm1,STOPPED" ] || fail "not STOPPED after lxc stop"

# Revoked: the next call is refused.
fp=$("$K" --applet kvmbox-cert fingerprint lxc/client.crt)
contains "$(kv config trust list --format json)" "$fp"
kv config trust remove "$fp" >/dev/null
expect_fail timeout 30 lxc start kb:vm1
contains "$ERR" "not authorized"
