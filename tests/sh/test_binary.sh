# The shipped binary: static, within its size budget, and a working multicall.
. "$TESTLIB"

info=$(file -L "$K")
case "$info" in *"static-pie linked"*) ;; *) fail "not a static PIE: $info" ;; esac
size=$(stat -c %s "$K")
[ "$size" -le "$SIZE_BUDGET" ] || fail "binary is $size bytes, budget $SIZE_BUDGET"
echo "size $size bytes"

[ "$("$K" --list-applets | tr '\n' ' ')" = "kvmbox kvmbox-aa-helper kvmbox-cert kvmboxd " ] || fail "applet list"

# Every applet answers --help and --version, through a symlink and through --applet.
for a in kvmbox kvmbox-aa-helper kvmbox-cert kvmboxd; do
    applet "$a" --help | grep -q "Usage: $a" || fail "$a --help"
    [ "$(applet "$a" --version)" = "$a 0.1.0" ] || fail "$a --version"
    "$K" --applet "$a" --help | grep -q "Usage: $a" || fail "--applet $a --help"
done

# An unknown name is refused with the list of applets, exit code 2.
ln -sf "$K" kvmbox-bogus
set +e; ./kvmbox-bogus >/dev/null 2>err.txt; rc=$?; set -e
[ "$rc" -eq 2 ] || fail "unknown applet exit code $rc"
contains "$(cat err.txt)" "kvmbox-cert"
expect_fail "$K" --applet nope
contains "$ERR" "unknown applet"
expect_fail "$K" --applet
one_line "$ERR"

# --install makes every link, and a link runs its applet.
mkdir inst
"$K" --install inst
for a in kvmbox-aa-helper kvmbox-cert kvmboxd; do
    [ -L "inst/$a" ] || fail "no link $a"
done
inst/kvmbox-cert --help | grep -q "Usage: kvmbox-cert" || fail "installed link"
# It never replaces a regular file.
rm inst/kvmboxd; echo keep >inst/kvmboxd
expect_fail "$K" --install inst
[ "$(cat inst/kvmboxd)" = keep ] || fail "--install replaced a file"
