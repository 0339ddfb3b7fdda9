//! Validation: from the daemon's VM definition to a list of rules that is
//! safe to write, or a refusal. Nothing here writes anything.
//!
//! Every path is resolved to the real file first (`/./`, `/../` and symlinks,
//! the parent only when the file does not exist yet, as libvirt allows for
//! new disks), and every check is made on that resolved path: it is the one
//! AppArmor mediates at open time, and the one written into the profile.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{invalid, Error, Uuid};

/// A VM as the daemon describes it on the helper's stdin. Unknown fields are
/// refused, so a typo cannot silently drop a file from the profile.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Canonical UUID; the profile is `kvmbox-<uuid>`.
    pub uuid: String,
    /// The VM's name (a DNS-label-like word; appears in a comment).
    pub name: String,
    /// The VM's own directory, strictly inside the daemon's state directory.
    pub dir: String,
    /// Disks attached at start.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Disks hot-plugged since start (kept across `replace`).
    #[serde(default)]
    pub hotplug: Vec<Disk>,
    /// Direct-boot kernel and initrd: read-only, may live in /boot.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    /// Firmware code (e.g. OVMF_CODE.fd): read-only, may live under /usr/share.
    #[serde(default)]
    pub firmware: Option<String>,
    /// Firmware variables: writable, inside `dir`.
    #[serde(default)]
    pub nvram: Option<String>,
    /// QMP, serial console and guest agent sockets, pid file and log:
    /// writable, inside `dir`.
    #[serde(default)]
    pub qmp_socket: Option<String>,
    #[serde(default)]
    pub console_socket: Option<String>,
    #[serde(default)]
    pub agent_socket: Option<String>,
    #[serde(default)]
    pub pid_file: Option<String>,
    #[serde(default)]
    pub log_file: Option<String>,
    /// QEMU's own stdout and stderr, opened by the daemon and inherited:
    /// without a rule the kernel revokes them at exec (`file_inherit`), and
    /// a QEMU that fails to start could not say why.
    #[serde(default)]
    pub stderr_log: Option<String>,
    /// Tap interfaces (names, not paths); QEMU reaches them via /dev/net/tun.
    #[serde(default)]
    pub taps: Vec<String>,
}

/// One disk of an [`Instance`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

/// Where the helper stands on this host: fixed by its command line, never by
/// the VM definition.
#[derive(Clone, Debug)]
pub struct Host {
    /// Directory of the per-VM profiles (default /etc/apparmor.d/kvmbox).
    pub profile_dir: PathBuf,
    /// The daemon's state directory (default /var/lib/kvmbox); its `images/`
    /// subdirectory is the shared, read-only image store.
    pub state_dir: PathBuf,
}

/// What a rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    /// A writable disk: `rwk`.
    Disk,
    /// A read-only disk: `rk` and an explicit `deny w`.
    ReadOnlyDisk,
    /// Kernel, initrd, firmware: `r` and an explicit `deny w`.
    Boot,
    /// QMP socket, pid, log, nvram in the VM's own directory: `rwk`.
    Runtime,
}

impl RuleKind {
    fn writable(self) -> bool {
        matches!(self, RuleKind::Disk | RuleKind::Runtime)
    }
}

/// One resolved path and what it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Absolute, resolved, made only of characters from [`plain_char`].
    pub path: String,
    pub kind: RuleKind,
}

/// A definition that passed every check.
#[derive(Clone, Debug)]
pub struct Validated {
    pub uuid: Uuid,
    pub name: String,
    /// The VM directory, resolved.
    pub dir: String,
    pub rules: Vec<Rule>,
    pub taps: Vec<String>,
}

/// Prefixes no VM file may resolve into, compared by whole path components.
/// libvirt's list is similar but compares strings (`/lib` also blocks
/// `/library`); here `/usr` is blocked entirely and the few firmware
/// directories QEMU needs are granted by the abstraction instead.
const RESTRICTED: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/cache/apparmor",
    "/var/lib/apparmor",
    "/var/run",
];

/// Where kernel, initrd and firmware (read-only) may also live.
const BOOT_ALLOWED: &[&str] = &[
    "/boot",
    "/usr/lib/ipxe",
    "/usr/share/AAVMF",
    "/usr/share/OVMF",
    "/usr/share/edk2",
    "/usr/share/edk2-ovmf",
    "/usr/share/ovmf",
    "/usr/share/qemu",
    "/usr/share/qemu-efi",
    "/usr/share/qemu-efi-aarch64",
    "/usr/share/seabios",
];

const SPECIAL: &str =
    "it holds characters that are special in AppArmor rules (only letters, digits and / . _ - + ~ : = % are allowed)";

/// PATH_MAX, counting the terminating NUL.
const PATH_MAX: usize = 4095;

/// Whether `c` may appear in a path written into a profile.
///
/// Refusing is chosen over escaping: AppArmor gives meaning to `" # , { } [
/// ] * ? ^ \ @ $` and whitespace in various places (globs, variables,
/// alternations, rule ends, comments), its escape rules differ between
/// parser versions, and a VM disk never needs such a name. An allow-list
/// also covers what nobody thought of: control characters, newlines, non-ASCII.
pub(crate) fn plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '~' | ':' | '=' | '%')
}

/// Checks `inst` against `host` (plus `extra`, a hot-plugged disk) and
/// returns the rules to write. `other_vms` maps paths other VMs' profiles
/// already grant to whether they grant write access.
pub fn check(
    inst: &Instance,
    host: &Host,
    extra: Option<&Disk>,
    other_vms: &BTreeMap<String, bool>,
) -> Result<Validated, Error> {
    let uuid = Uuid::parse(&inst.uuid)?;
    check_name(&inst.name)?;
    for tap in &inst.taps {
        check_tap(tap)?;
    }
    let ctx = Context::new(host, &inst.dir)?;

    let mut rules: Vec<Rule> = Vec::new();
    let mut add = |what: &str, raw: &str, kind: RuleKind| -> Result<(), Error> {
        let path = ctx.allow(what, raw, kind)?;
        if let Some(&other_writes) = other_vms.get(&path) {
            if other_writes || kind.writable() {
                return Err(refused(what, raw, "another VM's profile already grants it"));
            }
        }
        match rules.iter().find(|r| r.path == path) {
            Some(r) if r.kind == kind => {}
            Some(_) => {
                return Err(refused(
                    what,
                    raw,
                    "it is listed twice with different access",
                ))
            }
            None => rules.push(Rule { path, kind }),
        }
        Ok(())
    };
    let disk_kind = |d: &Disk| {
        if d.readonly {
            RuleKind::ReadOnlyDisk
        } else {
            RuleKind::Disk
        }
    };
    for d in inst.disks.iter().chain(&inst.hotplug).chain(extra) {
        add("disk", &d.path, disk_kind(d))?;
    }
    for (what, p) in [
        ("kernel", &inst.kernel),
        ("initrd", &inst.initrd),
        ("firmware", &inst.firmware),
    ] {
        if let Some(p) = p {
            add(what, p, RuleKind::Boot)?;
        }
    }
    for (what, p) in [
        ("nvram", &inst.nvram),
        ("QMP socket", &inst.qmp_socket),
        ("console socket", &inst.console_socket),
        ("guest agent socket", &inst.agent_socket),
        ("pid file", &inst.pid_file),
        ("log file", &inst.log_file),
        ("QEMU's log", &inst.stderr_log),
    ] {
        if let Some(p) = p {
            add(what, p, RuleKind::Runtime)?;
        }
    }
    Ok(Validated {
        uuid,
        name: inst.name.clone(),
        dir: ctx.dir_str,
        rules,
        taps: inst.taps.clone(),
    })
}

/// Names: what virt-aa-helper refuses (`/ [ ] { } ? ^ , " *`) and more — a
/// letter or digit, then letters, digits, `.`, `_`, `-`, at most 63 in all.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid VM name {name:?}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// Linux interface names: 1-15 bytes, no `/`, not `.` or `..`.
fn check_tap(tap: &str) -> Result<(), Error> {
    let ok = (1..=15).contains(&tap.len())
        && tap != "."
        && tap != ".."
        && tap
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid tap device name {tap:?}")))
    }
}

fn refused(what: &str, raw: &str, reason: impl Into<String>) -> Error {
    Error::Refused {
        what: what.to_string(),
        path: raw.to_string(),
        reason: reason.into(),
    }
}

/// Resolves `raw` to the real file: through `/./`, `/../` and symlinks.
/// A file that does not exist yet resolves through its parent, which must
/// exist; a dangling symlink is refused (QEMU would create its target).
pub(crate) fn resolve(what: &str, raw: &str) -> Result<PathBuf, Error> {
    if !raw.starts_with('/') {
        return Err(refused(what, raw, "it is not an absolute path"));
    }
    if raw.len() > PATH_MAX || raw.contains('\0') {
        return Err(refused(what, raw, "it is too long or holds a NUL byte"));
    }
    // Checked on the input too, not only on the result: a refusal then says
    // why, instead of failing to resolve a name with a newline in it.
    if !raw.chars().all(plain_char) {
        return Err(refused(what, raw, SPECIAL));
    }
    let path = Path::new(raw);
    let io_err = |source| Error::Resolve {
        what: what.to_string(),
        path: raw.to_string(),
        source,
    };
    match fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if fs::symlink_metadata(path).is_ok() {
                return Err(refused(what, raw, "it is a dangling symlink"));
            }
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(refused(what, raw, "it names no file"));
            };
            let parent = fs::canonicalize(parent).map_err(io_err)?;
            Ok(parent.join(name))
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Whether `path` is `prefix` or inside it, by whole components.
fn under(path: &Path, prefix: &Path) -> bool {
    path.starts_with(prefix)
}

/// Resolves a directory the helper itself is told about (state, profile,
/// VM directory): it may not exist yet, then it is taken lexically.
fn resolve_dir(what: &str, raw: &Path) -> Result<PathBuf, Error> {
    let text = raw.to_str().unwrap_or_default();
    if !raw.is_absolute() || raw.components().any(|c| c == Component::ParentDir) {
        return Err(refused(what, text, "it must be absolute, without '..'"));
    }
    match fs::canonicalize(raw) {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(raw.components().collect()),
        Err(source) => Err(Error::Resolve {
            what: what.to_string(),
            path: text.to_string(),
            source,
        }),
    }
}

/// Checks a directory path the profile refers to for plain characters.
pub(crate) fn plain_path(what: &str, path: &Path) -> Result<String, Error> {
    match path.to_str() {
        Some(s) if s.chars().all(plain_char) => Ok(s.to_string()),
        _ => Err(refused(what, &path.to_string_lossy(), SPECIAL)),
    }
}

struct Context {
    profile_dir: PathBuf,
    state_dir: PathBuf,
    images_dir: PathBuf,
    dir: PathBuf,
    dir_str: String,
}

impl Context {
    fn new(host: &Host, dir: &str) -> Result<Self, Error> {
        let profile_dir = resolve_dir("profile directory", &host.profile_dir)?;
        plain_path("profile directory", &profile_dir)?;
        let state_dir = resolve_dir("state directory", &host.state_dir)?;
        let images_dir = state_dir.join("images");
        let resolved = resolve("VM directory", dir)?;
        let dir_str = plain_path("VM directory", &resolved)?;
        if !fs::metadata(&resolved).is_ok_and(|m| m.is_dir()) {
            return Err(refused(
                "VM directory",
                dir,
                "it is not an existing directory",
            ));
        }
        if resolved == state_dir || !under(&resolved, &state_dir) {
            return Err(refused(
                "VM directory",
                dir,
                format!(
                    "it must be inside the state directory {}",
                    state_dir.display()
                ),
            ));
        }
        if under(&resolved, &images_dir) || under(&resolved, &profile_dir) {
            return Err(refused(
                "VM directory",
                dir,
                "it is the image store or the profile directory",
            ));
        }
        if let Some(p) = RESTRICTED.iter().find(|p| under(&resolved, Path::new(p))) {
            return Err(refused("VM directory", dir, format!("{p} is off limits")));
        }
        Ok(Self {
            profile_dir,
            state_dir,
            images_dir,
            dir: resolved,
            dir_str,
        })
    }

    /// Resolves one path and checks it may be granted as `kind`.
    fn allow(&self, what: &str, raw: &str, kind: RuleKind) -> Result<String, Error> {
        let real = resolve(what, raw)?;
        let text = plain_path(what, &real).map_err(|_| refused(what, raw, SPECIAL))?;
        let no = |reason: String| Err(refused(what, raw, reason));
        if real == Path::new("/") {
            return no("it is the root directory".into());
        }
        if fs::metadata(&real).is_ok_and(|m| m.is_dir()) {
            return no(format!("{text} is a directory"));
        }
        if under(&real, &self.profile_dir) {
            return no(format!("{text} is in the profile directory"));
        }
        if kind == RuleKind::Runtime {
            if !under(&real, &self.dir) {
                return no(format!(
                    "{text} is outside the VM directory {}",
                    self.dir_str
                ));
            }
            return Ok(text);
        }
        let boot_ok =
            kind == RuleKind::Boot && BOOT_ALLOWED.iter().any(|p| under(&real, Path::new(p)));
        if !boot_ok {
            if let Some(p) = RESTRICTED.iter().find(|p| under(&real, Path::new(p))) {
                return no(format!("{text} is under {p}, which is off limits"));
            }
        }
        if under(&real, &self.state_dir) && !under(&real, &self.dir) {
            let read_only = matches!(kind, RuleKind::ReadOnlyDisk | RuleKind::Boot);
            if !(read_only && under(&real, &self.images_dir)) {
                return no(format!(
                    "{text} is daemon state outside this VM's directory (only images/ may be shared, read-only)"
                ));
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic
mod tests {
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
}
