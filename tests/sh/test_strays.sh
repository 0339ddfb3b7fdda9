# scripts/strays.sh, the closing check of `make test`: a kvmbox or QEMU
# process carrying this run's marker, or naming this run's directory, fails
# it and is killed; one of another run is left alone.
. "$TESTLIB"

mkdir -p bin run
ln -sf /bin/sleep bin/kvmbox-stray
ln -sf /bin/sleep bin/qemu-system-stray
me=stray-test-$$ other=stray-other-$$
KVMBOX_TEST_RUN=$me bin/kvmbox-stray 30 & ours=$!
# No marker, but a path under the run's directory on its command line.
env -u KVMBOX_TEST_RUN "$PWD/run/../bin/qemu-system-stray" 30 & qemu=$!
KVMBOX_TEST_RUN=$other bin/kvmbox-stray 30 & theirs=$!
trap 'kill $ours $qemu $theirs 2>/dev/null || true; wait' EXIT

# A run with none of these processes finds nothing.
sh "$REPO/scripts/strays.sh" "$other-nobody" "$PWD/nothing" 0 2>err.txt || fail "flagged: $(cat err.txt)"
if sh "$REPO/scripts/strays.sh" "$me" "$PWD/run" 0 2>err.txt; then fail "strays not found"; fi
contains "$(cat err.txt)" "$ours "
contains "$(cat err.txt)" "$qemu "
if grep -q "^  $theirs " err.txt; then fail "another run's process flagged: $(cat err.txt)"; fi
wait $ours 2>/dev/null || true; wait $qemu 2>/dev/null || true
kill -0 $theirs 2>/dev/null || fail "another run's process was killed"
sh "$REPO/scripts/strays.sh" "$me" "$PWD/run" 10 || fail "strays left after the check killed them"
