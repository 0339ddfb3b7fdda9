# make install puts the binary, the applet links and the profiles in DESTDIR.
. "$TESTLIB"
make -s -C "$REPO" install DESTDIR="$PWD/root" PREFIX=/usr >/dev/null
[ -x root/usr/bin/kvmbox ] || fail "no binary"
cmp -s root/usr/bin/kvmbox "$REPO/build/kvmbox" || fail "installed binary differs"
for a in kvmboxd kvmbox-aa-helper kvmbox-cert; do
    [ "$(readlink "root/usr/bin/$a")" = kvmbox ] || fail "link $a"
done
root/usr/bin/kvmbox-cert --version | grep -q "^kvmbox-cert " || fail "installed link does not run"
[ -d root/etc/apparmor.d ] || fail "no profiles dir"
