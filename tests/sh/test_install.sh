# make install puts the binary, the applet links and the profiles in DESTDIR.
. "$TESTLIB"
make -s -C "$REPO" install DESTDIR="$PWD/root" PREFIX=/usr >/dev/null
[ -x root/usr/bin/kvmbox ] || fail "no binary"
cmp -s root/usr/bin/kvmbox "$REPO/build/kvmbox" || fail "installed binary differs"
[ "$(readlink root/usr/bin/kvmbox-cert)" = kvmbox ] || fail "link kvmbox-cert"
root/usr/bin/kvmbox-cert --version | grep -q "^kvmbox-cert " || fail "installed link does not run"
# AppArmor attaches by resolved path: the confined applets are hard links.
for a in sbin/kvmboxd libexec/kvmbox-aa-helper; do
    [ ! -L "root/usr/$a" ] && [ "root/usr/$a" -ef root/usr/bin/kvmbox ] || fail "$a is not a hard link"
done
[ "$(root/usr/sbin/kvmboxd --version)" = "kvmboxd 0.1.0" ] || fail "kvmboxd by its installed name"
for f in abstractions/kvmbox-qemu usr.sbin.kvmboxd usr.libexec.kvmbox-aa-helper kvmbox/TEMPLATE.qemu; do
    [ -f "root/etc/apparmor.d/$f" ] || fail "profile $f not installed"
done
# The installed policy compiles with the real parser.
for f in usr.sbin.kvmboxd usr.libexec.kvmbox-aa-helper; do
    apparmor_parser -Q -K -T -I root/etc/apparmor.d -I /etc/apparmor.d "root/etc/apparmor.d/$f" || fail "$f does not compile"
done
# The services, with the installed daemon's path filled in.
unit=root/usr/lib/systemd/system/kvmboxd.service
[ "$(stat -c %a "$unit")" = 644 ] || fail "unit mode $(stat -c %a "$unit")"
grep -qx "ExecStart=/usr/sbin/kvmboxd" "$unit" || fail "unit ExecStart: $(grep ExecStart "$unit")"
grep -qx "Type=notify" "$unit" || fail "the unit is not Type=notify"
for f in etc/init.d/kvmboxd etc/sv/kvmboxd/run etc/sv/kvmboxd/log/run; do
    [ -x "root/$f" ] || fail "$f not installed executable"
done
grep -qx 'command="/usr/sbin/kvmboxd"' root/etc/init.d/kvmboxd || fail "OpenRC command"
! grep -rq @SBINDIR@ root/etc root/usr/lib/systemd || fail "@SBINDIR@ left in an installed file"
# systemd's own reading of the unit, where systemd-analyze is installed
# (qemu-tests/systemd.rs checks it for real in a Debian guest).
if command -v systemd-analyze >/dev/null; then
    systemd-analyze security --offline=yes --root="$PWD/root" "$unit" >security.txt 2>&1 ||
        fail "systemd-analyze: $(cat security.txt)"
    tail -n 1 security.txt
fi
