//! Real OS users for a test (made with useradd, deleted when dropped) and
//! the kvmbox client run as one of them.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{program, Cmd};

/// Users and a group made for this run, deleted when dropped.
pub struct Accounts {
    pub group: String,
    pub member: String,
    pub other: String,
}

/// The account tools lock /etc/passwd and /etc/group and fail at once,
/// rather than wait, when another call holds them: the tests of one file
/// run in parallel. Each call is made under this lock, and tried again a
/// while when the files are busy anyway (another process's call).
static ACCOUNT_FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs an account tool; whether it succeeded, and what it said if not.
fn account_tool(cmd: &str, args: &[&str]) -> Result<(), String> {
    let _one_at_a_time = ACCOUNT_FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut said = String::new();
    for _ in 0..50 {
        let out = Command::new(cmd).args(args).output().unwrap();
        if out.status.success() {
            return Ok(());
        }
        said = String::from_utf8_lossy(&out.stderr).into_owned();
        if !said.contains("lock") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(said)
}

fn run(cmd: &str, args: &[&str]) {
    if let Err(said) = account_tool(cmd, args) {
        panic!("{cmd} {args:?} failed: {said}");
    }
}

/// `useradd` for a throwaway user: no home, no shell, and no subordinate
/// ids (useradd hands out 65,536 of each where /etc/subuid exists; enough
/// users at once would reach the default `instances.uid_range`, which the
/// daemon then refuses).
pub fn useradd(args: &[&str]) {
    let base = [
        "-M",
        "-s",
        "/bin/false",
        "-K",
        "SUB_UID_COUNT=0",
        "-K",
        "SUB_GID_COUNT=0",
    ];
    run("useradd", &[&base[..], args].concat());
}

impl Accounts {
    pub fn create() -> Accounts {
        // Unique among the tests of this process (they run in parallel)
        // and, through the pid, among processes.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000
        );
        let a = Accounts {
            group: format!("kvg{tag}"),
            member: format!("kva{tag}"),
            other: format!("kvb{tag}"),
        };
        run("groupadd", &[&a.group]);
        useradd(&["-G", &a.group, &a.member]);
        useradd(&[&a.other]);
        a
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for u in [&self.member, &self.other] {
            let _ = account_tool("userdel", &[u]);
        }
        let _ = account_tool("groupdel", &[&self.group]);
    }
}

pub fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub struct Env {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Env {
    /// `kvmbox ARGS` as `user` (None: root), with its own config dir and no HOME.
    pub fn kvmbox(&self, user: Option<&str>, args: &[&str]) -> Cmd {
        let name = user.unwrap_or("root");
        let conf = self.dir.join(format!("conf-{name}"));
        let cmd = match user {
            Some(u) => program("setpriv")
                .args(["--reuid", u, "--regid", u, "--init-groups", "--"])
                .arg(&self.bin),
            None => program(self.bin.to_str().unwrap()),
        };
        cmd.args(["--applet", "kvmbox"])
            .args(args)
            .env("KVMBOX_CONF", conf)
            .env("KVMBOX_SOCKET", &self.socket)
            .env_remove("HOME")
            .env_remove("XDG_RUNTIME_DIR")
    }

    /// A request with `user`'s client key through a real peer (curl, TLS
    /// inside the Unix socket), past every check the kvmbox client makes:
    /// (status, body).
    pub fn curl(&self, user: &str, method: &str, path: &str, body: &str) -> (u16, String) {
        let conf = self.dir.join(format!("conf-{user}"));
        let out = program("setpriv")
            .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
            .args(["curl", "-sS", "-k", "-w", "\n%{http_code}", "-X", method])
            .arg("--unix-socket")
            .arg(&self.socket)
            .arg("--cert")
            .arg(conf.join("client.crt"))
            .arg("--key")
            .arg(conf.join("client.key"))
            .args(["--data-binary", body])
            .arg(format!("https://kvmbox{path}"))
            .succeeds()
            .stdout();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A raw request with `user`'s client key, through a real peer (openssl).
    pub fn openssl_get(&self, user: &str, path: &str) -> String {
        let conf = self.dir.join(format!("conf-{user}"));
        let out = program("setpriv")
            .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
            .args(["openssl", "s_client", "-quiet", "-unix"])
            .arg(&self.socket)
            .arg("-cert")
            .arg(conf.join("client.crt"))
            .arg("-key")
            .arg(conf.join("client.key"))
            .stdin(format!(
                "GET {path} HTTP/1.1\r\nHost: kvmbox\r\nConnection: close\r\n\r\n"
            ))
            .run();
        out.stdout()
    }
}

pub fn make_conf(dir: &Path, user: &str) {
    let conf = dir.join(format!("conf-{user}"));
    std::fs::create_dir(&conf).unwrap();
    std::os::unix::fs::chown(&conf, Some(id_of(user, "-u")), Some(id_of(user, "-g"))).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Whether this test can make real users (it runs as root, with useradd).
pub fn can_make_users() -> bool {
    if crate::daemon::is_root() && Command::new("useradd").arg("--help").output().is_ok() {
        return true;
    }
    eprintln!("skipped: needs root and useradd");
    false
}

/// A scratch directory other users can enter but not list, holding a copy
/// of the binary under test that they can run: (the directory, the copy).
pub fn shared_scratch() -> (tempfile::TempDir, PathBuf) {
    let scratch = crate::common::scratch();
    let dir = scratch.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let bin = dir.join("kvmbox");
    std::fs::copy(crate::common::bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (scratch, bin)
}
