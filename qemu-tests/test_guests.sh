# Boots real guests under TCG through the VM layer (qemu-tests/vm.rs): builds
# the guest assets first, so that here, unlike in a bare `cargo test`, they
# can never be missing and the guest tests never skip.
. "$TESTLIB"
repo=$(cd "$(dirname "$0")/.." && pwd)
sh "$repo/qemu-tests/assets.sh" >/dev/null || fail "cannot build the guest assets"
cd "$repo"
rc=0
KVMBOX_REQUIRE_GUESTS=1 ${CARGO:-cargo} test --locked --test vm -- --nocapture >"$OLDPWD/vm.log" 2>&1 || rc=$?
cat "$OLDPWD/vm.log"
[ "$rc" -eq 0 ] || fail "guest tests failed"
grep -q "SKIPPED" "$OLDPWD/vm.log" && fail "a guest test skipped"
exit 0
