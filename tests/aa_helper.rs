//! `kvmbox-aa-helper` against the real `apparmor_parser`: every profile it
//! writes must compile, every hostile definition must be refused with nothing
//! written, and the seed's FAIL rows (libvirt's virt-aa-helper) must pass.
//!
//! "Loading" is exercised on kernels without AppArmor through a parser
//! stand-in that logs its arguments and runs the real parser with
//! `-Q -K -T` (compile only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const UUID: &str = "00000000-0000-0000-0000-0123456789ab";
const UUID2: &str = "3f0c2c1e-9d7a-4c55-8a51-0d3f6e2b7c10";
const PARSER: &str = "/usr/sbin/apparmor_parser";

fn have_parser() -> bool {
    if Path::new(PARSER).is_file() {
        return true;
    }
    eprintln!("skipping: {PARSER} is not installed");
    false
}

struct Host {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Host {
    fn new() -> Self {
        let tmp = scratch();
        let root = fs::canonicalize(tmp.path()).unwrap();
        for d in [
            "state/instances/vm1",
            "state/instances/vm2",
            "state/images",
            "disks",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "disks/1.img",
            "disks/2.img",
            "state/images/debian.qcow2",
            "state/server.key",
            "kernel",
            "initrd",
        ] {
            fs::write(root.join(f), b"").unwrap();
        }
        // The parser stand-in: logs its arguments and environment, then
        // compiles for real without touching the kernel.
        let wrapper = root.join("parser.sh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{log}'\nenv >> '{env}'\nexec {PARSER} -Q -K -T \"$@\"\n",
                log = root.join("parser.log").display(),
                env = root.join("parser.env").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        Host { _tmp: tmp, root }
    }

    fn p(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root.display())
    }

    fn profiles(&self) -> PathBuf {
        self.root.join("profiles")
    }

    fn profile(&self, uuid: &str) -> PathBuf {
        self.profiles().join(format!("kvmbox-{uuid}"))
    }

    fn files(&self, uuid: &str) -> String {
        fs::read_to_string(self.profiles().join(format!("kvmbox-{uuid}.files"))).unwrap()
    }

    fn parser_log(&self) -> String {
        fs::read_to_string(self.root.join("parser.log")).unwrap_or_default()
    }

    /// A minimal valid definition for VM 1.
    fn vm(&self) -> Value {
        json!({
            "uuid": UUID,
            "name": "virt-aa-helper-test",
            "dir": self.p("state/instances/vm1"),
            "disks": [{"path": self.p("disks/1.img"), "readonly": false}],
        })
    }

    /// The helper in MODE with the test's directories and the parser
    /// stand-in, run even though this kernel may have no AppArmor.
    fn helper(&self, mode: &str) -> Cmd {
        self.base(mode).args(["--apparmor", "always"])
    }

    /// The same, deciding about loading by itself.
    fn base(&self, mode: &str) -> Cmd {
        applet("kvmbox-aa-helper")
            .arg(mode)
            .args(["--profile-dir", &self.p("profiles")])
            .args(["--state-dir", &self.p("state")])
            .args(["--cache-dir", &self.p("cache")])
            .args(["--parser", &self.p("parser.sh")])
    }

    fn create(&self, vm: &Value) -> Cmd {
        self.helper("create").stdin(vm.to_string())
    }

    /// Compiles the written profile with the real parser, independently of
    /// the helper, against the abstraction it installed.
    fn compiles(&self, uuid: &str) {
        program(PARSER)
            .args(["-Q", "-K", "-T", "-I"])
            .arg(self.profiles())
            .arg(self.profile(uuid))
            .succeeds();
    }

    /// Nothing written, nothing loaded.
    fn untouched(&self, what: &str) {
        let listing: Vec<_> = fs::read_dir(self.profiles())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(listing.is_empty(), "{what}: profile dir holds {listing:?}");
        assert_eq!(self.parser_log(), "", "{what}: the parser ran");
    }
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

#[test]
fn realistic_definitions_compile_with_the_real_parser() {
    if !have_parser() {
        return;
    }
    let h = Host::new();
    let vm1 = h.p("state/instances/vm1");
    let mut corpus = vec![
        h.vm(),
        json!({"uuid": UUID, "name": "vm1", "dir": vm1}),
        json!({
            "uuid": UUID, "name": "web-01.example", "dir": vm1,
            "disks": [
                {"path": format!("{vm1}/root.qcow2"), "readonly": false},
                {"path": h.p("state/images/debian.qcow2"), "readonly": true},
                {"path": h.p("disks/2.img")},
            ],
            "hotplug": [{"path": h.p("disks/hot.img"), "readonly": false}],
            "kernel": h.p("kernel"), "initrd": h.p("initrd"),
            "nvram": format!("{vm1}/VARS.fd"),
            "qmp_socket": format!("{vm1}/qmp.sock"),
            "pid_file": format!("{vm1}/qemu.pid"),
            "log_file": format!("{vm1}/qemu.log"),
            "taps": ["kvmbox-tap0", "tap1"],
        }),
        // libvirt's cases: multiple disks, read-only, not created yet, relative.
        with(
            h.vm(),
            "disks",
            json!([{"path": h.p("disks/1.img")}, {"path": h.p("disks/2.img")}]),
        ),
        with(
            h.vm(),
            "disks",
            json!([{"path": h.p("disks/1.img"), "readonly": true}]),
        ),
        with(
            h.vm(),
            "disks",
            json!([{"path": h.p("disks/nonexistent.img")}]),
        ),
        with(
            h.vm(),
            "disks",
            json!([{"path": format!("{}/./../{}//./disks/1.img", h.p(""), h.root.file_name().unwrap().to_str().unwrap())}]),
        ),
        with(h.vm(), "kernel", json!("/boot/vmlinuz-kvmbox-test")),
    ];
    for fw in [
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/qemu/bios-microvm.bin",
        "/usr/share/qemu/OVMF.fd",
    ] {
        if Path::new(fw).parent().unwrap().is_dir() {
            corpus.push(with(h.vm(), "firmware", json!(fw)));
        }
    }
    for (i, vm) in corpus.iter().enumerate() {
        let _ = fs::remove_dir_all(h.profiles());
        h.create(vm)
            .succeeds()
            .stdout_contains(&format!("kvmbox-{UUID} loaded"));
        h.compiles(UUID);
        let profile = fs::read_to_string(h.profile(UUID)).unwrap();
        assert!(
            profile.contains(&format!("profile kvmbox-{UUID} ")),
            "case {i}"
        );
        assert!(profile.contains(&format!(
            "include \"{}/kvmbox-{UUID}.files\"",
            h.profiles().display()
        )));
    }
    let files = h.files(UUID);
    assert!(files.contains("deny \"/boot/vmlinuz-kvmbox-test\" w,") || !corpus.is_empty());
}

#[test]
fn full_definition_grants_what_it_lists_and_no_more() {
    if !have_parser() {
        return;
    }
    let h = Host::new();
    let vm1 = h.p("state/instances/vm1");
    let vm = json!({
        "uuid": UUID, "name": "vm1", "dir": vm1,
        "disks": [{"path": h.p("disks/1.img")}, {"path": h.p("state/images/debian.qcow2"), "readonly": true}],
        "kernel": h.p("kernel"),
        "qmp_socket": format!("{vm1}/qmp.sock"),
    });
    h.create(&vm).succeeds();
    let files = h.files(UUID);
    assert!(
        files.contains(&format!("  \"{}\" rwk,\n", h.p("disks/1.img"))),
        "{files}"
    );
    let img = h.p("state/images/debian.qcow2");
    assert!(
        files.contains(&format!("  \"{img}\" rk,\n  deny \"{img}\" w,\n")),
        "{files}"
    );
    assert!(files.contains(&format!("  \"{}\" r,\n", h.p("kernel"))));
    assert!(files.contains(&format!("  \"{vm1}/qmp.sock\" rwk,\n")));
    assert_eq!(files.matches('"').count(), 2 * 6, "{files}");
}

#[test]
fn hostile_definitions_are_refused_with_nothing_written() {
    let h = Host::new();
    symlink("/etc/passwd", h.p("disks/passwd.img")).unwrap();
    symlink("/etc/shadow-kvmbox-new", h.p("disks/dangling.img")).unwrap();
    symlink("/etc", h.p("disks/etc")).unwrap();
    symlink(h.p("state/instances/vm2"), h.p("disks/vm2")).unwrap();
    let disk = |p: String| with(h.vm(), "disks", json!([{"path": p}]));
    let up = "/..".repeat(12);
    let cases: Vec<(&str, Value)> = vec![
        ("bad disk", disk("/etc/passwd".into())),
        (
            "bad disk2",
            with(
                h.vm(),
                "disks",
                json!([{"path": h.p("disks/1.img")}, {"path": "/etc/passwd"}]),
            ),
        ),
        (
            "traversal",
            disk(format!("{}{up}/etc/passwd", h.p("disks"))),
        ),
        (
            "/./ and /../ into /etc",
            disk(format!("{}/./../disks/etc/../etc/./hosts", h.p("disks"))),
        ),
        ("symlink to /etc/passwd", disk(h.p("disks/passwd.img"))),
        (
            "dangling symlink into /etc",
            disk(h.p("disks/dangling.img")),
        ),
        (
            "new file in a symlinked /etc",
            disk(h.p("disks/etc/kvmbox.img")),
        ),
        (
            "newline ends the rule",
            disk(format!(
                "{}\" rwk,\n  /** rwk,\n}}\nprofile x {{\n  \"/a",
                h.p("disks/1.img")
            )),
        ),
        ("closing brace", disk(h.p("disks/a}.img"))),
        ("glob", disk(h.p("disks/*"))),
        ("alternation", disk(h.p("disks/{1,2}.img"))),
        ("variable", disk(h.p("disks/@{HOME}.img"))),
        ("comment", disk(h.p("disks/a#.img"))),
        ("quote", disk(h.p("disks/a\".img"))),
        ("backslash", disk(h.p("disks/a\\.img"))),
        ("control char", disk(h.p("disks/a\u{1b}.img"))),
        ("relative", disk("disks/1.img".into())),
        ("proc", disk("/proc/self/environ".into())),
        ("sys", disk("/sys/kernel/security/apparmor/.replace".into())),
        ("dev", disk("/dev/sda".into())),
        ("disk in /boot", disk("/boot/vmlinuz".into())),
        ("usr", disk("/usr/bin/qemu-img".into())),
        ("lib", disk("/lib/x86_64-linux-gnu/libc.so.6".into())),
        ("state outside own dir", disk(h.p("state/server.key"))),
        ("other VM's dir", disk(h.p("state/instances/vm2/root.img"))),
        (
            "other VM's dir via symlink",
            disk(h.p("disks/vm2/root.img")),
        ),
        (
            "writable image store",
            disk(h.p("state/images/debian.qcow2")),
        ),
        ("profile dir", disk(h.p("profiles/kvmbox-x"))),
        ("a directory", disk(h.p("disks"))),
        (
            "kernel in /etc",
            with(h.vm(), "kernel", json!("/etc/shadow")),
        ),
        (
            "qmp outside own dir",
            with(h.vm(), "qmp_socket", json!("/run/docker.sock")),
        ),
        (
            "log into another VM",
            with(
                h.vm(),
                "log_file",
                json!(h.p("state/instances/vm2/qemu.log")),
            ),
        ),
        (
            "vm dir outside state",
            with(h.vm(), "dir", json!(h.p("disks"))),
        ),
        (
            "vm dir is the state dir",
            with(h.vm(), "dir", json!(h.p("state"))),
        ),
        (
            "bad uuid (bad digit)",
            with(
                h.vm(),
                "uuid",
                json!("00000000-0000-0000-0000-00000000000g"),
            ),
        ),
        (
            "bad uuid (too long)",
            with(h.vm(), "uuid", json!(format!("{UUID}abcdef"))),
        ),
        (
            "bad uuid (too short)",
            with(h.vm(), "uuid", json!("00000000-0000-0000-0000-0123456789a")),
        ),
        (
            "bad uuid (upper case)",
            with(h.vm(), "uuid", json!(UUID.to_uppercase())),
        ),
        (
            "bad uuid (injection)",
            with(h.vm(), "uuid", json!("0 {\n /** rwk,\n}\nprofile x")),
        ),
        (
            "unknown field",
            with(h.vm(), "extra_rules", json!("/** rwk,")),
        ),
        (
            "unknown disk field",
            with(
                h.vm(),
                "disks",
                json!([{"path": h.p("disks/1.img"), "mode": "rwk"}]),
            ),
        ),
        (
            "missing uuid",
            json!({"name": "vm1", "dir": h.p("state/instances/vm1")}),
        ),
        ("tap name", with(h.vm(), "taps", json!(["tap0\n/** rwk,"]))),
    ];
    let mut names: Vec<(String, Value)> =
        cases.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    for c in ['/', '[', ']', '{', '}', '?', '^', ',', '"', '*', '\n', ' '] {
        names.push((
            format!("name with {c:?}"),
            with(h.vm(), "name", json!(format!("virt-aa-helper-test-{c}"))),
        ));
    }
    for (what, vm) in &names {
        h.create(vm).fails().code_is(1).stderr_one_line();
        h.untouched(what);
    }
    for raw in ["{", "[]", "", "{\"uuid\": 1}"] {
        h.helper("create")
            .stdin(raw)
            .fails()
            .stderr_contains("invalid VM definition");
        h.untouched(raw);
    }
}

#[test]
fn uuid_on_the_command_line_must_match() {
    let h = Host::new();
    h.helper("create")
        .args(["--uuid", UUID2])
        .stdin(h.vm().to_string())
        .fails()
        .stderr_contains("does not match");
    h.helper("create")
        .args(["--uuid", "libvirt-x"])
        .stdin(h.vm().to_string())
        .fails()
        .stderr_contains("invalid UUID");
    h.untouched("uuid mismatch");
    let quoted = h.p("pro\"files");
    applet("kvmbox-aa-helper")
        .args([
            "create",
            "--profile-dir",
            &quoted,
            "--state-dir",
            &h.p("state"),
        ])
        .stdin(h.vm().to_string())
        .fails()
        .stderr_contains("special in AppArmor");
    assert!(!Path::new(&quoted).exists());
    h.helper("remove")
        .fails()
        .code_is(2)
        .stderr_contains("needs --uuid");
    h.helper("delete")
        .args(["--uuid", "nope"])
        .fails()
        .code_is(1)
        .stderr_contains("invalid UUID");
}

#[test]
fn command_line_mistakes_are_usage_errors() {
    let h = Host::new();
    h.helper("frobnicate").fails().code_is(2);
    h.helper("add-file")
        .stdin(h.vm().to_string())
        .fails()
        .code_is(2)
        .stderr_contains("needs a PATH");
    h.helper("create")
        .arg("/x")
        .stdin(h.vm().to_string())
        .fails()
        .code_is(2);
    h.helper("create")
        .args(["--apparmor", "maybe"])
        .fails()
        .code_is(2);
    applet("kvmbox-aa-helper")
        .arg("--help")
        .succeeds()
        .stdout_contains("add-file");
    h.untouched("usage");
}

#[test]
fn dot_dotdot_and_symlinks_are_normalised_in_the_profile() {
    if !have_parser() {
        return;
    }
    let h = Host::new();
    symlink(h.p("disks/2.img"), h.p("disks/link.img")).unwrap();
    fs::create_dir(h.p("real")).unwrap();
    symlink(h.p("real"), h.p("linkdir")).unwrap();
    let vm = with(
        h.vm(),
        "disks",
        json!([
            {"path": format!("{}/./../disks/./1.img", h.p("disks"))},
            {"path": h.p("disks/link.img"), "readonly": true},
            {"path": h.p("linkdir/new.img")},
        ]),
    );
    h.create(&vm).succeeds();
    h.compiles(UUID);
    let files = h.files(UUID);
    assert!(
        files.contains(&format!("\"{}\" rwk,", h.p("disks/1.img"))),
        "{files}"
    );
    assert!(
        files.contains(&format!("\"{}\" rk,", h.p("disks/2.img"))),
        "{files}"
    );
    assert!(
        files.contains(&format!("\"{}\" rwk,", h.p("real/new.img"))),
        "{files}"
    );
    for raw in ["/./", "/../", "link.img", "linkdir"] {
        assert!(!files.contains(raw), "{raw} left in {files}");
    }
}

#[test]
fn add_file_appends_and_reloads_and_refuses_bad_paths() {
    if !have_parser() {
        return;
    }
    let h = Host::new();
    h.create(&h.vm()).succeeds();
    let before = h.files(UUID);
    h.helper("add-file")
        .arg(h.p("disks/./2.img"))
        .arg("--readonly")
        .stdin(h.vm().to_string())
        .succeeds()
        .stdout_contains("loaded");
    h.compiles(UUID);
    let after = h.files(UUID);
    assert!(after.contains(&format!("\"{}\" rwk,", h.p("disks/1.img"))));
    assert!(
        after.contains(&format!(
            "\"{}\" rk,\n  deny \"{}\" w,",
            h.p("disks/2.img"),
            h.p("disks/2.img")
        )),
        "{after}"
    );
    let log = h.parser_log();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.lines()
            .all(|l| l.starts_with("-r -W -L ") && l.ends_with(&format!("kvmbox-{UUID}"))),
        "{log}"
    );

    // libvirt's "-r with invalid -f": refused, the list and the kernel untouched.
    for bad in [
        "/etc/passwd",
        "/boot/initrd.img",
        "relative.img",
        "/tmp/a\n}\n",
    ] {
        h.helper("add-file")
            .arg(bad)
            .stdin(h.vm().to_string())
            .fails()
            .code_is(1);
    }
    assert_eq!(h.files(UUID), after);
    assert_eq!(h.parser_log(), log);
    assert_ne!(before, after);
}

#[test]
fn remove_unloads_and_delete_also_removes_the_files() {
    if !have_parser() {
        return;
    }
    let h = Host::new();
    h.create(&h.vm()).succeeds();
    h.helper("remove")
        .args(["--uuid", UUID])
        .succeeds()
        .stdout_contains(&format!("kvmbox-{UUID} unloaded"));
    assert!(
        h.parser_log().lines().last().unwrap().starts_with("-R"),
        "{}",
        h.parser_log()
    );
    assert!(h.profile(UUID).exists());
    h.helper("delete")
        .args(["--uuid", UUID])
        .succeeds()
        .stdout_contains("files deleted");
    assert!(h.parser_log().lines().last().unwrap().starts_with("-R"));
    assert!(!h.profile(UUID).exists());
    assert!(!h.profiles().join(format!("kvmbox-{UUID}.files")).exists());
}

#[test]
fn an_edited_profile_is_kept_and_only_the_files_list_regenerated() {
    if !have_parser() {
        return;
    }
    let h = Host::new();
    h.create(&h.vm()).succeeds();
    let path = h.profile(UUID);
    let edited = fs::read_to_string(&path).unwrap().replace(
        "include <abstractions/kvmbox-qemu>",
        "include <abstractions/kvmbox-qemu>\n  /srv/shared/** r,",
    );
    fs::write(&path, &edited).unwrap();
    let vm2 = with(h.vm(), "disks", json!([{"path": h.p("disks/2.img")}]));
    h.create(&vm2)
        .succeeds()
        .stderr_contains("keeping the edited profile");
    assert_eq!(fs::read_to_string(&path).unwrap(), edited);
    assert!(h.files(UUID).contains(&h.p("disks/2.img")));
    assert!(!h.files(UUID).contains(&h.p("disks/1.img")));
    h.compiles(UUID);
    // An unedited one is regenerated from a new template.
    fs::remove_file(&path).unwrap();
    h.create(&h.vm()).succeeds();
    let custom = h.p("custom.qemu");
    fs::write(&custom, "include <tunables/global>\nprofile KVMBOX_TEMPLATE {\n  include <abstractions/kvmbox-qemu>\n  /srv/custom r,\n  #KVMBOX_FILES\n}\n").unwrap();
    h.helper("replace")
        .args(["--template", &custom])
        .stdin(h.vm().to_string())
        .succeeds();
    assert!(fs::read_to_string(&path)
        .unwrap()
        .contains("/srv/custom r,"));
    h.compiles(UUID);
    // Without --template: the one beside the profile directory (where
    // `make install` puts it) is used.
    fs::copy(&custom, h.p("TEMPLATE.qemu")).unwrap();
    fs::remove_file(&path).unwrap();
    h.helper("replace").stdin(h.vm().to_string()).succeeds();
    assert!(fs::read_to_string(&path)
        .unwrap()
        .contains("/srv/custom r,"));
    fs::write(&custom, "profile KVMBOX_TEMPLATE {\n}\n").unwrap();
    h.helper("replace")
        .args(["--template", &custom])
        .stdin(h.vm().to_string())
        .fails()
        .stderr_contains("#KVMBOX_FILES");
}

#[test]
fn two_vms_may_not_share_a_writable_disk() {
    let h = Host::new();
    h.create(&h.vm()).succeeds();
    let vm2 = json!({"uuid": UUID2, "name": "vm2", "dir": h.p("state/instances/vm2"),
                     "disks": [{"path": h.p("disks/1.img"), "readonly": true}]});
    h.create(&vm2).fails().stderr_contains("another VM");
    assert!(!h.profile(UUID2).exists());
    let vm2 = with(vm2, "disks", json!([{"path": h.p("disks/2.img")}]));
    h.create(&vm2).succeeds();
}

#[test]
fn dry_run_and_show_write_nothing() {
    let h = Host::new();
    for mode in ["show", "create"] {
        let mut cmd = h.helper(mode);
        if mode == "create" {
            cmd = cmd.arg("--dry-run");
        }
        cmd.stdin(h.vm().to_string())
            .succeeds()
            .stdout_contains(&format!("profile kvmbox-{UUID} "))
            .stdout_contains(&format!("\"{}\" rwk,", h.p("disks/1.img")));
    }
    h.helper("delete")
        .args(["--uuid", UUID, "--dry-run"])
        .succeeds()
        .stdout_contains("would remove");
    h.untouched("dry run");
}

#[test]
fn without_kernel_apparmor_loading_is_skipped_or_refused() {
    let enabled = fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    if enabled {
        eprintln!("skipping: this kernel has AppArmor");
        return;
    }
    let h = Host::new();
    h.base("create")
        .args(["--apparmor", "required"])
        .stdin(h.vm().to_string())
        .fails()
        .stderr_contains("AppArmor is required");
    h.untouched("required");
    h.base("create")
        .args(["--apparmor", "auto"])
        .stdin(h.vm().to_string())
        .succeeds()
        .stdout_contains("not loaded: the kernel has no AppArmor");
    assert!(h.profile(UUID).exists());
    assert_eq!(h.parser_log(), "");
    h.helper("create")
        .arg("--no-load")
        .stdin(h.vm().to_string())
        .succeeds()
        .stdout_contains("not loaded: --no-load");
    assert_eq!(h.parser_log(), "");
}

#[test]
fn the_parser_runs_with_an_empty_environment() {
    if !have_parser() {
        return;
    }
    let h = Host::new();
    h.helper("create")
        .env("KVMBOX_SECRET", "x")
        .env("LD_PRELOAD", "/tmp/evil.so")
        .stdin(h.vm().to_string())
        .succeeds();
    let env = fs::read_to_string(h.root.join("parser.env")).unwrap();
    assert!(
        !env.contains("KVMBOX_SECRET") && !env.contains("LD_PRELOAD"),
        "{env}"
    );
    assert!(env.contains("PATH=/usr/sbin:/sbin:/usr/bin:/bin"), "{env}");
}

#[test]
fn shipped_profiles_compile() {
    if !have_parser() {
        return;
    }
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for f in [
        "TEMPLATE.qemu",
        "usr.sbin.kvmboxd",
        "usr.libexec.kvmbox-aa-helper",
    ] {
        program(PARSER)
            .args(["-Q", "-K", "-T", "-I"])
            .arg(&profiles)
            .arg(profiles.join(f))
            .succeeds();
    }
}
