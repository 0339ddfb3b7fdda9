//! A user's subordinate uids (/etc/subuid) count as that user. Its user
//! namespaces run as them, and SO_PEERCRED shows them as they are, so
//! otherwise one user would count as up to 65,536 peers: for its share of
//! the Unix socket's connections and for its failed passphrase guesses.
//!
//! Root stands in for such a namespace here by running the client as one
//! of those uids (setpriv): the daemon sees the same peer credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/users.rs"]
mod users;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{program, Cmd};
use daemon::Daemon;

/// A throwaway user with subordinate uids, deleted (and its ids with it)
/// when dropped; /etc/subuid is made if missing (usermod needs it) and
/// removed again if nothing else is in it.
struct SubUser {
    name: String,
    made: bool,
}

const SUBUID: &str = "/etc/subuid";

impl SubUser {
    fn create(first: u32, count: u32) -> SubUser {
        let name = format!("kvs{}", std::process::id() % 100_000);
        users::useradd(&[&name]);
        let made = !Path::new(SUBUID).exists();
        if made {
            std::fs::write(SUBUID, "").unwrap();
        }
        let user = SubUser { name, made };
        let range = format!("{first}-{}", first + count - 1);
        program("usermod")
            .args(["--add-subuids", &range, &user.name])
            .succeeds();
        user
    }
}

impl Drop for SubUser {
    fn drop(&mut self) {
        let out = Command::new("userdel").arg(&self.name).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("userdel {} failed: {out:?}", self.name);
        }
        if self.made && std::fs::metadata(SUBUID).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(SUBUID);
        }
    }
}

/// A process ended when dropped, even by a failing test: a user with a
/// process left cannot be deleted.
struct Held(std::process::Child);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bin`'s kvmbox applet with `ARGS` as `uid` (with `gid` and no other
/// group), with a config dir of its own under `dir`.
fn kvmbox_as(d: &Daemon, bin: &Path, dir: &Path, uid: u32, gid: u32, args: &[&str]) -> Cmd {
    let conf: PathBuf = dir.join(format!("conf-{uid}"));
    if !conf.exists() {
        std::fs::create_dir(&conf).unwrap();
        std::os::unix::fs::chown(&conf, Some(uid), Some(gid)).unwrap();
    }
    program("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
        .args(["--clear-groups", "--"])
        .arg(bin)
        .args(["--applet", "kvmbox"])
        .args(args)
        .env("KVMBOX_CONF", &conf)
        .env("KVMBOX_SOCKET", &d.socket)
        .env_remove("HOME")
        .env_remove("XDG_RUNTIME_DIR")
}

#[test]
fn subordinate_uids_count_as_their_owner() {
    if !users::can_make_users() {
        return;
    }
    let (scratch, bin) = users::shared_scratch();
    let dir = scratch.path();
    // Far from the default instances.uid_range and from the other tests' ids.
    let first = 5_000_000 + (std::process::id() % 10_000) * 100;
    let count = 100;
    let user = SubUser::create(first, count);
    let owner = users::id_of(&user.name, "-u");
    let owner_gid = users::id_of(&user.name, "-g");
    let inside = first + 7;
    let outside = first + count;
    // Default timeouts, so that the silent holder stays for the test.
    let d = Daemon::start(&bin, dir, &["--group", "root", "--max-connections", "4"]);

    // Connections: the owner holds its share (a quarter of four)…
    let held = Held(daemon::hold_as(owner, &d.socket));
    std::thread::sleep(Duration::from_millis(200));
    // …so one of its subordinate uids is closed at once, while a uid of
    // nobody's range is served (as a member of the admin group: that also
    // opens the socket to every user, for what follows).
    kvmbox_as(&d, &bin, dir, inside, 0, &["info"])
        .fails()
        .code_is(1)
        .stderr_contains("connection to the daemon failed")
        .stderr_one_line();
    kvmbox_as(&d, &bin, dir, outside, 0, &["info"]).succeeds();
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    // Served now: answered, if only to say it is not trusted (only the
    // first member of the admin group is, without a passphrase).
    kvmbox_as(&d, &bin, dir, inside, 0, &["info"])
        .fails()
        .stderr_contains("not trusted");
    let log = d.log_text();
    assert!(
        log.contains(&format!("connection from uid {inside} refused")),
        "{log}"
    );

    // Passphrase guesses: four wrong ones, each from another subordinate
    // uid, use up the owner's free mistakes…
    let pass = "Subordinate-guesses-add-up";
    program(bin.to_str().unwrap())
        .args([
            "--applet",
            "kvmbox",
            "config",
            "set",
            "local.passphrase",
            pass,
        ])
        .env("KVMBOX_CONF", dir.join("conf-root"))
        .env("KVMBOX_SOCKET", &d.socket)
        .env_remove("HOME")
        .succeeds();
    for uid in first + 1..first + 5 {
        kvmbox_as(&d, &bin, dir, uid, uid, &["authenticate", "nope"])
            .fails()
            .stderr_contains("wrong passphrase");
    }
    // …so even the right one is not looked at for the owner…
    kvmbox_as(&d, &bin, dir, owner, owner_gid, &["authenticate", pass])
        .fails()
        .stderr_contains("too many failed attempts");
    // …while a uid outside the range is not held back by them.
    kvmbox_as(
        &d,
        &bin,
        dir,
        outside + 1,
        outside + 1,
        &["authenticate", pass],
    )
    .succeeds();
}
