# AppArmor confinement under a kernel that enforces it. This host's kernel
# has no AppArmor, so the checks run inside a guest: Debian's cloud kernel
# (AppArmor built in, booted with apparmor=1 security=apparmor) under TCG,
# with kvmbox installed as `make install PREFIX=/usr` lays it out and tiny
# inner VMs (qemu-tests/confine/image.sh builds it, confine/init.sh checks).
# Every verdict is the kernel's: its profile list, /proc/PID/attr/current
# and the apparmor="DENIED" lines of its log; this script asserts on the
# markers the guest prints on its serial console.
. "$TESTLIB"

command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }
out=$REPO/qemu-tests/cache/confine
sh "$REPO/qemu-tests/confine/image.sh" "$K" "$out"
console=$PWD/console.log
# A hung guest must not hang the run: the whole boot is bounded, loosely,
# since on a busy machine TCG inside TCG runs several times slower.
timeout 1800 qemu-system-x86_64 -accel tcg -smp 2 -m 2048 -nographic -no-reboot \
    -kernel "$out/vmlinuz" -initrd "$out/initrd.gz" \
    -append "console=ttyS0 apparmor=1 security=apparmor panic=-1" >"$console" 2>&1 </dev/null ||
    fail "the confinement guest did not power off: $(tail -20 "$console")"
tr -d '\r' <"$console" |
    grep -E "^(CONFINE-|kernel:|failed start:|start with|device add|QMP |the (probe|helper) |accelerator|.*apparmor=\"DENIED\")" || true
grep -q "^CONFINE-DONE 0 " "$console" || fail "the guest's checks failed (see above)"
# Each check must have run: a check skipped by an early exit is no pass.
# The guest counts them itself (a line on the serial console can be cut
# by anything else written there).
n=$(tr -d '\r' <"$console" | sed -n 's/^CONFINE-DONE 0 \([0-9]*\)$/\1/p')
[ "${n:-0}" -ge 43 ] || fail "only ${n:-0} checks passed; the console shows $(grep -c "^CONFINE-PASS" "$console"): $(grep "^CONFINE-PASS" "$console" | cut -c14-60 | tr '\n' ';')"
