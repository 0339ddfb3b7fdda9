#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use super::*;

const UUID: &str = "00000000-0000-0000-0000-0123456789ab";

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    host: Host,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        for d in [
            "state/instances/vm1",
            "state/instances/vm2",
            "state/images",
            "disks",
            "profiles",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("disks/a.img"), b"").unwrap();
        fs::write(root.join("state/images/base.qcow2"), b"").unwrap();
        let host = Host {
            profile_dir: root.join("profiles"),
            state_dir: root.join("state"),
        };
        Self {
            _tmp: tmp,
            root,
            host,
        }
    }

    fn p(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root.display())
    }

    fn inst(&self) -> Instance {
        Instance {
            uuid: UUID.into(),
            name: "vm1".into(),
            dir: self.p("state/instances/vm1"),
            ..Instance::default()
        }
    }

    fn with_disk(&self, path: &str, readonly: bool) -> Result<Validated, Error> {
        let mut i = self.inst();
        i.disks.push(Disk {
            path: path.into(),
            readonly,
        });
        check(&i, &self.host, None, &BTreeMap::new())
    }
}

#[test]
fn dot_and_dotdot_resolve_to_the_real_path() {
    let f = Fixture::new();
    let v = f
        .with_disk(&f.p("disks/./../disks//./a.img"), false)
        .unwrap();
    assert_eq!(v.rules[0].path, f.p("disks/a.img"));
    assert_eq!(v.rules[0].kind, RuleKind::Disk);
}

#[test]
fn symlinked_disk_resolves_to_its_target() {
    let f = Fixture::new();
    symlink(f.p("disks/a.img"), f.p("disks/link.img")).unwrap();
    symlink(f.p("disks"), f.p("linkdir")).unwrap();
    assert_eq!(
        f.with_disk(&f.p("disks/link.img"), false).unwrap().rules[0].path,
        f.p("disks/a.img")
    );
    // A missing file under a symlinked directory resolves through the parent.
    assert_eq!(
        f.with_disk(&f.p("linkdir/new.img"), false).unwrap().rules[0].path,
        f.p("disks/new.img")
    );
}

#[test]
fn disks_that_do_not_exist_yet_are_accepted_but_not_their_parents() {
    let f = Fixture::new();
    assert!(f.with_disk(&f.p("disks/new.img"), false).is_ok());
    assert!(matches!(
        f.with_disk(&f.p("nodir/new.img"), false),
        Err(Error::Resolve { .. })
    ));
}

#[test]
fn restricted_paths_are_refused_even_through_tricks() {
    let f = Fixture::new();
    symlink("/etc/passwd", f.p("disks/passwd.img")).unwrap();
    symlink("/etc/nonexistent-kvmbox", f.p("disks/dangling.img")).unwrap();
    symlink("/etc", f.p("etclink")).unwrap();
    let relative_etc = format!("{}/../../../../../../../../etc/passwd", f.root.display());
    for path in [
        "/etc/passwd".to_string(),
        "/etc/shadow".into(),
        "/proc/self/mem".into(),
        "/sys/kernel/security/apparmor/.load".into(),
        "/dev/sda".into(),
        "/boot/vmlinuz".into(), // a disk, not a kernel
        "/usr/bin/qemu-img".into(),
        "/bin/sh".into(),
        "/lib/x.img".into(),
        "/lib64/x.img".into(),
        "/root/x.img".into(),
        "/run/docker.sock".into(),
        "/var/cache/apparmor/x".into(),
        "/".into(),
        "/tmp".into(), // a directory
        f.p("disks/passwd.img"),
        f.p("disks/dangling.img"),
        f.p("etclink/new.img"),
        relative_etc,
        f.p("disks/./../etclink/../etclink/hosts"),
        f.p("profiles/kvmbox-x"),
        f.p("state/server.key"),
        f.p("state/instances/vm2/root.img"),
        f.p("state/images/base.qcow2"), // writable
        "relative/disk.img".into(),
        String::new(),
    ] {
        let r = f.with_disk(&path, false);
        assert!(r.is_err(), "{path:?} was accepted: {r:?}");
    }
}

#[test]
fn injection_characters_are_refused() {
    let f = Fixture::new();
    for bad in [
        "a\".img",
        "a\n  /** rwk,\n}\nprofile x {\n.img",
        "a}.img",
        "a{b,c}.img",
        "a[1].img",
        "a*.img",
        "a?.img",
        "a^.img",
        "a,.img",
        "a#.img",
        "a\\.img",
        "a@{HOME}.img",
        "a$x.img",
        "a\t.img",
        "a\x7f.img",
        "a b.img",
        "é.img",
    ] {
        let path = f.p(&format!("disks/{bad}"));
        let r = f.with_disk(&path, false);
        assert!(matches!(r, Err(Error::Refused { .. })), "{bad:?}: {r:?}");
    }
    assert!(f
        .with_disk(&f.p("disks/ok-1_2+3~4:5=6%7.img"), false)
        .is_ok());
}

#[test]
fn image_store_is_shared_read_only() {
    let f = Fixture::new();
    let v = f.with_disk(&f.p("state/images/base.qcow2"), true).unwrap();
    assert_eq!(v.rules[0].kind, RuleKind::ReadOnlyDisk);
    assert!(f.with_disk(&f.p("state/images/base.qcow2"), false).is_err());
}

#[test]
fn boot_files_may_live_in_boot_and_firmware_dirs_read_only() {
    let f = Fixture::new();
    let mut i = f.inst();
    i.kernel = Some("/boot/vmlinuz-test".into());
    i.initrd = Some("/boot/../boot/initrd.img-test".into());
    i.firmware = Some("/usr/share/OVMF/OVMF_CODE.fd".into());
    let v = check(&i, &f.host, None, &BTreeMap::new());
    // /usr/share/OVMF may be missing on this host: its parent must exist.
    if std::path::Path::new("/usr/share/OVMF").is_dir() {
        let v = v.unwrap();
        assert!(v.rules.iter().all(|r| r.kind == RuleKind::Boot));
        assert_eq!(v.rules[1].path, "/boot/initrd.img-test");
    }
    let mut i = f.inst();
    i.kernel = Some("/etc/shadow".into());
    assert!(check(&i, &f.host, None, &BTreeMap::new()).is_err());
}

#[test]
fn runtime_files_must_be_in_the_vm_directory() {
    let f = Fixture::new();
    let mut i = f.inst();
    i.qmp_socket = Some(f.p("state/instances/vm1/qmp.sock"));
    i.pid_file = Some(f.p("state/instances/vm1/qemu.pid"));
    assert!(check(&i, &f.host, None, &BTreeMap::new()).is_ok());
    i.log_file = Some(f.p("disks/qemu.log"));
    assert!(check(&i, &f.host, None, &BTreeMap::new()).is_err());
    i.log_file = None;
    i.stderr_log = Some(f.p("disks/qemu.log"));
    assert!(check(&i, &f.host, None, &BTreeMap::new()).is_err());
    i.stderr_log = None;
    i.console_socket = Some(f.p("disks/console.sock"));
    assert!(check(&i, &f.host, None, &BTreeMap::new()).is_err());
    i.console_socket = None;
    i.agent_socket = Some(f.p("disks/qga.sock"));
    assert!(check(&i, &f.host, None, &BTreeMap::new()).is_err());
    // QEMU's own log and its sockets get their rules like the other run files.
    let log = f.p("state/instances/vm1/qemu.log");
    let console = f.p("state/instances/vm1/console.sock");
    let agent = f.p("state/instances/vm1/qga.sock");
    i.stderr_log = Some(log.clone());
    i.console_socket = Some(console.clone());
    i.agent_socket = Some(agent.clone());
    let v = check(&i, &f.host, None, &BTreeMap::new()).unwrap();
    for p in [log, console, agent] {
        assert!(
            v.rules
                .iter()
                .any(|r| r.path == p && r.kind == RuleKind::Runtime),
            "{p}: {:?}",
            v.rules
        );
    }
}

#[test]
fn vm_directory_must_be_inside_the_state_directory() {
    let f = Fixture::new();
    for dir in [
        f.p("disks"),
        f.p("state"),
        f.p("state/images"),
        "/etc".into(),
        f.p("state/instances/none"),
    ] {
        let mut i = f.inst();
        i.dir = dir.clone();
        assert!(check(&i, &f.host, None, &BTreeMap::new()).is_err(), "{dir}");
    }
}

#[test]
fn names_and_taps_are_checked() {
    let f = Fixture::new();
    for name in [
        "",
        "a/b",
        "a[",
        "a]",
        "a{",
        "a}",
        "a?",
        "a^",
        "a,",
        "a\"",
        "a*",
        "a b",
        "a\n",
        "-a",
        &"x".repeat(64),
    ] {
        let mut i = f.inst();
        i.name = name.into();
        assert!(
            check(&i, &f.host, None, &BTreeMap::new()).is_err(),
            "{name:?}"
        );
    }
    for tap in ["", "..", "a/b", "tap\"0", "0123456789abcdef"] {
        let mut i = f.inst();
        i.taps = vec![tap.into()];
        assert!(
            check(&i, &f.host, None, &BTreeMap::new()).is_err(),
            "{tap:?}"
        );
    }
}

#[test]
fn another_vms_writable_disk_is_refused() {
    let f = Fixture::new();
    let disk = f.p("disks/a.img");
    let mut i = f.inst();
    i.disks.push(Disk {
        path: disk.clone(),
        readonly: true,
    });
    let mut others = BTreeMap::new();
    others.insert(disk.clone(), false);
    assert!(
        check(&i, &f.host, None, &others).is_ok(),
        "read-only sharing"
    );
    others.insert(disk, true);
    assert!(check(&i, &f.host, None, &others).is_err());
}

#[test]
fn hotplugged_disk_is_checked_like_the_others() {
    let f = Fixture::new();
    let i = f.inst();
    let ok = Disk {
        path: f.p("disks/b.img"),
        readonly: false,
    };
    let v = check(&i, &f.host, Some(&ok), &BTreeMap::new()).unwrap();
    assert_eq!(v.rules[0].path, f.p("disks/b.img"));
    let bad = Disk {
        path: "/etc/passwd".into(),
        readonly: true,
    };
    assert!(check(&i, &f.host, Some(&bad), &BTreeMap::new()).is_err());
}

#[test]
fn same_path_twice_with_different_access_is_refused() {
    let f = Fixture::new();
    let mut i = f.inst();
    i.disks.push(Disk {
        path: f.p("disks/a.img"),
        readonly: false,
    });
    i.disks.push(Disk {
        path: f.p("disks/./a.img"),
        readonly: true,
    });
    assert!(check(&i, &f.host, None, &BTreeMap::new()).is_err());
}
