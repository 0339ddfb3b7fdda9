//! What takes trust away from a remote client, against a real kvmboxd over
//! TLS: a CA's revocation (CRLs from the real `openssl ca`) and a removal
//! from the trust store, on keep-alive connections and event websockets
//! already open; and a re-signed copy of a CA-signed certificate (ECDSA
//! signatures are malleable: (r, s) and (r, n−s) both verify), which has
//! the standing of its key, not `core.pki_default_role`. The handshake
//! policy and the CRL file's life are in tests/sh/test_remote_pki.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
#[path = "support/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{applet, bin, program};
use daemon::Daemon;
use kvmbox::{Cert, Client, ClientIdentity, RemoteTrust};
use serde_json::{json, Value};
use x509_parser::asn1_rs::{Any, BitString, FromDer, Integer, Sequence, ToDer};
use x509_parser::num_bigint::BigUint;

/// The order of P-256, the curve `kvmbox-cert ca init` gives a CA's key.
const P256_N: &[u8] = b"ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

/// The same certificate with its ECDSA signature (r, s) turned into
/// (r, n−s): as valid, without the CA's key, and a new fingerprint.
fn malleate(der: &[u8]) -> Vec<u8> {
    let (_, outer) = Sequence::from_der(der).unwrap();
    let (rest, tbs) = Any::from_der(outer.as_ref()).unwrap();
    let (rest, alg) = Any::from_der(rest).unwrap();
    let (rest, sig) = BitString::from_der(rest).unwrap();
    assert!(rest.is_empty());
    let (_, pair) = Sequence::from_der(&sig.data).unwrap();
    let (rest, r) = Integer::from_der(pair.as_ref()).unwrap();
    let (_, s) = Integer::from_der(rest).unwrap();
    let n = BigUint::parse_bytes(P256_N, 16).unwrap();
    let mut flipped = (n - BigUint::from_bytes_be(s.as_ref())).to_bytes_be();
    if flipped[0] & 0x80 != 0 {
        flipped.insert(0, 0); // a positive INTEGER
    }
    let pair = [
        r.to_der_vec().unwrap(),
        Integer::new(&flipped).to_der_vec().unwrap(),
    ]
    .concat();
    let sig = Sequence::new(pair.into()).to_der_vec().unwrap();
    let content = [
        tbs.to_der_vec().unwrap(),
        alg.to_der_vec().unwrap(),
        BitString::new(0, &sig).to_der_vec().unwrap(),
    ]
    .concat();
    Sequence::new(content.into()).to_der_vec().unwrap()
}

/// A state directory in PKI mode, with its CA, and `openssl ca` set up to
/// revoke what that CA issued.
struct Site {
    dir: PathBuf,
    state: PathBuf,
}

impl Site {
    /// `pki`: whether the daemon gets `server.ca` (else plain LXD trust).
    fn new(dir: &Path, pki: bool) -> Site {
        let state = dir.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711)).unwrap();
        let site = Site {
            dir: dir.to_path_buf(),
            state,
        };
        if !pki {
            return site;
        }
        site.cert(&["ca", "init", "--key", "ca.key", "--cert", "ca.crt"]);
        site.cert(&[
            "issue",
            "--ca-key",
            "ca.key",
            "--ca-cert",
            "ca.crt",
            "--key",
            "state/server.key",
            "--cert",
            "state/server.crt",
            "--cn",
            "kvmbox",
            "--server",
            "--san",
            "127.0.0.1",
        ]);
        std::fs::copy(dir.join("ca.crt"), site.state.join("server.ca")).unwrap();
        std::fs::create_dir(dir.join("new")).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = new\n\
             crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 7\n",
        )
        .unwrap();
        site
    }

    fn cert(&self, args: &[&str]) {
        applet("kvmbox-cert")
            .args(args)
            .current_dir(&self.dir)
            .succeeds();
    }

    /// A client configuration directory whose key pair the CA issued.
    fn client(&self, name: &str) -> PathBuf {
        let conf = self.dir.join(name);
        std::fs::create_dir(&conf).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (key, crt) = (format!("{name}/client.key"), format!("{name}/client.crt"));
        self.cert(&[
            "issue",
            "--ca-key",
            "ca.key",
            "--ca-cert",
            "ca.crt",
            "--key",
            &key,
            "--cert",
            &crt,
            "--cn",
            name,
            "--client",
        ]);
        conf
    }

    /// A copy of `conf`'s key pair whose certificate is re-signed, in `to`.
    fn malleated(&self, conf: &Path, to: &str) -> PathBuf {
        let copy = self.dir.join(to);
        std::fs::create_dir(&copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(conf.join("client.key"), copy.join("client.key")).unwrap();
        let original = Cert::from_pem(&std::fs::read(conf.join("client.crt")).unwrap()).unwrap();
        let twin = Cert::from_der(&malleate(original.der())).unwrap();
        assert_ne!(twin.fingerprint(), original.fingerprint());
        let ca = Cert::from_pem(&std::fs::read(self.dir.join("ca.crt")).unwrap()).unwrap();
        twin.verify(&[ca]).expect("the re-signed copy verifies");
        std::fs::write(copy.join("client.crt"), twin.to_pem()).unwrap();
        copy
    }

    /// Revokes `conf`'s certificate with `openssl ca` and writes the CRL
    /// where the running daemon reads it.
    fn revoke(&self, conf: &Path) {
        let crt = conf.join("client.crt");
        let ca = ["-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key"];
        program("openssl")
            .args(["ca", "-batch"])
            .args(ca)
            .arg("-revoke")
            .arg(&crt)
            .current_dir(&self.dir)
            .succeeds();
        program("openssl")
            .args(["ca", "-batch"])
            .args(ca)
            .args(["-gencrl", "-out"])
            .arg(self.state.join("server.crl"))
            .current_dir(&self.dir)
            .succeeds();
    }

    fn start(&self) -> Daemon {
        // Websockets are pinged, and trust looked up again, every 2 s.
        let args = [
            "--group",
            "root",
            "--https",
            "127.0.0.1:0",
            "--timeout",
            "2",
        ];
        Daemon::start(&bin(), &self.dir, &args)
    }
}

/// The local administrator, over the Unix socket (the tests run as root).
fn admin(d: &Daemon, dir: &Path) -> Client {
    let id = ClientIdentity::load_or_create(&dir.join("admin-conf")).unwrap();
    Client::connect_unix(&d.socket, &id).unwrap()
}

fn remote(d: &Daemon, conf: &Path) -> Client {
    let id = ClientIdentity::load_or_create(conf).unwrap();
    Client::connect_tcp(&d.https_address(), "127.0.0.1", &id, &RemoteTrust::Probe)
        .unwrap()
        .0
}

/// Trusts `conf`'s certificate through the administrator.
fn trust(d: &Daemon, dir: &Path, conf: &Path, role: &str, projects: &[&str]) -> String {
    let pem = std::fs::read_to_string(conf.join("client.crt")).unwrap();
    admin(d, dir)
        .call(
            "POST",
            "/1.0/certificates",
            Some(&json!({"type": "client", "certificate": pem, "role": role,
                "projects": projects})),
        )
        .unwrap();
    Cert::from_pem(pem.as_bytes()).unwrap().fingerprint()
}

fn role(c: &mut Client) -> Value {
    let info = c.call("GET", "/1.0", None).unwrap();
    info.get("auth_role")
        .cloned()
        .unwrap_or(info["auth"].clone())
}

/// Opens the events websocket as `conf` and answers its pings in a thread,
/// which reports the payload of the close frame the daemon sends, or
/// `None` if it hangs up without one.
fn events(d: &Daemon, conf: &Path) -> mpsc::Receiver<Option<Vec<u8>>> {
    let mut c = remote(d, conf);
    let (tx, rx) = mpsc::channel();
    common::upgrade_to_events(c.raw());
    std::thread::spawn(move || {
        let s = c.raw();
        loop {
            let mut h = [0u8; 2];
            if s.read_exact(&mut h).is_err() {
                let _ = tx.send(None);
                return;
            }
            let mut payload = vec![0u8; usize::from(h[1] & 0x7F)];
            s.read_exact(&mut payload).unwrap();
            match h[0] & 0x0F {
                0x9 => {
                    // A pong, masked as a client's frames must be.
                    let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    s.write_all(&pong).unwrap();
                    s.flush().unwrap();
                }
                0x8 => {
                    let _ = tx.send(Some(payload));
                    return;
                }
                op => panic!("unexpected opcode {op:#x}"),
            }
        }
    });
    rx
}

/// RFC 6455's "policy violation", big-endian.
const CLOSE_POLICY: [u8; 2] = [0x03, 0xF0];

#[test]
fn a_re_signed_copy_has_its_keys_standing_not_the_default_role() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let site = Site::new(dir, true);
    let d = site.start();
    admin(&d, dir)
        .call(
            "PATCH",
            "/1.0",
            Some(&json!({"config": {"core.pki_default_role": "operator",
                "core.trust_password": "open-sesame"}})),
        )
        .unwrap();
    // Unlisted: the default role.
    let fresh = site.client("fresh");
    assert_eq!(role(&mut remote(&d, &fresh)), "operator");
    // Listed as an auditor restricted to default: so is its copy.
    let limited = site.client("limited");
    trust(&d, dir, &limited, "auditor", &["default"]);
    let limited_copy = site.malleated(&limited, "limited-copy");
    let mut c = remote(&d, &limited_copy);
    assert_eq!(role(&mut c), "auditor");
    let (code, _) = c
        .request("PATCH", "/1.0/instances/x", Some(&json!({})))
        .unwrap();
    assert_eq!(code, 403, "an auditor changes nothing");
    // Removed: its copy gets nothing either, and cannot add itself back.
    let removed = site.client("removed");
    let fp = trust(&d, dir, &removed, "admin", &[]);
    admin(&d, dir)
        .call("DELETE", &format!("/1.0/certificates/{fp}"), None)
        .unwrap();
    let removed_copy = site.malleated(&removed, "removed-copy");
    for conf in [&removed, &removed_copy] {
        let mut c = remote(&d, conf);
        assert_eq!(role(&mut c), "untrusted");
        assert_eq!(c.request("GET", "/1.0/instances", None).unwrap().0, 403);
        let body = json!({"type": "client", "password": "open-sesame"});
        let (code, v) = c.request("POST", "/1.0/certificates", Some(&body)).unwrap();
        assert_eq!(code, 403, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("administrator removed"),
            "{v}"
        );
    }
    // The denial of the key is on disk: a restart keeps it.
    drop(d);
    let d = site.start();
    assert_eq!(role(&mut remote(&d, &removed_copy)), "untrusted");
    assert_eq!(role(&mut remote(&d, &limited_copy)), "auditor");
}

#[test]
fn a_crl_revocation_reaches_open_connections_and_event_websockets() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let site = Site::new(dir, true);
    let d = site.start();
    let kept = site.client("kept");
    trust(&d, dir, &kept, "user", &[]);
    let ws = events(&d, &kept);
    // Idle keep-alive connections are closed after 2 s: no dawdling.
    let mut c = remote(&d, &kept);
    assert_eq!(c.request("GET", "/1.0/instances", None).unwrap().0, 200);
    site.revoke(&kept);
    // The same keep-alive connection, after the CRL was written.
    let (code, v) = c.request("GET", "/1.0/instances", None).unwrap();
    assert_eq!(code, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("CA check"), "{v}");
    let close = ws.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(close.as_deref(), Some(&CLOSE_POLICY[..]));
    assert!(d.log_text().contains("no longer trusted"));
}

#[test]
fn removing_a_certificate_closes_its_event_websocket() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let site = Site::new(dir, false);
    let d = site.start();
    let conf = dir.join("plain");
    ClientIdentity::load_or_create(&conf).unwrap();
    let fp = trust(&d, dir, &conf, "auditor", &[]);
    let ws = events(&d, &conf);
    // Still held while trusted: pinged and answered past two intervals.
    assert!(ws.recv_timeout(Duration::from_secs(5)).is_err());
    admin(&d, dir)
        .call("DELETE", &format!("/1.0/certificates/{fp}"), None)
        .unwrap();
    let close = ws.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(close.as_deref(), Some(&CLOSE_POLICY[..]));
}
