#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]

use super::*;
use crate::pki::{CertSpec, Curve, Key, Profile};

fn pem() -> String {
    let key = Key::generate(Curve::P256).unwrap();
    CertSpec {
        cn: "alice".into(),
        sans: vec![],
        days: 30,
        profile: Profile::SelfSigned,
    }
    .self_signed(&key)
    .unwrap()
    .to_pem()
}

fn doc(pem: &str) -> String {
    json!({
        "config": {"instances.accel": "tcg", "core.trust_password": "s3cret-s3cret"},
        "certificates": [{"name": "alice", "type": "client", "certificate": pem, "role": "operator"}],
        "images": [{"alias": "base", "path": "/srv/base.qcow2"}],
        "instances": [
            {"name": "vm1", "source": {"alias": "base"}, "config": {"limits.memory": "256MiB", "limits.cpu": 2}, "state": "running"},
            {"name": "vm2", "config": {"boot.kernel": "/boot/vmlinuz"},
             "devices": {"eth0": {"type": "nic", "nictype": "user"}}}
        ]
    })
    .to_string()
}

#[test]
fn a_document_becomes_ordered_steps() {
    let p = Preseed::parse(&doc(&pem())).unwrap();
    let what: Vec<String> = p.steps().iter().map(Step::describe).collect();
    assert_eq!(what[0], "config core.trust_password");
    assert_eq!(what[1], "config instances.accel");
    assert!(what[2].starts_with("certificate alice ("), "{}", what[2]);
    assert_eq!(
        what[3..],
        [
            "image base",
            "instance vm1",
            "instance vm2",
            "instance vm1 running"
        ]
    );
    let Step::Instance { config, .. } = &p.steps()[4] else {
        panic!("not an instance")
    };
    assert_eq!(config["limits.cpu"], "2", "numbers become strings");
    assert!(Preseed::parse("{}").unwrap().steps().is_empty());
}

#[test]
fn bad_documents_are_refused_whole() {
    let pem = pem();
    let good: Value = serde_json::from_str(&doc(&pem)).unwrap();
    let bad = |edit: &dyn Fn(&mut Value), needle: &str| {
        let mut d = good.clone();
        edit(&mut d);
        let e = Preseed::parse(&d.to_string()).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
        assert!(!e.contains('\n'), "one line: {e}");
    };
    bad(&|d| d["instancez"] = json!([]), "unknown field `instancez`");
    bad(
        &|d| d["instances"][0]["confg"] = json!({}),
        "unknown field `confg`",
    );
    bad(
        &|d| d["certificates"][0]["rol"] = json!("user"),
        "unknown field `rol`",
    );
    bad(
        &|d| d["config"]["core.https_adress"] = json!("x"),
        "unknown configuration key",
    );
    bad(
        &|d| d["config"]["instances.accel"] = json!("fast"),
        "instances.accel",
    );
    bad(
        &|d| d["instances"][0]["config"]["limits.memory"] = json!("12 bananas"),
        "limits.memory",
    );
    bad(
        &|d| d["instances"][0]["config"]["limits.memry"] = json!("1GiB"),
        "unknown configuration key",
    );
    bad(
        &|d| d["instances"][0]["state"] = json!("paused"),
        "unknown variant",
    );
    bad(
        &|d| d["instances"][1]["devices"]["eth0"]["type"] = json!("usb"),
        "unsupported type",
    );
    bad(
        &|d| d["instances"][1]["config"] = json!({}),
        "nothing to boot",
    );
    bad(
        &|d| d["instances"][1]["name"] = json!("vm1"),
        "listed twice",
    );
    bad(
        &|d| d["instances"][1]["name"] = json!("no/slash"),
        "instance",
    );
    bad(
        &|d| {
            d["certificates"][0]["certificate"] =
                json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        },
        "not a PEM X.509 certificate",
    );
    bad(
        &|d| d["certificates"][0]["type"] = json!("metrics"),
        "only client",
    );
    bad(
        &|d| d["certificates"][0]["role"] = json!("root"),
        "unknown variant",
    );
    bad(
        &|d| d["images"][0]["path"] = json!("base.qcow2"),
        "absolute",
    );
    bad(
        &|d| d["config"]["core.trust_password"] = json!("true"),
        "the secret itself",
    );
    bad(
        &|d| d["config"]["instances.accel"] = json!(["kvm"]),
        "must be a string",
    );
    let yaml = Preseed::parse("config:\n  instances.accel: tcg\n").unwrap_err();
    assert!(yaml.to_string().contains("must be JSON"), "{yaml}");
    assert!(Preseed::parse("{\"config\": ").is_err());
}

/// A server as the steps see it: GET answers by path, and every other call
/// recorded (and answered with an empty sync response).
#[derive(Default)]
struct Fake {
    gets: BTreeMap<String, Value>,
    calls: Vec<(String, String, Value)>,
}

impl Transport for Fake {
    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        if method == "GET" {
            return self.gets.get(path).cloned().ok_or(CallError {
                status: 404,
                message: "not found".into(),
            });
        }
        self.calls.push((
            method.into(),
            path.into(),
            body.cloned().unwrap_or_default(),
        ));
        if path == "/1.0/images" || path.ends_with("/state") {
            return Ok(json!({"id": "op1", "class": "task", "status_code": 103}));
        }
        Ok(json!({}))
    }
}

fn run_all(p: &Preseed, t: &mut Fake) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    p.apply_with(t, |w, o| out.push((w.to_string(), o)))
        .unwrap();
    out
}

#[test]
fn steps_act_only_where_the_server_differs() {
    let pem = pem();
    let p = Preseed::parse(&doc(&pem)).unwrap();
    let fp = Cert::from_pem(pem.as_bytes()).unwrap().fingerprint();
    let mut t = Fake::default();
    t.gets.insert("/1.0".into(), json!({"config": {}}));
    t.gets.insert("/1.0/images?recursion=1".into(), json!([]));
    t.gets.insert(
        "/1.0/instances/vm1/state".into(),
        json!({"status": "Stopped"}),
    );
    t.gets.insert(
        "/1.0/operations/op1/wait?timeout=3600".into(),
        json!({"status_code": 200}),
    );
    let first = run_all(&p, &mut t);
    assert!(first
        .iter()
        .all(|(_, o)| *o == Outcome::Created || *o == Outcome::Updated));
    let methods: Vec<&str> = t.calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(
        methods,
        [
            "/1.0",
            "/1.0",
            "/1.0/certificates",
            "/1.0/images",
            "/1.0/instances",
            "/1.0/instances",
            "/1.0/instances/vm1/state"
        ]
    );
    assert_eq!(t.calls[2].2["role"], "operator");
    assert_eq!(t.calls[4].2["source"]["alias"], "base");
    assert_eq!(t.calls[6].2["action"], "start");

    // The server now has it all: nothing is called but GETs.
    t.calls.clear();
    t.gets.insert(
        "/1.0".into(),
        json!({"config": {"instances.accel": "tcg", "core.trust_password": "true"}}),
    );
    t.gets.insert(
        format!("/1.0/certificates/{fp}"),
        json!({"name": "alice", "role": "operator", "projects": [], "added": 5}),
    );
    t.gets
        .insert("/1.0/images?recursion=1".into(), json!([{"alias": "base"}]));
    t.gets.insert(
        "/1.0/instances/vm1".into(),
        json!({"config": {"limits.memory": "256MiB", "limits.cpu": "2", "volatile.uuid": "u"},
               "devices": {"root": {"type": "disk", "path": "/"}}}),
    );
    t.gets.insert(
        "/1.0/instances/vm2".into(),
        json!({"config": {"boot.kernel": "/boot/vmlinuz"},
               "devices": {"eth0": {"type": "nic", "nictype": "user"}}}),
    );
    t.gets.insert(
        "/1.0/instances/vm1/state".into(),
        json!({"status": "Running"}),
    );
    let again = run_all(&p, &mut t);
    assert!(
        again.iter().all(|(_, o)| *o == Outcome::Unchanged),
        "{again:?}"
    );
    assert!(t.calls.is_empty(), "{:?}", t.calls);

    // One key differs: only it is sent; a changed role is put back.
    t.gets.insert(
        "/1.0/instances/vm1".into(),
        json!({"config": {"limits.memory": "1GiB", "limits.cpu": "2"}, "devices": {}}),
    );
    t.gets.insert(
        format!("/1.0/certificates/{fp}"),
        json!({"name": "alice", "role": "user", "projects": []}),
    );
    let third = run_all(&p, &mut t);
    assert_eq!(
        third.iter().filter(|(_, o)| *o == Outcome::Updated).count(),
        2
    );
    assert_eq!(t.calls.len(), 2);
    assert_eq!(t.calls[0].0, "PUT");
    assert_eq!(t.calls[0].2["role"], "operator");
    assert_eq!(
        t.calls[1],
        (
            "PATCH".into(),
            "/1.0/instances/vm1".into(),
            json!({"config": {"limits.memory": "256MiB"}, "devices": {}})
        )
    );
}

#[test]
fn a_failed_step_stops_the_rest_and_names_itself() {
    let p = Preseed::parse(&doc(&pem())).unwrap();
    let mut t = Fake::default();
    t.gets.insert("/1.0".into(), json!({"config": {}}));
    t.gets.insert("/1.0/images?recursion=1".into(), json!([]));
    t.gets.insert(
        "/1.0/operations/op1/wait?timeout=3600".into(),
        json!({"status_code": 400, "err": "not a disk image"}),
    );
    let e = p.apply_with(&mut t, |_, _| {}).unwrap_err().to_string();
    assert_eq!(e, "image base: not a disk image");
    assert!(
        !t.calls.iter().any(|c| c.1 == "/1.0/instances"),
        "stopped there"
    );
}
