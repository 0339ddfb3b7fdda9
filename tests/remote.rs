//! The remote API over TCP and TLS against a real kvmboxd (LXD's trust
//! model): roles on every class of endpoint, project scoping, revocation on
//! an open connection, tokens, the trust password, and a changed server
//! certificate. The TLS policy, PKI mode and the real `lxc` are in
//! tests/sh/test_remote_*.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a failed test should panic

mod common;
#[path = "support/daemon.rs"]
mod daemon;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{applet, bin};
use daemon::Daemon;
use kvmbox::{Client, ClientIdentity, RemoteTrust};
use serde_json::{json, Value};

/// Port 0: the daemon binds a port the kernel picks, and logs it.
const ANY_PORT: u16 = 0;

struct Server {
    daemon: Daemon,
    addr: String,
    dir: PathBuf,
}

impl Server {
    fn start(dir: &Path, port: u16) -> Server {
        let want = format!("127.0.0.1:{port}");
        let daemon = Daemon::start(&bin(), dir, &["--group", "root", "--https", &want]);
        let addr = daemon.https_address();
        Server {
            daemon,
            addr,
            dir: dir.to_path_buf(),
        }
    }

    /// [`Server::admin`], after it set `core.trust_password` to `pass`.
    fn admin_with_trust_password(&self, pass: &str) -> Client {
        let mut admin = self.admin();
        admin
            .call(
                "PATCH",
                "/1.0",
                Some(&json!({"config": {"core.trust_password": pass}})),
            )
            .unwrap();
        admin
    }

    /// The local administrator, over the Unix socket.
    fn admin(&self) -> Client {
        let id = ClientIdentity::load_or_create(&self.dir.join("admin-conf")).unwrap();
        let mut c = Client::connect_unix(&self.daemon.socket, &id).unwrap();
        let info = c.call("GET", "/1.0", None).unwrap();
        assert_eq!(info["auth"], "trusted", "{info}");
        assert_eq!(
            info["auth_role"], "admin",
            "run as root or a member of the socket's group"
        );
        c
    }

    /// A fresh remote client (its own key pair under `name`).
    fn client(&self, name: &str) -> Client {
        let id = ClientIdentity::load_or_create(&self.dir.join(name)).unwrap();
        Client::connect_tcp(&self.addr, "127.0.0.1", &id, &RemoteTrust::Probe)
            .unwrap()
            .0
    }

    fn token(&self, name: &str, role: &str, projects: &[&str], ttl: u64) -> String {
        let out = self
            .admin()
            .call(
                "POST",
                "/1.0/certificates",
                Some(&json!({"token": true, "name": name, "role": role,
                    "projects": projects, "expires_in": ttl})),
            )
            .unwrap();
        out["metadata"]["token"].as_str().unwrap().to_string()
    }

    /// A remote client trusted through a token with `role` and `projects`.
    fn trusted(&self, name: &str, role: &str, projects: &[&str]) -> Client {
        let token = self.token(name, role, projects, 600);
        let mut c = self.client(name);
        c.call(
            "POST",
            "/1.0/certificates",
            Some(&json!({"type": "client", "trust_token": token})),
        )
        .unwrap();
        let info = c.call("GET", "/1.0", None).unwrap();
        assert_eq!(
            (info["auth"].as_str(), info["auth_role"].as_str()),
            (Some("trusted"), Some(role))
        );
        c
    }
}

/// (class, method, path, body, index of the least role, status when allowed)
type Class = (
    &'static str,
    &'static str,
    &'static str,
    Option<Value>,
    usize,
    u16,
);

fn status(c: &mut Client, method: &str, path: &str, body: Option<Value>) -> u16 {
    c.request(method, path, body.as_ref()).unwrap().0
}

#[test]
fn each_role_against_each_class_of_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    // (class, method, path, body, least role); what the least role and
    // those above get instead of 403 depends on the class.
    let patch = json!({"config": {}});
    let classes: &[Class] = &[
        ("read", "GET", "/1.0/instances?recursion=1", None, 0, 200),
        (
            "read",
            "GET",
            "/1.0/containers?filter=&recursion=1",
            None,
            0,
            200,
        ),
        ("read", "GET", "/1.0/certificates?recursion=1", None, 0, 200),
        (
            "lifecycle",
            "PUT",
            "/1.0/instances/vm1/state",
            Some(json!({"action": "start"})),
            1,
            404,
        ),
        ("console", "GET", "/1.0/instances/vm1/console", None, 1, 404),
        (
            "exec",
            "POST",
            "/1.0/instances/vm1/exec",
            Some(json!({"command": ["true"], "wait-for-websocket": true})),
            1,
            404,
        ),
        (
            "file",
            "GET",
            "/1.0/instances/vm1/files?path=/etc/hostname",
            None,
            1,
            404,
        ),
        (
            "snapshot",
            "POST",
            "/1.0/instances/vm1/snapshots",
            Some(json!({"name": "s0"})),
            1,
            404,
        ),
        (
            "create",
            "POST",
            "/1.0/instances",
            Some(json!({"name": "x"})),
            2,
            400,
        ),
        (
            "reconfigure",
            "PATCH",
            "/1.0/instances/vm1",
            Some(json!({})),
            2,
            404,
        ),
        ("delete", "DELETE", "/1.0/instances/vm1", None, 2, 404),
        ("image", "DELETE", "/1.0/images/abc", None, 2, 404),
        (
            "server config",
            "PATCH",
            "/1.0",
            Some(patch.clone()),
            3,
            200,
        ),
        (
            "trust store",
            "DELETE",
            "/1.0/certificates/00ff",
            None,
            3,
            404,
        ),
        (
            "trust store",
            "POST",
            "/1.0/certificates",
            Some(json!({"token": true, "name": "n"})),
            3,
            202,
        ),
    ];
    for (level, role) in ["auditor", "user", "operator", "admin"].iter().enumerate() {
        let mut c = s.trusted(&format!("c-{role}"), role, &[]);
        for (class, method, path, body, least, ok) in classes {
            let got = status(&mut c, method, path, body.clone());
            let want = if level >= *least { *ok } else { 403 };
            assert_eq!(got, want, "{role} on {class}: {method} {path}");
        }
    }
    // Untrusted: discovery and self-add only, and told how to get trusted.
    let mut u = s.client("untrusted");
    assert_eq!(status(&mut u, "GET", "/", None), 200);
    assert_eq!(u.call("GET", "/1.0", None).unwrap()["auth"], "untrusted");
    for (_, method, path, body, _, _) in classes.iter().filter(|c| c.4 > 0 || c.0 == "read") {
        if *method == "POST" && *path == "/1.0/certificates" {
            continue;
        }
        let (code, v) = u.request(method, path, body.as_ref()).unwrap();
        assert_eq!(code, 403, "untrusted {method} {path}");
        assert_eq!(v["error"], kvmbox::REMOTE_UNTRUSTED_HINT);
    }
    let (code, _) = u
        .request(
            "POST",
            "/1.0/certificates",
            Some(&json!({"token": true, "name": "n"})),
        )
        .unwrap();
    assert_eq!(code, 403, "an untrusted client cannot make tokens");
}

/// What naming any project but `default` gets, on every route.
const NO_P1: &str = "project \"p1\" not found: kvmbox has only the default project";

#[test]
fn only_the_default_project_exists_and_a_certificate_restricted_elsewhere_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // A trust store from before kvmbox said it has one project: an operator
    // restricted to p1, and a bystander.
    let entry = |name: &str, projects: Value| {
        let c = ClientIdentity::load_or_create(&tmp.path().join(name))
            .unwrap()
            .cert;
        json!({"fingerprint": c.fingerprint(), "name": name, "type": "client",
            "certificate": c.to_pem(), "role": "operator", "projects": projects, "added": 0})
    };
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711)).unwrap();
    let store = json!([
        entry("p1-only", json!(["p1"])),
        entry("bystander", json!([]))
    ]);
    std::fs::write(state.join("trust.json"), store.to_string()).unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let mut p = s.client("p1-only");
    // Naming its project gets it nowhere: p1 does not exist.
    for (m, path) in [
        ("GET", "/1.0/instances?project=p1"),
        ("DELETE", "/1.0/instances/x?project=p1"),
        ("GET", "/1.0/operations?project=p1"),
        ("GET", "/1.0/events?project=p1"),
    ] {
        let (code, v) = p.request(m, path, None).unwrap();
        assert_eq!(
            (code, v["error"].as_str()),
            (404, Some(NO_P1)),
            "{m} {path}"
        );
    }
    // And in default, where everything is, it is not allowed.
    for (m, path) in [
        ("GET", "/1.0/instances"),
        ("GET", "/1.0/instances?project="),
        ("DELETE", "/1.0/instances/x?project=default"),
        ("GET", "/1.0/operations"),
        ("GET", "/1.0/operations/x"),
        ("GET", "/1.0/images"),
    ] {
        let (code, v) = p.request(m, path, None).unwrap();
        assert_eq!(code, 403, "{m} {path}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("restricted to projects [\"p1\"]")
                && e.contains("kvmbox has only the default project"),
            "{e}"
        );
    }
    // It sees its own certificate only, as in LXD.
    let seen = p
        .call("GET", "/1.0/certificates?recursion=1", None)
        .unwrap();
    let names: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1-only"]);

    // An empty ?project= is default (Ansible sends it); p1 is not found.
    let mut o = s.trusted("op", "operator", &[]);
    for path in ["/1.0/instances?project=", "/1.0/operations?project="] {
        assert_eq!(status(&mut o, "GET", path, None), 200, "{path}");
    }
    let (code, v) = o.request("GET", "/1.0/instances?project=p1", None).unwrap();
    assert_eq!((code, v["error"].as_str()), (404, Some(NO_P1)));
    assert_eq!(
        status(&mut o, "GET", "/1.0/instances?project=../x", None),
        400
    );

    // Only default can be granted: by token, by certificate, by an edit.
    let mut admin = s.admin();
    let stranger = ClientIdentity::load_or_create(&tmp.path().join("stranger"))
        .unwrap()
        .cert
        .to_pem();
    let count = |admin: &mut Client| {
        let list = admin.call("GET", "/1.0/certificates", None).unwrap();
        list.as_array().unwrap().len()
    };
    let before = count(&mut admin);
    let fp = store[0]["fingerprint"].as_str().unwrap();
    for (m, path, body) in [
        (
            "POST",
            "/1.0/certificates".to_string(),
            json!({"token": true, "name": "t", "projects": ["p1"]}),
        ),
        (
            "POST",
            "/1.0/certificates".to_string(),
            json!({"certificate": stranger, "projects": ["default", "p1"]}),
        ),
        (
            "PATCH",
            format!("/1.0/certificates/{fp}"),
            json!({"projects": ["p1"], "restricted": true}),
        ),
    ] {
        let (code, v) = admin.request(m, &path, Some(&body)).unwrap();
        assert_eq!(
            (code, v["error"].as_str()),
            (400, Some(NO_P1)),
            "{m} {body}"
        );
    }
    assert_eq!(count(&mut admin), before, "nothing was added");
    // Restricted to default: the certificate works there, as before.
    admin
        .call(
            "PATCH",
            &format!("/1.0/certificates/{fp}"),
            Some(&json!({"projects": ["default"]})),
        )
        .unwrap();
    assert_eq!(status(&mut p, "GET", "/1.0/instances?project=", None), 200);
}

#[test]
fn projects_scope_a_role_and_revocation_bites_on_an_open_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let mut p = s.trusted("scoped", "operator", &["default"]);
    assert_eq!(status(&mut p, "GET", "/1.0/instances", None), 200);
    assert_eq!(
        status(&mut p, "GET", "/1.0/operations?project=default", None),
        200
    );
    assert_eq!(status(&mut p, "DELETE", "/1.0/instances/x", None), 404);
    // Server-wide changes need an unrestricted certificate, even as admin.
    let mut a = s.trusted("scoped-admin", "admin", &["default"]);
    assert_eq!(
        status(&mut a, "PATCH", "/1.0", Some(json!({"config": {}}))),
        403
    );

    // Edit: widen the scoped operator to all projects, then revoke it, all
    // while its keep-alive connection stays open.
    let fp = {
        let list = s
            .admin()
            .call("GET", "/1.0/certificates?recursion=1", None)
            .unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "scoped")
            .unwrap()["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    s.admin()
        .call(
            "PATCH",
            &format!("/1.0/certificates/{fp}"),
            Some(&json!({"restricted": false, "role": "user"})),
        )
        .unwrap();
    assert_eq!(status(&mut p, "GET", "/1.0/instances", None), 200);
    assert_eq!(
        status(&mut p, "DELETE", "/1.0/instances/x", None),
        403,
        "now a user"
    );
    s.admin()
        .call("DELETE", &format!("/1.0/certificates/{fp}"), None)
        .unwrap();
    let (code, v) = p.request("GET", "/1.0/instances", None).unwrap();
    assert_eq!(
        (code, v["error"].as_str()),
        (403, Some(kvmbox::REMOTE_UNTRUSTED_HINT))
    );
    assert_eq!(p.call("GET", "/1.0", None).unwrap()["auth"], "untrusted");
}

#[test]
fn restricted_to_no_project_is_refused_not_widened_to_all() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let mut admin = s.admin();
    let other = ClientIdentity::load_or_create(&tmp.path().join("other"))
        .unwrap()
        .cert;
    let empty = json!({"restricted": true, "projects": []});
    let mut token = json!({"token": true, "name": "t", "role": "operator"});
    token
        .as_object_mut()
        .unwrap()
        .extend(empty.as_object().unwrap().clone());
    let mut add = json!({"type": "client", "certificate": other.to_pem(), "role": "operator"});
    add.as_object_mut()
        .unwrap()
        .extend(empty.as_object().unwrap().clone());
    for body in [&token, &add] {
        let (code, v) = admin
            .request("POST", "/1.0/certificates", Some(body))
            .unwrap();
        assert_eq!(code, 400, "{body}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("at least one project"),
            "{v}"
        );
    }
    let list = admin.call("GET", "/1.0/certificates", None).unwrap();
    assert!(!list.to_string().contains(&other.fingerprint()), "{list}");
    // An entry restricted to default cannot be edited to "restricted to
    // nothing" either, by PUT or PATCH (lxc edit sends the whole entry).
    let mut p = s.trusted("scoped", "operator", &["default"]);
    let fp = ClientIdentity::load_or_create(&tmp.path().join("scoped"))
        .unwrap()
        .cert
        .fingerprint();
    let path = format!("/1.0/certificates/{fp}");
    for method in ["PUT", "PATCH"] {
        let (code, v) = admin.request(method, &path, Some(&empty)).unwrap();
        assert_eq!(code, 400, "{method}: {v}");
    }
    let entry = admin.call("GET", &path, None).unwrap();
    assert_eq!(
        (entry["restricted"].clone(), entry["projects"].clone()),
        (json!(true), json!(["default"]))
    );
    // Server-wide changes stay out of its reach.
    assert_eq!(
        status(&mut p, "PATCH", "/1.0", Some(json!({"config": {}}))),
        403
    );
}

#[test]
fn a_removed_certificate_cannot_add_itself_back() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let mut admin = s.admin_with_trust_password("open-sesame");
    let mut p = s.trusted("gone", "operator", &[]);
    let fp = ClientIdentity::load_or_create(&tmp.path().join("gone"))
        .unwrap()
        .cert
        .fingerprint();
    admin
        .call("DELETE", &format!("/1.0/certificates/{fp}"), None)
        .unwrap();
    // Neither the trust password nor a fresh token brings it back.
    let token = s.token("again", "admin", &[], 600);
    for body in [
        json!({"type": "client", "password": "open-sesame"}),
        json!({"type": "client", "trust_token": token}),
    ] {
        let (code, v) = p.request("POST", "/1.0/certificates", Some(&body)).unwrap();
        assert_eq!(code, 403, "{body}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("an administrator removed this certificate"),
            "{v}"
        );
        assert_eq!(p.call("GET", "/1.0", None).unwrap()["auth"], "untrusted");
    }
    // The refused token was not spent: another client redeems it.
    let mut q = s.client("other");
    q.call(
        "POST",
        "/1.0/certificates",
        Some(&json!({"type": "client", "trust_token": token})),
    )
    .unwrap();
    assert_eq!(q.call("GET", "/1.0", None).unwrap()["auth_role"], "admin");
    // An administrator's add is what lifts the removal.
    let pem = ClientIdentity::load_or_create(&tmp.path().join("gone"))
        .unwrap()
        .cert
        .to_pem();
    admin
        .call(
            "POST",
            "/1.0/certificates",
            Some(&json!({"type": "client", "certificate": pem, "role": "user"})),
        )
        .unwrap();
    assert_eq!(p.call("GET", "/1.0", None).unwrap()["auth_role"], "user");
}

#[test]
fn tokens_are_single_use_expire_and_guessing_is_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let token = s.token("once", "user", &[], 600);
    let decoded = kvmbox::JoinToken::decode(&token).unwrap();
    assert_eq!(decoded.addresses, std::slice::from_ref(&s.addr));
    assert_eq!(decoded.client_name, "once");
    let tokens_file = std::fs::read_to_string(s.daemon.state.join("tokens.json")).unwrap();
    assert!(!tokens_file.contains(&decoded.secret), "stored hashed");
    let add =
        |c: &mut Client, body: Value| c.request("POST", "/1.0/certificates", Some(&body)).unwrap();
    // lxc 5.0 sends the token as the password: accepted once.
    let mut a = s.client("a");
    assert_eq!(
        add(
            &mut a,
            json!({"type": "client", "password": token, "token": false})
        )
        .0,
        200
    );
    let mut b = s.client("b");
    let (code, v) = add(&mut b, json!({"trust_token": token}));
    assert_eq!(code, 403, "second use: {v}");
    // Expired.
    let late = s.token("late", "user", &[], 1);
    std::thread::sleep(Duration::from_millis(2100));
    let mut c = s.client("c");
    assert_eq!(add(&mut c, json!({"trust_token": late})).0, 403);
    // Guessing: three free mistakes (b and c made two), then each failure
    // makes this address wait, and a good token waits too.
    let good = s.token("good", "user", &[], 600);
    let mut d = s.client("d");
    assert_eq!(add(&mut d, json!({"password": "guess"})).0, 403);
    assert_eq!(add(&mut d, json!({"password": "guess"})).0, 403);
    let (code, v) = add(&mut d, json!({"password": "guess"}));
    assert_eq!(code, 429, "{v}");
    assert_eq!(add(&mut d, json!({"trust_token": good})).0, 429);
    assert!(s.daemon.log_text().contains("refused by the rate limiter"));
}

#[test]
fn trust_password_is_hashed_hidden_and_can_be_unset() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let mut admin = s.admin_with_trust_password("open-sesame");
    let info = admin.call("GET", "/1.0", None).unwrap();
    assert_eq!(info["config"]["core.trust_password"], "true");
    let disk = std::fs::read_to_string(s.daemon.state.join("daemon.json")).unwrap();
    assert!(!disk.contains("open-sesame") && disk.contains("pbkdf2-sha256$"));
    let mut c = s.client("pw");
    let body = |pw: &str| json!({"type": "client", "password": pw});
    assert_eq!(
        c.request("POST", "/1.0/certificates", Some(&body("nope")))
            .unwrap()
            .0,
        403
    );
    assert_eq!(
        c.request("POST", "/1.0/certificates", Some(&body("open-sesame")))
            .unwrap()
            .0,
        200
    );
    let info = c.call("GET", "/1.0", None).unwrap();
    assert_eq!(
        (info["auth"].as_str(), info["auth_role"].as_str()),
        (Some("trusted"), Some("admin"))
    );
    admin
        .call(
            "PATCH",
            "/1.0",
            Some(&json!({"config": {"core.trust_password": ""}})),
        )
        .unwrap();
    let mut d = s.client("pw2");
    assert_eq!(
        d.request("POST", "/1.0/certificates", Some(&body("open-sesame")))
            .unwrap()
            .0,
        403
    );
}

#[test]
fn a_changed_server_certificate_is_refused_naming_both_fingerprints() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), ANY_PORT);
    // The restart below reuses the port: the address the remote was added with.
    let port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    let conf = tmp.path().join("cli");
    let token = s.token("edge", "auditor", &[], 600);
    let kvmbox = |args: &[&str]| {
        applet("kvmbox")
            .env("KVMBOX_CONF", &conf)
            .env_remove("HOME")
            .args(args)
    };
    // Without a terminal and without a way to check the server: refused.
    kvmbox(&["remote", "add", "edge", &s.addr])
        .fails()
        .stderr_contains("no terminal");
    // A wrong fingerprint: refused, nothing saved.
    kvmbox(&[
        "remote",
        "add",
        "edge",
        &s.addr,
        "--fingerprint",
        &"AB:".repeat(32)[..95],
    ])
    .fails()
    .stderr_contains("not the expected");
    assert!(!conf.join("config.json").exists());
    kvmbox(&["remote", "add", "edge", "--token", &token]).succeeds();
    kvmbox(&["list", "edge:", "--format", "json"])
        .succeeds()
        .stdout_contains("[]");
    kvmbox(&["remote", "list"])
        .succeeds()
        .stdout_contains("tls (pinned)");
    let old = kvmbox(&["info", "edge:", "--format", "json"])
        .succeeds()
        .stdout();
    let old: Value = serde_json::from_str(&old).unwrap();
    let old_fp = old["environment"]["certificate_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    // Revoked: every call says so, with the way back.
    let fp = applet("kvmbox-cert")
        .arg("fingerprint")
        .arg(conf.join("client.crt"))
        .succeeds()
        .stdout();
    s.admin()
        .call("DELETE", &format!("/1.0/certificates/{}", fp.trim()), None)
        .unwrap();
    kvmbox(&["list", "edge:"])
        .fails()
        .stderr_contains("not authorized")
        .stderr_contains("kvmbox remote add");
    kvmbox(&["info", "edge:"])
        .fails()
        .stderr_contains("not authorized");
    // The server is "reinstalled": new key pair, same address.
    s.daemon.stop();
    std::fs::remove_file(s.daemon.state.join("server.crt")).unwrap();
    std::fs::remove_file(s.daemon.state.join("server.key")).unwrap();
    drop(s);
    let s = Server::start(tmp.path(), port);
    let new_fp = s.admin().call("GET", "/1.0", None).unwrap()["environment"]
        ["certificate_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(old_fp, new_fp);
    kvmbox(&["list", "edge:"])
        .fails()
        .stderr_contains(&old_fp)
        .stderr_contains(&new_fp)
        .stderr_contains("man-in-the-middle");
    // rename, switch, get-default, remove.
    kvmbox(&["remote", "rename", "edge", "edge2"]).succeeds();
    kvmbox(&["remote", "switch", "edge2"]).succeeds();
    kvmbox(&["remote", "get-default"])
        .succeeds()
        .stdout_contains("edge2");
    kvmbox(&["remote", "remove", "edge2"])
        .fails()
        .stderr_contains("default");
    kvmbox(&["remote", "switch", "local"]).succeeds();
    kvmbox(&["remote", "remove", "edge2"]).succeeds();
    assert!(!conf.join("servercerts/edge2.crt").exists());
    kvmbox(&["list", "edge2:"])
        .fails()
        .stderr_contains("no remote named");
}

#[test]
fn trust_add_a_file_then_edit_and_remove_it_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let _ = s.admin(); // the admin's key pair is made before the CLI runs
    let cli = |args: &[&str]| {
        applet("kvmbox")
            .env("KVMBOX_CONF", tmp.path().join("admin-conf"))
            .env("KVMBOX_SOCKET", &s.daemon.socket)
            .env_remove("HOME")
            .args(args)
    };
    // A key pair made elsewhere (kvmbox-cert), trusted by file.
    let alice = tmp.path().join("alice");
    std::fs::create_dir(&alice).unwrap();
    applet("kvmbox-cert")
        .args(["gen", "--curve", "p384", "--cn", "alice", "--key"])
        .arg(alice.join("client.key"))
        .arg("--cert")
        .arg(alice.join("client.crt"))
        .succeeds();
    let pem = alice.join("client.crt");
    let pem = pem.to_str().unwrap();
    let add = |projects: &str| {
        cli(&[
            "config",
            "trust",
            "add",
            pem,
            "--name",
            "alice",
            "--role",
            "auditor",
            "--projects",
            projects,
        ])
    };
    add("default,p2")
        .fails()
        .stderr_contains("project \"p2\" not found: kvmbox has only the default project");
    add("default").succeeds();
    cli(&["config", "trust", "add", pem])
        .fails()
        .stderr_contains("already trusted");
    cli(&["config", "trust", "add", "/nonexistent.pem"])
        .fails()
        .stderr_contains("cannot read");
    cli(&["config", "trust", "list", "--format", "csv"])
        .succeeds()
        .stdout_contains("alice,client,auditor,default");
    let mut a = s.client("alice");
    assert_eq!(status(&mut a, "GET", "/1.0/instances?project=", None), 200);
    assert_eq!(
        status(&mut a, "GET", "/1.0/instances?project=p2", None),
        404
    );
    let fp = a.call("GET", "/1.0", None).unwrap();
    assert_eq!(fp["auth_role"], "auditor");
    let fp = applet("kvmbox-cert")
        .arg("fingerprint")
        .arg(pem)
        .succeeds()
        .stdout();
    let fp = fp.trim();
    cli(&[
        "config",
        "trust",
        "edit",
        &fp[..10],
        "--role",
        "user",
        "--projects",
        "",
    ])
    .succeeds();
    cli(&["config", "trust", "list", "--format", "csv"])
        .succeeds()
        .stdout_contains("alice,client,user,all");
    assert_eq!(
        status(
            &mut a,
            "PUT",
            "/1.0/instances/x/state",
            Some(json!({"action": "start"}))
        ),
        404
    );
    cli(&["config", "trust", "edit", fp, "--role", "root"])
        .fails()
        .code_is(2);
    cli(&["config", "trust", "remove", &fp[..10]]).succeeds();
    assert_eq!(status(&mut a, "GET", "/1.0/instances", None), 403);
    // The token the CLI prints is LXD's join-token shape.
    let token = cli(&["config", "trust", "add", "--name", "bob", "--role", "user"])
        .succeeds()
        .stdout();
    let t = kvmbox::JoinToken::decode(token.trim()).unwrap();
    assert_eq!((t.client_name.as_str(), t.addresses.len()), ("bob", 1));
    cli(&["config", "trust", "add"]).fails().code_is(2);
}

#[test]
fn hostile_input_over_tcp_is_refused_and_the_daemon_keeps_serving() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), ANY_PORT);
    // Plain HTTP on the TLS port: the handshake fails, the connection closes.
    let mut raw = std::net::TcpStream::connect(&s.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    // Oversized head, then a body larger than allowed, from an untrusted client.
    let mut c = s.client("hostile");
    let big = format!("GET /1.0 HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(32 * 1024));
    c.raw().write_all(big.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    c.raw().read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 431");
    // A body over the limit: 413, or the connection cut while sending it;
    // never an answer to the request.
    let mut c = s.client("hostile2");
    let body = json!({"password": "x".repeat(5 << 20)});
    let res = c.request("POST", "/1.0/certificates", Some(&body));
    assert!(matches!(res, Ok((413, _)) | Err(_)), "{res:?}");
    // Malformed JSON and wrong types in a self-add: 400, nothing trusted.
    let mut c = s.client("hostile3");
    for body in [
        json!({"password": 5}),
        json!({"projects": "all"}),
        json!({"type": "metrics"}),
    ] {
        assert_eq!(
            c.request("POST", "/1.0/certificates", Some(&body))
                .unwrap()
                .0,
            400,
            "{body}"
        );
    }
    assert!(s.daemon.alive());
    assert_eq!(s.client("after").call("GET", "/", None).unwrap()[0], "/1.0");
    assert_eq!(
        s.admin().call("GET", "/1.0/certificates", None).unwrap(),
        json!([])
    );
}

/// A certificate restricted to projects is no admin of the host, whatever
/// its role: it may not name host files (a kernel, a disk, an image to
/// import), run QEMU as root or unconfined, nor change an instance that
/// runs privileged. Each request is tried with the restricted admin, then
/// the very same with an unrestricted one, which must get through.
#[test]
fn an_admin_restricted_to_projects_gets_no_host_access() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), ANY_PORT);
    let mut full = s.trusted("full", "admin", &[]);
    let mut scoped = s.trusted("scoped", "admin", &["default"]);
    // Host files only root can reach: the daemon would open them for the caller.
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = |name: &str, len: usize| {
        let p = host.join(name);
        std::fs::write(&p, vec![0x5au8; len]).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (kernel, disk, hot, image) = (
        file("vmlinuz", 4096),
        file("disk.img", 1 << 20),
        file("hot.img", 1 << 20),
        file("image.img", 65536),
    );
    let shown = |c: &mut Client| {
        let names = |v: Value| {
            let mut n: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().rsplit('/').next().unwrap().to_string())
                .collect();
            n.sort();
            n
        };
        let instances = names(c.call("GET", "/1.0/instances", None).unwrap());
        (
            instances,
            names(c.call("GET", "/1.0/images", None).unwrap()),
        )
    };
    // (what, method, path, body, what the refusal says)
    let tries: Vec<(&str, &str, String, Value, &str)> = vec![
        (
            "import an image from a host path",
            "POST",
            "/1.0/images".into(),
            json!({"source": {"type": "path", "path": image}, "aliases": [{"name": "img"}]}),
            "name host paths",
        ),
        (
            "boot a host kernel",
            "POST",
            "/1.0/instances".into(),
            json!({"name": "k", "config": {"boot.kernel": kernel}}),
            "name host paths",
        ),
        (
            "use a host file as a disk",
            "POST",
            "/1.0/instances".into(),
            json!({"name": "d", "source": {"type": "image", "alias": "img"},
                "devices": {"data": {"type": "disk", "source": disk}}}),
            "name host paths",
        ),
        (
            "make a privileged instance",
            "POST",
            "/1.0/instances".into(),
            json!({"name": "p", "source": {"type": "image", "alias": "img"},
                "config": {"security.privileged": "true"}}),
            "security.privileged=true",
        ),
        (
            "change a privileged instance",
            "PATCH",
            "/1.0/instances/p".into(),
            json!({"config": {"limits.cpu": "2"}}),
            "runs privileged",
        ),
        (
            "plug a host file in as a disk",
            "PATCH",
            "/1.0/instances/plain".into(),
            json!({"devices": {"hot": {"type": "disk", "source": hot}}}),
            "name host paths",
        ),
        (
            "point an instance at a host kernel",
            "PATCH",
            "/1.0/instances/plain".into(),
            json!({"config": {"boot.kernel": kernel}}),
            "name host paths",
        ),
        (
            "turn AppArmor off",
            "PATCH",
            "/1.0/instances/plain".into(),
            json!({"config": {"security.apparmor": "off"}}),
            "security.apparmor=off",
        ),
    ];
    for (what, method, path, body, why) in &tries {
        if path == "/1.0/instances/plain" && !shown(&mut full).0.contains(&"plain".to_string()) {
            // Within its rights: an instance of the project's own image.
            let made = scoped
                .call(
                    "POST",
                    "/1.0/instances",
                    Some(&json!({"name": "plain", "source": {"type": "image", "alias": "img"}})),
                )
                .unwrap();
            scoped.wait(made).unwrap();
        }
        let before = shown(&mut full);
        let config = |c: &mut Client| {
            let (_, v) = c.request("GET", path, None).unwrap();
            v["metadata"].clone()
        };
        let was = config(&mut full);
        let (code, v) = scoped.request(method, path, Some(body)).unwrap();
        assert_eq!(code, 403, "restricted admin may {what}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(why), "{what}: {e}");
        assert_eq!(shown(&mut full), before, "{what}: something was made");
        assert_eq!(config(&mut full), was, "{what}: something changed");
        let done = full.call(method, path, Some(body)).unwrap();
        full.wait(done)
            .unwrap_or_else(|e| panic!("an unrestricted admin may {what}: {e}"));
    }
    let (instances, images) = shown(&mut full);
    assert_eq!((instances.len(), images.len()), (4, 1), "{instances:?}");
    let plain = full.call("GET", "/1.0/instances/plain", None).unwrap();
    assert_eq!(plain["config"]["security.apparmor"], "off");
    assert_eq!(plain["devices"]["hot"]["source"], hot.as_str());
}
