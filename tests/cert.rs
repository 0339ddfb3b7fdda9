//! `kvmbox-cert` on bad input: every refusal is one line, exits non-zero and
//! leaves the output paths exactly as they were.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
use common::{applet, program, scratch};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn cert() -> common::Cmd {
    applet("kvmbox-cert")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    v.sort();
    v
}

#[test]
fn gen_writes_a_private_key_and_a_certificate() {
    let d = scratch();
    cert()
        .current_dir(&d)
        .args([
            "gen", "--key", "k.pem", "--cert", "c.pem", "--curve", "p384",
        ])
        .succeeds();
    assert_eq!(
        fs::metadata(d.path().join("k.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    cert()
        .current_dir(&d)
        .args(["show", "c.pem"])
        .succeeds()
        .stdout_contains("ecdsa-p384")
        .stdout_contains("CN=kvmbox");
}

#[test]
fn existing_outputs_are_kept_without_force() {
    let d = scratch();
    fs::write(d.path().join("c.pem"), "keep").unwrap();
    cert()
        .current_dir(&d)
        .args(["gen", "--key", "k.pem", "--cert", "c.pem"])
        .fails()
        .code_is(1)
        .stderr_contains("already exists")
        .stderr_one_line();
    assert_eq!(entries(d.path()), ["c.pem"]);
    assert_eq!(fs::read_to_string(d.path().join("c.pem")).unwrap(), "keep");
    cert()
        .current_dir(&d)
        .args(["gen", "--key", "k.pem", "--cert", "c.pem", "--force"])
        .succeeds();
    assert!(fs::read_to_string(d.path().join("c.pem"))
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn unreadable_inputs_are_refused_with_one_line() {
    let d = scratch();
    let p = |n: &str| d.path().join(n);
    fs::write(p("text.pem"), "hello\n").unwrap();
    fs::write(
        p("bad64.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    cert()
        .current_dir(&d)
        .args(["gen", "--key", "ok.key", "--cert", "ok.crt"])
        .succeeds();
    // A real certificate cut short: valid PEM framing, truncated DER inside.
    let good = fs::read_to_string(p("ok.crt")).unwrap();
    let body: String = good.lines().filter(|l| !l.starts_with("-----")).collect();
    let cut = &body[..body.len() / 2 / 4 * 4];
    fs::write(
        p("trunc.pem"),
        format!("-----BEGIN CERTIFICATE-----\n{cut}\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();

    for (file, why) in [
        ("missing.pem", "cannot read"),
        ("text.pem", "no certificate found"),
        ("bad64.pem", "malformed PEM"),
        ("trunc.pem", "not a valid X.509 certificate"),
    ] {
        for sub in [
            &["fingerprint", file][..],
            &["show", file][..],
            &["verify", "--ca", "ok.crt", file][..],
        ] {
            cert()
                .current_dir(&d)
                .args(sub)
                .fails()
                .code_is(1)
                .stderr_contains(why)
                .stderr_one_line();
        }
    }
}

#[test]
fn rsa_and_mismatched_ca_keys_are_refused_and_nothing_is_written() {
    let d = scratch();
    program("openssl")
        .current_dir(&d)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-out",
            "rsa.crt",
        ])
        .args(["-subj", "/CN=rsa", "-days", "1"])
        .succeeds();
    cert()
        .current_dir(&d)
        .args(["ca", "init", "--key", "ca.key", "--cert", "ca.crt"])
        .succeeds();
    cert()
        .current_dir(&d)
        .args(["gen", "--key", "other.key", "--cert", "other.crt"])
        .succeeds();
    let before = entries(d.path());
    let issue = |ca_key: &str, ca_cert: &str| {
        cert()
            .current_dir(&d)
            .args(["issue", "--ca-key", ca_key, "--ca-cert", ca_cert])
            .args([
                "--key", "leaf.key", "--cert", "leaf.crt", "--cn", "leaf", "--server",
            ])
    };
    issue("rsa.key", "ca.crt")
        .fails()
        .stderr_contains("RSA")
        .stderr_one_line();
    issue("other.key", "ca.crt")
        .fails()
        .stderr_contains("does not belong")
        .stderr_one_line();
    issue("ca.key", "other.crt")
        .fails()
        .stderr_contains("not a CA")
        .stderr_one_line();
    issue("ca.key", "ca.crt").arg("--client").fails().code_is(2);
    assert_eq!(
        entries(d.path()),
        before,
        "a refused issue must write nothing"
    );
    // An RSA certificate can be shown, but is not accepted as a CA.
    cert()
        .current_dir(&d)
        .args(["show", "rsa.crt"])
        .succeeds()
        .stdout_contains("Key type:    rsa");
    issue("ca.key", "ca.crt").succeeds();
    cert()
        .current_dir(&d)
        .args(["verify", "--ca", "rsa.crt", "leaf.crt"])
        .fails()
        .stderr_one_line();
}

#[test]
fn bad_command_lines_exit_2() {
    let d = scratch();
    for args in [
        &["gen", "--key", "k", "--cert", "c", "--curve", "p521"][..],
        &["gen", "--key", "k", "--cert", "c", "--days", "-3"][..],
        &["gen", "--key", "k"][..],
        &["frobnicate"][..],
    ] {
        cert().current_dir(&d).args(args).fails().code_is(2);
    }
    for args in [
        &["gen", "--key", "k", "--cert", "c", "--san", "bad name"][..],
        &["gen", "--key", "k", "--cert", "c", "--days", "0"][..],
        &["gen", "--key", "k", "--cert", "k"][..],
        &["gen", "--key", "k", "--cert", "c", "--cn", ""][..],
        &["show", "--format", "xml", "c"][..],
    ] {
        cert().current_dir(&d).args(args).fails().stderr_one_line();
    }
    assert!(
        entries(d.path()).is_empty(),
        "refused commands wrote {:?}",
        entries(d.path())
    );
}
