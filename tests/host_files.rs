//! Host files a local user names (disks, a kernel, an image to import) with
//! real OS users against the shipped daemon running as root (needs root):
//! the daemon decides as the kernel would for that user, and acts later only
//! on the very file it checked, however the user rearranges the path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/users.rs"]
mod users;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use daemon::Daemon;
use users::{can_make_users, id_of, make_conf, shared_scratch, Accounts, Env};

/// Attempts at each race; the issue of a won race is checked after all.
/// `make test` runs 50; `make soak` sets KVMBOX_RACE_ROUNDS to run longer.
fn rounds() -> usize {
    std::env::var("KVMBOX_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(50)
}

/// A daemon as root, a trusted local user (`member`), its home under the
/// scratch dir, and a root-only directory beside it.
struct Setup {
    acct: Accounts,
    env: Env,
    _d: Daemon,
    home: PathBuf,
    _scratch: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    if !can_make_users() {
        return None;
    }
    let acct = Accounts::create();
    let (scratch, bin) = shared_scratch();
    let dir = scratch.path().to_path_buf();
    make_conf(&dir, &acct.member);
    let d = Daemon::start(&bin, &dir, &["--group", &acct.group]);
    let env = Env {
        bin,
        dir: dir.clone(),
        socket: d.socket.clone(),
    };
    // The first member of the group to connect is trusted.
    env.kvmbox(Some(&acct.member), &["info"]).succeeds();
    let home = dir.join("home");
    std::fs::create_dir(&home).unwrap();
    give(&home, &acct.member, 0o755);
    Some(Setup {
        acct,
        env,
        _d: d,
        home,
        _scratch: scratch,
    })
}

fn give(p: &Path, user: &str, mode: u32) {
    std::os::unix::fs::chown(p, Some(id_of(user, "-u")), Some(id_of(user, "-g"))).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `dir` made by root, 0700, holding `name` (root, `mode`) with `content`.
fn root_only(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let f = dir.join(name);
    std::fs::write(&f, content).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

fn unchanged(f: &Path, content: &[u8], mode: u32) {
    let m = std::fs::metadata(f).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, mode), "{f:?}");
    assert_eq!(std::fs::read(f).unwrap(), content, "{f:?}");
}

/// As `user`, swaps directory `e` under `home` for a link to `target` and
/// back, as fast as a shell can, every couple of milliseconds until dropped
/// (a path that never resolves would keep every request from the daemon).
/// It stops only between two whole swaps, when asked through a file, so
/// that no `mv` or `ln` of it is still running once it has been waited
/// for: killing the shell would leave such a child to finish later and
/// move `e` away under the rest of the test.
struct Flipper {
    child: Child,
    stop: PathBuf,
}

impl Flipper {
    fn start(user: &str, home: &Path, target: &Path) -> Flipper {
        let stop = home.join("flipper.stop");
        let script = format!(
            "cd {h} && while [ ! -e flipper.stop ]; do \
             mv e e.real && ln -s {t} e && rm e && mv e.real e || exit 1; sleep 0.005; done",
            h = home.display(),
            t = target.display()
        );
        let child = Command::new("setpriv")
            .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
            .args(["sh", "-c", &script])
            .spawn()
            .unwrap();
        Flipper { child, stop }
    }
}

impl Drop for Flipper {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stop);
    }
}

/// Puts `e` back as the real directory, should a flipper have failed
/// half-way through a swap.
fn restore(home: &Path) {
    let (e, real) = (home.join("e"), home.join("e.real"));
    if real.exists() {
        let _ = std::fs::remove_file(&e);
        std::fs::rename(&real, &e).unwrap();
    }
}

#[test]
fn a_disk_is_handed_over_and_back_only_as_checked() {
    let n_rounds = rounds();
    let Some(s) = setup() else { return };
    let (env, user, home) = (&s.env, s.acct.member.as_str(), &s.home);
    let kvmbox = |args: &[&str]| env.kvmbox(Some(user), args);
    let kernel = home.join("vmlinuz");
    std::fs::write(&kernel, vec![0u8; 4096]).unwrap();
    give(&kernel, user, 0o644);
    let k = kernel.to_str().unwrap();
    let secret = b"root's own data";
    let victim_dir = s.env.dir.join("victim");
    let victim = root_only(&victim_dir, "f", secret, 0o600);
    let public = s.env.dir.join("public.img");
    std::fs::write(&public, b"everyone may read this").unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Named directly, or through a link of the user's: the user cannot
    // open it, so neither does the daemon for the user. (Sent past the
    // client, which would refuse to resolve the path.)
    let link = home.join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    for p in [&victim, &link] {
        let body = serde_json::json!({
            "name": "x0",
            "config": {"boot.kernel": k},
            "devices": {"d": {"type": "disk", "source": p}},
        });
        let (code, text) = env.curl(user, "POST", "/1.0/instances", &body.to_string());
        assert_eq!(code, 403, "{text}");
        assert!(text.contains("cannot read it"), "{text}");
    }
    // A file the user can read but does not own is no disk of theirs, even
    // read-only: the daemon would hand it to the VM's uid.
    kvmbox(&[
        "init",
        "x0",
        "--kernel",
        k,
        "--disk",
        public.to_str().unwrap(),
    ])
    .fails()
    .stderr_contains("must belong to the calling user");
    kvmbox(&["init", "x0", "--kernel", k]).succeeds();
    let dev = format!("source={}", public.display());
    kvmbox(&[
        "config",
        "device",
        "add",
        "x0",
        "d",
        "disk",
        &dev,
        "readonly=true",
    ])
    .fails()
    .stderr_contains("must belong to the calling user");
    // Nor may the user make QEMU run as root, or unconfined, nor change an
    // instance root made privileged (its QEMU opens every path as root).
    for (k, v) in [
        ("security.privileged", "true"),
        ("security.apparmor", "off"),
    ] {
        kvmbox(&["config", "set", "x0", k, v])
            .fails()
            .stderr_contains(&format!("may set {k}={v}"));
    }
    kvmbox(&["delete", "x0"]).succeeds();
    env.kvmbox(
        None,
        &[
            "init",
            "p0",
            "--kernel",
            k,
            "-c",
            "security.privileged=true",
        ],
    )
    .succeeds();
    kvmbox(&["config", "set", "p0", "boot.initrd", k])
        .fails()
        .stderr_contains("runs privileged");
    env.kvmbox(None, &["delete", "p0"]).succeeds();

    // The user's own disk under a directory the user then swaps for a link
    // to the root-only one: neither start nor delete touches root's file.
    let e = home.join("e");
    std::fs::create_dir(&e).unwrap();
    give(&e, user, 0o755);
    let disks: Vec<PathBuf> = (0..=n_rounds).map(|i| e.join(format!("f{i}"))).collect();
    for f in &disks {
        std::fs::write(f, b"the user's disk").unwrap();
        give(f, user, 0o644);
    }
    for i in 0..disks.len() {
        let f = victim_dir.join(format!("f{i}"));
        std::fs::write(&f, secret).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let f0 = disks[0].to_str().unwrap();
    let start_args = ["-c", "limits.accel=tcg", "--kernel", k, "--disk", f0];
    kvmbox(&[&["init", "x1"][..], &start_args].concat()).succeeds();
    std::fs::rename(&e, home.join("e.real")).unwrap();
    std::os::unix::fs::symlink(&victim_dir, &e).unwrap();
    kvmbox(&["start", "x1"])
        .fails()
        .stderr_contains("no longer the file that was checked");
    kvmbox(&["delete", "x1"]).succeeds();
    unchanged(&victim_dir.join("f0"), secret, 0o600);
    restore(home);

    // The same swap, raced: every round names a fresh disk of the user's,
    // starts (QEMU then refuses the zero kernel, after the disk was handed
    // over) and deletes, while the directory flips under it.
    let flipper = Flipper::start(user, home, &victim_dir);
    let mut deleted = 0;
    let mut refused = Vec::new();
    for (i, disk) in disks.iter().enumerate().skip(1) {
        let name = format!("r{i}");
        let d = disk.to_str().unwrap();
        // A check that meets the link is refused (by the client, which
        // resolves the path first, or by the daemon) and touches nothing:
        // the round tries again.
        let init = [
            "init",
            &name,
            "-c",
            "limits.accel=tcg",
            "--kernel",
            k,
            "--disk",
            d,
        ];
        while refused.len() < 20 * n_rounds {
            let run = kvmbox(&init).run();
            if run.out.status.success() {
                let _ = kvmbox(&["start", &name]).run();
                kvmbox(&["delete", &name, "--force"]).succeeds();
                deleted += 1;
                break;
            }
            refused.push(run.stderr());
        }
    }
    drop(flipper);
    restore(home);
    assert_eq!(deleted, n_rounds, "refused: {:?}", refused.last());
    for i in 0..disks.len() {
        unchanged(&victim_dir.join(format!("f{i}")), secret, 0o600);
    }
    unchanged(&victim, secret, 0o600);
    let by_daemon = refused
        .iter()
        .filter(|r| r.contains("not authorized"))
        .count();
    let refused = format!(
        "{} refused, {by_daemon} of them by the daemon",
        refused.len()
    );
    eprintln!("{deleted} rounds of start and delete under a flipping directory; {refused}");
}

/// Hot-plug and removal rounds under a flipping directory: each needs a
/// running guest under TCG, so half of [`rounds`].
fn hotplug_rounds() -> usize {
    rounds().div_ceil(2)
}

/// The busybox guest of `qemu-tests/assets.sh`, or `None` after saying why
/// the test is skipped (`make test` builds it and sets
/// KVMBOX_REQUIRE_GUESTS, which makes its absence a failure).
fn guest_assets() -> Option<(PathBuf, PathBuf)> {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-tests/cache");
    let (k, i) = (cache.join("vmlinuz"), cache.join("initrd.gz"));
    if k.is_file() && i.is_file() {
        return Some((k, i));
    }
    let why = format!(
        "guest assets missing in {}: run qemu-tests/assets.sh",
        cache.display()
    );
    assert!(std::env::var_os("KVMBOX_REQUIRE_GUESTS").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// Deletes instance `.1` (as root, forced) when dropped, so that a failed
/// test leaves no QEMU behind the daemon that is killed after it.
struct Instance<'a>(&'a Env, &'static str);

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        let _ = self.0.kvmbox(None, &["delete", self.1, "--force"]).run();
    }
}

#[test]
fn a_disk_is_hot_plugged_and_removed_only_as_checked() {
    let Some(s) = setup() else { return };
    let n_rounds = hotplug_rounds();
    let Some(assets) = guest_assets() else { return };
    let (env, user, home) = (&s.env, s.acct.member.as_str(), &s.home);
    let kvmbox = |args: &[&str]| env.kvmbox(Some(user), args);
    let uid = id_of(user, "-u");
    // The guest's kernel and initrd, the user's own.
    let boot: Vec<String> = [(&assets.0, "vmlinuz"), (&assets.1, "initrd.gz")]
        .iter()
        .map(|(from, name)| {
            let to = home.join(name);
            std::fs::copy(from, &to).unwrap();
            give(&to, user, 0o644);
            to.to_str().unwrap().to_string()
        })
        .collect();
    let secret = b"root's own data";
    let victim_dir = s.env.dir.join("victim");
    root_only(&victim_dir, "f", secret, 0o600);
    // A fresh disk for every attempt: one whose hand-back met the link
    // stays the VM's, as documented, and the user cannot name it again.
    // Root's file of the same name is what the link leads to.
    let e = home.join("e");
    std::fs::create_dir(&e).unwrap();
    give(&e, user, 0o755);
    let names: Vec<String> = (0..10 * n_rounds).map(|j| format!("h{j}")).collect();
    let mut inodes = Vec::new();
    for n in &names {
        let f = e.join(n);
        std::fs::write(&f, vec![0x5au8; 4096]).unwrap();
        give(&f, user, 0o644);
        inodes.push(std::fs::metadata(&f).unwrap().ino());
        let v = victim_dir.join(n);
        std::fs::write(&v, secret).unwrap();
        std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let victims_unchanged = || {
        for n in &names {
            unchanged(&victim_dir.join(n), secret, 0o600);
        }
    };
    // The user's disk `j` wherever the flipper has its directory now.
    let own = |j: usize| loop {
        let found = [home.join("e"), home.join("e.real")]
            .iter()
            .filter_map(|d| std::fs::metadata(d.join(&names[j])).ok())
            .find(|m| m.ino() == inodes[j]);
        if let Some(m) = found {
            return m;
        }
    };
    let init = [
        "init",
        "hp",
        "-c",
        "limits.accel=tcg",
        "--kernel",
        &boot[0],
        "--initrd",
        &boot[1],
    ];
    kvmbox(&init).succeeds();
    let _hp = Instance(env, "hp");
    kvmbox(&["start", "hp"]).succeeds();
    // The guest's PCIe hot-plug driver must be up to let a disk go.
    let booted = std::time::Instant::now();
    while !kvmbox(&["console", "hp", "--show-log"])
        .run()
        .stdout()
        .contains("KVMBOX-GUEST-READY")
    {
        assert!(
            booted.elapsed() < std::time::Duration::from_secs(180),
            "the guest did not boot"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let raced = std::time::Instant::now();

    // Every round plugs a disk of the user's into the running VM and
    // removes it again, while the directory holding it flips to a link to
    // the root-only one. A check that meets the link is refused and
    // touches nothing: the round tries again with the next disk.
    let flipper = Flipper::start(user, home, &victim_dir);
    let (mut next, mut refused, mut vm_uid) = (0, Vec::new(), None);
    for i in 0..n_rounds {
        let dev = format!("d{i}");
        loop {
            assert!(next < names.len(), "refused: {:?}", refused.last());
            let (j, source) = (next, format!("source={}", e.join(&names[next]).display()));
            next += 1;
            let run = kvmbox(&["config", "device", "add", "hp", &dev, "disk", &source]).run();
            victims_unchanged();
            if !run.out.status.success() {
                refused.push(run.stderr());
                continue;
            }
            // Handed over: the VM's uid owns the user's disk now.
            let held = own(j).uid();
            assert_ne!(held, uid, "round {i}: {} was not handed over", names[j]);
            assert_eq!(*vm_uid.get_or_insert(held), held);
            kvmbox(&["config", "device", "remove", "hp", &dev]).succeeds();
            victims_unchanged();
            break;
        }
    }
    drop(flipper);
    restore(home);
    let took = raced.elapsed();
    // Every disk is the user's, as it was, or (its hand-back having met
    // the link) still the VM's: never anyone else's.
    let mut kept = 0;
    for (j, name) in names.iter().enumerate().take(next) {
        let m = own(j);
        if Some(m.uid()) == vm_uid {
            kept += 1;
        } else {
            assert_eq!((m.uid(), m.mode() & 0o7777), (uid, 0o644), "{name}");
        }
    }
    let by_daemon = refused
        .iter()
        .filter(|r| r.contains("not authorized"))
        .count();
    eprintln!(
        "{n_rounds} rounds of hot-plug and removal under a flipping directory in \
         {took:?}; {} refused, {by_daemon} of them by the daemon; {kept} disks kept by the VM",
        refused.len()
    );
}

#[test]
fn an_image_is_read_as_the_caller_would_read_it() {
    let n_rounds = rounds();
    let Some(s) = setup() else { return };
    let (env, user, home) = (&s.env, s.acct.member.as_str(), &s.home);
    let kvmbox = |args: &[&str]| env.kvmbox(Some(user), args);
    // World-readable, but behind a directory the user cannot enter.
    let secret: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let victim_dir = s.env.dir.join("victim");
    let victim = root_only(&victim_dir, "img", &secret, 0o644);
    let import = |path: &str, why: &str| {
        let body = serde_json::json!({
            "source": {"type": "path", "path": path},
            "aliases": [{"name": "v"}],
        });
        let (code, text) = env.curl(user, "POST", "/1.0/images", &body.to_string());
        assert_eq!(code, 403, "{path}: {text}");
        assert!(text.contains(why), "{path}: {text}");
    };
    import(victim.to_str().unwrap(), "cannot read it");
    // The daemon's own open files (its log, here) are not reached through
    // the links of /proc and /dev/fd, which would skip the directories.
    for p in ["/proc/self/fd/2", "/dev/fd/2", "/proc/thread-self/fd/2"] {
        import(p, "link of /proc or /dev/fd");
    }

    // The user's own image under a directory that flips to that one.
    let e = home.join("e");
    std::fs::create_dir(&e).unwrap();
    give(&e, user, 0o755);
    let own = e.join("img");
    std::fs::write(&own, vec![0x5au8; 65536]).unwrap();
    give(&own, user, 0o644);
    let flipper = Flipper::start(user, home, &victim_dir);
    let mut refused = 0;
    for i in 0..n_rounds {
        let alias = format!("i{i}");
        if !kvmbox(&["image", "import", own.to_str().unwrap(), "--alias", &alias])
            .run()
            .out
            .status
            .success()
        {
            refused += 1;
        }
    }
    drop(flipper);
    restore(home);
    let list = env
        .kvmbox(None, &["image", "list", "--format", "json"])
        .succeeds()
        .stdout();
    let images: serde_json::Value = serde_json::from_str(&list).unwrap();
    let fp_of = |data: &[u8]| {
        let out = common::program("sha256sum").stdin(data.to_vec()).succeeds();
        out.stdout().split_whitespace().next().unwrap().to_string()
    };
    let (bad, good) = (fp_of(&secret), fp_of(&std::fs::read(&own).unwrap()));
    for img in images.as_array().unwrap() {
        assert_ne!(
            img["fingerprint"],
            bad.as_str(),
            "the root-only image leaked"
        );
        assert_eq!(img["fingerprint"], good.as_str(), "{img}");
    }
    eprintln!("{n_rounds} imports under a flipping directory, {refused} refused");
}

#[test]
fn importing_the_same_content_again_keeps_the_stored_image() {
    let Some(s) = setup() else { return };
    let env = &s.env;
    let root = |args: &[&str]| env.kvmbox(None, args);
    let a = s.home.join("a.img");
    std::fs::write(&a, vec![1u8; 32 << 20]).unwrap();
    let b = s.home.join("b.img");
    std::fs::write(&b, vec![2u8; 32 << 20]).unwrap();
    root(&["image", "import", a.to_str().unwrap(), "--alias", "a1"]).succeeds();
    root(&["init", "a1", "vm1"]).succeeds();
    let store = env.dir.join("state/images");
    let stored: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    root(&["image", "import", a.to_str().unwrap(), "--alias", "a2"])
        .fails()
        .stderr_contains("already exists");
    for p in &stored {
        assert!(p.exists(), "{p:?} went with a refused import");
    }
    // Two imports at once each get a temporary file of their own.
    let both: Vec<_> = [("b1", &b), ("c1", &a)]
        .iter()
        .map(|(alias, f)| {
            let f = f.to_str().unwrap().to_string();
            let cmd = root(&["image", "import", &f, "--alias", alias]);
            std::thread::spawn(move || cmd.run().out.status.success())
        })
        .collect();
    let ok: Vec<bool> = both.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ok, [true, false], "b is new, a is stored already");
    let left: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    root(&["delete", "vm1"]).succeeds();
}
