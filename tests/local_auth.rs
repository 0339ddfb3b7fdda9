//! Local authentication end to end, with real OS users (needs root):
//! Multipass's model: the admin group's first client, then passphrases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/users.rs"]
mod users;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::program;
use daemon::Daemon;
use users::{can_make_users, id_of, make_conf, shared_scratch, Accounts, Env};

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn multipass_local_authentication_with_real_users() {
    if !can_make_users() {
        return;
    }
    let acct = Accounts::create();
    // Other users must reach the socket and run the binary, not read anything.
    let (scratch, bin) = shared_scratch();
    let dir = scratch.path().to_path_buf();
    for u in [&acct.member, &acct.other] {
        make_conf(&dir, u);
    }
    let mut d = Daemon::start(
        &bin,
        &dir,
        &["--group", &acct.group, "--log-level", "debug"],
    );
    let env = Env {
        bin,
        dir: dir.clone(),
        socket: d.socket.clone(),
    };

    // The socket starts root:<group> 0660.
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(d.socket_mode(), 0o660);
    assert_eq!(meta.uid(), 0);
    let group_gid: u32 = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{}:x:", acct.group))
                .map(|r| r.split(':').next().unwrap().parse().unwrap())
        })
        .unwrap();
    assert_eq!(meta.gid(), group_gid);

    // Before the first group member, nobody else can even connect.
    env.kvmbox(Some(&acct.other), &["info"])
        .fails()
        .stderr_contains("permission denied")
        .stderr_one_line();
    // Even if someone loosens the socket by hand, a non-member is not the
    // "first client": the daemon checks the group itself (SO_PEERCRED).
    let perms =
        |m| std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(m)).unwrap();
    perms(0o666);
    env.kvmbox(Some(&acct.other), &["info"])
        .fails()
        .stderr_contains("kvmbox authenticate");
    perms(0o660);

    // The group member's first call is trusted, and the socket opens.
    env.kvmbox(Some(&acct.member), &["info"])
        .succeeds()
        .stdout_contains("trusted");
    assert_eq!(d.socket_mode(), 0o666);
    env.kvmbox(Some(&acct.member), &["list", "--format", "json"])
        .succeeds()
        .stdout_contains("[]");

    // Another user connects now, but is refused with the hint.
    env.kvmbox(Some(&acct.other), &["info"])
        .fails()
        .stderr_contains("kvmbox authenticate")
        .stderr_one_line();
    env.kvmbox(Some(&acct.other), &["list"])
        .fails()
        .stderr_contains("kvmbox authenticate");
    assert!(env
        .openssl_get(&acct.other, "/1.0/instances")
        .starts_with("HTTP/1.1 403"));
    // It may still ask who the server is, and learns nothing more.
    let info = env.openssl_get(&acct.other, "/1.0");
    assert!(
        info.starts_with("HTTP/1.1 200") && info.contains(r#""auth":"untrusted""#),
        "{info}"
    );
    assert!(
        !info.contains("certificate_fingerprint") && !info.contains("config"),
        "{info}"
    );
    // Without a passphrase set, authenticating cannot work.
    env.kvmbox(Some(&acct.other), &["authenticate", "anything"])
        .fails()
        .stderr_contains("no local passphrase");
    // An untrusted client cannot set one either.
    env.kvmbox(
        Some(&acct.other),
        &["config", "set", "local.passphrase", "mine"],
    )
    .fails()
    .stderr_contains("not authorized");

    // The trusted admin sets the passphrase.
    let pass = "Tr0ub4dor-and-3-horses";
    env.kvmbox(
        Some(&acct.member),
        &["config", "set", "local.passphrase", pass],
    )
    .succeeds();
    env.kvmbox(Some(&acct.member), &["config", "get", "local.passphrase"])
        .succeeds()
        .stdout_contains("true");

    // Wrong passphrase (on stdin, no TTY) is refused; no stdin at all is an error, not a hang.
    env.kvmbox(Some(&acct.other), &["authenticate"])
        .stdin("wrong-guess\n")
        .fails()
        .stderr_contains("wrong passphrase")
        .stderr_one_line();
    env.kvmbox(Some(&acct.other), &["authenticate"])
        .fails()
        .stderr_contains("no passphrase given");
    // The right one from a file is accepted.
    let pfile = dir.join("pass.txt");
    std::fs::write(&pfile, format!("{pass}\n")).unwrap();
    std::fs::set_permissions(&pfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.kvmbox(
        Some(&acct.other),
        &["authenticate", "--passphrase-file", pfile.to_str().unwrap()],
    )
    .succeeds();
    env.kvmbox(Some(&acct.other), &["info"])
        .succeeds()
        .stdout_contains("trusted");

    // It is in the trust store.
    let other_uid = id_of(&acct.other, "-u");
    let fp_out = program(common::bin().to_str().unwrap())
        .args(["--applet", "kvmbox-cert", "fingerprint"])
        .arg(dir.join(format!("conf-{}", acct.other)).join("client.crt"))
        .succeeds()
        .stdout();
    let fp = fp_out
        .split_whitespace()
        .find(|w| w.len() == 64)
        .unwrap()
        .to_string();
    let list = env
        .kvmbox(None, &["config", "trust", "list", "--format", "json"])
        .succeeds()
        .stdout();
    let entries: serde_json::Value = serde_json::from_str(&list).unwrap();
    let entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fingerprint"] == fp.as_str())
        .expect("authenticated cert listed");
    assert_eq!(entry["name"], format!("local-uid-{other_uid}"));
    assert_eq!(entry["type"], "client");
    assert_eq!(
        entries.as_array().unwrap().len(),
        2,
        "the member and the other user"
    );
    env.kvmbox(None, &["config", "trust", "list", "--format", "csv"])
        .succeeds()
        .stdout_contains(&fp);

    // Removing it makes the next call fail with 403.
    env.kvmbox(None, &["config", "trust", "remove", &fp[..16]])
        .succeeds();
    env.kvmbox(Some(&acct.other), &["list"])
        .fails()
        .stderr_contains("not authorized");
    assert!(env
        .openssl_get(&acct.other, "/1.0/instances")
        .starts_with("HTTP/1.1 403"));
    // Nor does the passphrase add it back: only an administrator can. A
    // new key pair is a new client, which may authenticate.
    env.kvmbox(Some(&acct.other), &["authenticate", pass])
        .fails()
        .stderr_contains("an administrator removed this certificate");
    let conf = dir.join(format!("conf-{}", acct.other));
    std::fs::remove_file(conf.join("client.crt")).unwrap();
    std::fs::remove_file(conf.join("client.key")).unwrap();

    // Brute force bites: after three free mistakes every failure costs a
    // growing wait, and during it even the right passphrase is not looked at.
    for _ in 0..4 {
        env.kvmbox(Some(&acct.other), &["authenticate", "nope"])
            .fails()
            .stderr_contains("wrong passphrase");
    }
    env.kvmbox(Some(&acct.other), &["authenticate", pass])
        .fails()
        .stderr_contains("too many failed attempts");
    // Another user is not affected by that user's limit.
    env.kvmbox(Some(&acct.member), &["info"]).succeeds();

    // Root always works, with a certificate nobody trusted.
    env.kvmbox(None, &["info"])
        .succeeds()
        .stdout_contains("admin");
    env.kvmbox(None, &["config", "unset", "local.passphrase"])
        .succeeds();
    env.kvmbox(None, &["config", "show", "--format", "yaml"])
        .succeeds();

    // No clear passphrase anywhere in the state dir, nor in the log.
    let mut files = Vec::new();
    all_files(&d.state, &mut files);
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let data = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&data);
        assert!(
            !text.contains(pass) && !text.contains("wrong-guess"),
            "{} holds a passphrase",
            f.display()
        );
    }
    let log = d.log_text();
    assert!(!log.contains(pass) && !log.contains("wrong-guess"));
    assert!(log.contains("first client"), "{log}");

    // SIGTERM: a clean exit that removes the socket.
    let status = d.stop();
    assert!(status.success(), "{status:?}: {}", d.log_text());
    assert!(!d.socket.exists());
}
