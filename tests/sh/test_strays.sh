# scripts/strays.sh, the closing check of `make test`: a kvmbox or QEMU
# process carrying this run's marker, or naming this run's directory and
# holding a file in it open, fails it and is killed; one of another run, or
# one of anybody that merely names the directory, is left alone.
. "$TESTLIB"

mkdir -p bin run
ln -sf /bin/sleep bin/kvmbox-stray
ln -sf /bin/sleep bin/qemu-system-stray
me=stray-test-$$ other=stray-other-$$
strays() { KVMBOX_TEST_RUN=$1 sh "$REPO/scripts/strays.sh" "$2" "$3"; }
KVMBOX_TEST_RUN=$me bin/kvmbox-stray 30 & ours=$!
# No marker, but a path under the run's directory on its command line and
# its log there, as QEMU has.
env -u KVMBOX_TEST_RUN "$PWD/run/../bin/qemu-system-stray" 30 >run/qemu.log 2>&1 & qemu=$!
KVMBOX_TEST_RUN=$other bin/kvmbox-stray 30 & theirs=$!
# The directory's name on its command line, but nothing of it open: anyone
# can start such a process, as another user here where we can.
spoof=
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    chmod 711 "$PWD"
    uid=$((54000 + $$ % 1000))
    env -u KVMBOX_TEST_RUN setpriv --reuid $uid --regid $uid --clear-groups \
        "$PWD/run/../bin/kvmbox-stray" 30 </dev/null >/dev/null 2>&1 & spoof=$!
fi
trap 'kill $ours $qemu $theirs $spoof 2>/dev/null || true; wait' EXIT
sleep 0.2

# A run with none of these processes finds nothing.
strays "$other-nobody" "$PWD/nothing" 0 2>err.txt || fail "flagged: $(cat err.txt)"
if strays "$me" "$PWD/run" 0 2>err.txt; then fail "strays not found"; fi
contains "$(cat err.txt)" "$ours "
contains "$(cat err.txt)" "$qemu "
if grep -q "^  $theirs " err.txt; then fail "another run's process flagged: $(cat err.txt)"; fi
if [ -n "$spoof" ] && grep -q "^  $spoof " err.txt; then fail "a process naming the directory was flagged: $(cat err.txt)"; fi
wait $ours 2>/dev/null || true; wait $qemu 2>/dev/null || true
kill -0 $theirs 2>/dev/null || fail "another run's process was killed"
[ -z "$spoof" ] || kill -0 $spoof 2>/dev/null || fail "a process naming the directory was killed"
strays "$me" "$PWD/run" 10 || fail "strays left after the check killed them"
