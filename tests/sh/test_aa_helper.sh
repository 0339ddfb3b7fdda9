# kvmbox-aa-helper as installed (a symlink to the static binary): writes a
# profile the real apparmor_parser compiles, keeps /./, /../ and symlinks out
# of it, and refuses a rule injected through a disk path with nothing written.
. "$TESTLIB"

# The policy code the helper runs is a crate of its own that reaches no
# network, async or QMP code (the main crate does, as the check shows).
deps() { cargo tree --locked --offline -q --manifest-path "$REPO/Cargo.toml" -p "$1" -e normal --prefix none; }
forbidden='^(rustls|futures-rustls|smol|async-[a-z-]+|httparse|serde_json|rcgen|x509-parser) '
deps kvmbox | grep -Eq "$forbidden" || fail "the check would not see the network code"
if deps kvmbox-aa | grep -E "$forbidden"; then fail "kvmbox-aa reaches the crates above"; fi

P=/usr/sbin/apparmor_parser
[ -x "$P" ] || { echo "skipped: $P not installed"; exit 0; }

U=00000000-0000-0000-0000-0123456789ab
here=$(pwd -P)
mkdir -p state/instances/vm1 disks
: >disks/1.img
ln -s "$here/disks/1.img" disks/link.img
ln -s /etc/shadow disks/shadow.img
vm() {
    printf '{"uuid":"%s","name":"vm1","dir":"%s/state/instances/vm1","disks":[{"path":"%s"}]}' \
        "$U" "$here" "$1"
}
aa() { applet kvmbox-aa-helper "$@" --profile-dir "$here/profiles" --state-dir "$here/state"; }

vm "$here/disks/./../disks/link.img" | aa create >out.txt
contains "$(cat out.txt)" "kvmbox-$U not loaded"
files=$(cat "profiles/kvmbox-$U.files")
contains "$files" "\"$here/disks/1.img\" rwk,"
case "$files" in *link.img*|*/./*|*/../*) fail "unresolved path in: $files" ;; esac
"$P" -Q -K -T -I "$here/profiles" "profiles/kvmbox-$U" 2>err.txt || fail "does not compile: $(cat err.txt)"

rm -rf profiles
for bad in "$here/disks/shadow.img" "$here/disks/1.img\\\" rwk,\\n  /** rwk,\\n}" "/etc/passwd"; do
    vm "$bad" >in.json
    expect_fail aa create <in.json
    one_line "$ERR"
    contains "$ERR" "refused"
    [ ! -e profiles ] || fail "wrote something for $bad: $(ls -R profiles)"
done

# show prints, delete without AppArmor only removes files.
vm "$here/disks/1.img" | aa show | grep -q "profile kvmbox-$U " || fail "show"
[ ! -e profiles ] || fail "show wrote files"
vm "$here/disks/1.img" | aa create --no-load >/dev/null
aa delete --uuid "$U" --apparmor auto >out.txt
[ ! -e "profiles/kvmbox-$U" ] || fail "delete left the profile"
echo ok
