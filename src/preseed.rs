//! Preseed: a document that sets up a server non-interactively and
//! idempotently — server config, trusted certificates, images and
//! instances — shaped like `lxd init --preseed`
//! (<https://documentation.ubuntu.com/lxd/en/latest/howto/initialize/#non-interactive-configuration>).
//!
//! Choices, and why:
//! - The document is JSON, which is also YAML 1.2: no YAML parser is worth
//!   its size (measured: +120 KB) in a binary held to 2.5 MiB. Every
//!   object refuses unknown fields, so a typo is an error rather than a
//!   setting silently not made.
//! - The whole document is parsed and checked first, with the same checks
//!   the daemon makes (config keys and values, PEM, device shapes): a bad
//!   document is refused before anything is applied. What only the host can
//!   tell (whether a kernel file exists) is left to the daemon.
//! - It then becomes an ordered list of [`Step`]s (config, certificates,
//!   images, instances, instance states), each one call of the REST API
//!   preceded by a `GET` that tells whether it is already done. Each call is
//!   crash-safe on its own, so a failure part-way leaves consistent state,
//!   and applying the document again carries on.
//! - One runner, two transports: the client over the Unix socket or TLS
//!   (`kvmbox admin init --preseed`), and the daemon itself at start-up
//!   (`kvmboxd --preseed`, through `routes::handle` with an admin identity).
//! - Secrets (`core.trust_password`, `local.passphrase`) are write-only and
//!   stored salted-hashed: they are set only when unset. Re-setting them on
//!   every run would rewrite the state each time; to change one, unset it
//!   (`kvmbox config unset`) and apply again.
//! - Existing objects are updated, never recreated: an instance whose
//!   declared config keys or devices differ is patched (applies at its next
//!   start, nothing is restarted); an image that exists under its alias is
//!   left as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pki::Cert;
use crate::vmm::instances::{check_config, check_device, Device};
use crate::wire::{
    self, check_projects, path, CertificatePut, CertificatesPost, Exchange, ImageInfo, ImagesPost,
    InstancePut, InstancesPost, Role, ServerPut, StatePut,
};

#[derive(thiserror::Error)]
pub enum Error {
    /// The document is wrong: nothing was applied.
    #[error("invalid preseed document: {0}")]
    Invalid(String),
    /// A step failed; the steps before it stay applied.
    #[error("{what}: {message}")]
    Step { what: String, message: String },
}

crate::debug_as_display!(Error);

fn invalid(what: impl std::fmt::Display, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {why}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    config: BTreeMap<String, Value>,
    #[serde(default)]
    certificates: Vec<CertificateDoc>,
    #[serde(default)]
    images: Vec<ImageDoc>,
    #[serde(default)]
    instances: Vec<InstanceDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateDoc {
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    certificate: String,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    projects: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageDoc {
    alias: String,
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceDoc {
    name: String,
    #[serde(default)]
    source: Option<SourceDoc>,
    #[serde(default)]
    config: BTreeMap<String, Value>,
    #[serde(default)]
    devices: BTreeMap<String, Device>,
    #[serde(default)]
    state: Option<State>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceDoc {
    alias: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Running,
    Stopped,
}

/// One API call and how to tell it is already done.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// `PATCH /1.0` one key, unless `GET /1.0` shows it (set, for a secret).
    Config { key: String, value: String },
    /// `POST /1.0/certificates`, or `PUT` its name, role and projects.
    Certificate {
        fingerprint: String,
        name: String,
        role: Role,
        projects: Vec<String>,
        pem: String,
    },
    /// `POST /1.0/images` unless an image has the alias.
    Image { alias: String, path: PathBuf },
    /// `POST /1.0/instances`, or `PATCH` the declared keys that differ.
    Instance {
        name: String,
        alias: Option<String>,
        config: BTreeMap<String, String>,
        devices: BTreeMap<String, Device>,
    },
    /// `PUT /1.0/instances/<name>/state` unless it is already so.
    State { name: String, running: bool },
}

/// What a step found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// Not added: an administrator removed the certificate (the daemon's
    /// start-up run only; see [`Transport::keeps_removed`]).
    Denied,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Denied => "denied",
        })
    }
}

impl Step {
    /// How the step is named in reports and errors.
    pub(crate) fn describe(&self) -> String {
        match self {
            Step::Config { key, .. } => format!("config {key}"),
            Step::Certificate {
                name, fingerprint, ..
            } => format!(
                "certificate {name} ({})",
                fingerprint.get(..12).unwrap_or(fingerprint)
            ),
            Step::Image { alias, .. } => format!("image {alias}"),
            Step::Instance { name, .. } => format!("instance {name}"),
            Step::State { name, running } => format!(
                "instance {name} {}",
                if *running { "running" } else { "stopped" }
            ),
        }
    }
}

/// A checked document, as the steps that apply it.
#[derive(Debug)]
pub struct Preseed {
    steps: Vec<Step>,
}

/// LXD's YAML allows `true` and `2` where the API wants strings.
fn scalar(what: &str, v: Value) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(invalid(what, "the value must be a string")),
    }
}

impl Preseed {
    /// Parses and checks a whole document; nothing is applied here.
    pub fn parse(text: &str) -> Result<Preseed, Error> {
        let doc: Document = serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                Error::Invalid(format!(
                    "{e} (the document must be JSON, which is also YAML)"
                ))
            }
            _ => Error::Invalid(e.to_string()),
        })?;
        let mut steps = Vec::new();
        for (key, value) in doc.config {
            let value = scalar(&format!("config {key}"), value)?;
            crate::server::settings::check(&key, &value)
                .map_err(|e| Error::Invalid(crate::error_chain(&e)))?;
            if crate::server::settings::is_secret(&key)
                && value == crate::server::settings::REDACTED
            {
                return Err(invalid(
                    format!("config {key}"),
                    "give the secret itself, not how the API shows it",
                ));
            }
            steps.push(Step::Config { key, value });
        }
        let mut seen = BTreeSet::new();
        for c in doc.certificates {
            let what = format!("certificate {:?}", c.name);
            if c.name.is_empty() || c.name.len() > 64 || c.name.chars().any(char::is_control) {
                return Err(invalid(
                    what,
                    "the name must be 1 to 64 printable characters",
                ));
            }
            if c.kind.as_deref().is_some_and(|k| k != "client") {
                return Err(invalid(what, "only client certificates can be added"));
            }
            if c.projects.len() > 64 {
                return Err(invalid(what, "invalid project list"));
            }
            check_projects(&c.projects).map_err(|e| invalid(&what, e))?;
            let cert = Cert::from_pem(c.certificate.as_bytes())
                .map_err(|_| invalid(&what, "not a PEM X.509 certificate"))?;
            if !cert.info().is_ok_and(|i| i.key_type.starts_with("ecdsa-")) {
                return Err(invalid(
                    what,
                    "only EC (P-256, P-384) certificates can be trusted",
                ));
            }
            let fingerprint = cert.fingerprint();
            if !seen.insert(fingerprint.clone()) {
                return Err(invalid(what, "the same certificate is listed twice"));
            }
            steps.push(Step::Certificate {
                fingerprint,
                name: c.name,
                role: c.role.unwrap_or(Role::Admin),
                projects: c.projects,
                pem: c.certificate,
            });
        }
        let mut aliases = BTreeSet::new();
        for i in doc.images {
            let what = format!("image {:?}", i.alias);
            if !crate::wire::is_param(&i.alias) {
                return Err(invalid(what, "invalid alias"));
            }
            if !i.path.is_absolute() {
                return Err(invalid(what, "the path must be absolute"));
            }
            if !aliases.insert(i.alias.clone()) {
                return Err(invalid(what, "the alias is listed twice"));
            }
            steps.push(Step::Image {
                alias: i.alias,
                path: i.path,
            });
        }
        let mut names = BTreeSet::new();
        let mut states = Vec::new();
        for i in doc.instances {
            let what = format!("instance {:?}", i.name);
            crate::vmm::qemu::validate_name(&i.name).map_err(|e| invalid(&what, e))?;
            if !names.insert(i.name.clone()) {
                return Err(invalid(what, "the name is listed twice"));
            }
            let mut config = BTreeMap::new();
            for (k, v) in i.config {
                let v = scalar(&format!("{what} config {k}"), v)?;
                check_config(&k, &v).map_err(|e| invalid(&what, crate::error_chain(&e)))?;
                config.insert(k, v);
            }
            for (n, d) in &i.devices {
                check_device(n, d).map_err(|e| invalid(&what, crate::error_chain(&e)))?;
            }
            if i.source.is_none() && config.get("boot.kernel").is_none_or(String::is_empty) {
                return Err(invalid(
                    what,
                    "nothing to boot: give source.alias or boot.kernel",
                ));
            }
            if let Some(s) = &i.source {
                if !crate::wire::is_param(&s.alias) {
                    return Err(invalid(what, "invalid source alias"));
                }
            }
            if let Some(s) = i.state {
                states.push(Step::State {
                    name: i.name.clone(),
                    running: s == State::Running,
                });
            }
            steps.push(Step::Instance {
                name: i.name,
                alias: i.source.map(|s| s.alias),
                config,
                devices: i.devices,
            });
        }
        // Every instance exists before any is started.
        steps.extend(states);
        Ok(Preseed { steps })
    }

    #[cfg(any(test, fuzzing))]
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Applies the steps in order through a client, reporting each.
    pub fn apply(
        &self,
        client: &mut crate::client::connection::Client,
        report: impl FnMut(&str, Outcome),
    ) -> Result<(), Error> {
        self.apply_with(&mut Remote(client), report)
    }

    pub(crate) fn apply_with(
        &self,
        t: &mut dyn Transport,
        mut report: impl FnMut(&str, Outcome),
    ) -> Result<(), Error> {
        for step in &self.steps {
            let what = step.describe();
            let outcome = run(step, t).map_err(|e| Error::Step {
                what: what.clone(),
                message: e.message,
            })?;
            report(&what, outcome);
        }
        Ok(())
    }
}

/// The daemon's answer to a refused call.
#[derive(Debug)]
pub(crate) struct CallError {
    /// The HTTP status; 0 when the call did not get an answer.
    pub status: u16,
    pub message: String,
}

impl From<crate::wire::Error> for CallError {
    fn from(e: crate::wire::Error) -> CallError {
        match e {
            crate::wire::Error::Refused { status, message } => CallError { status, message },
            other => CallError {
                status: 0,
                message: other.to_string(),
            },
        }
    }
}

/// How steps reach the API.
pub(crate) trait Transport: Exchange<Error = CallError> {
    /// Whether the certificate `pem`, which an administrator removed from
    /// the trust store, stays out. A document an administrator sends is an
    /// explicit act and adds it back (false); the daemon applying its
    /// `--preseed` file at every start is not, or a removal would last only
    /// until the next restart.
    fn keeps_removed(&mut self, _pem: &str) -> bool {
        false
    }
}

/// A client's connection as a [`Transport`].
struct Remote<'a>(&'a mut crate::client::connection::Client);

impl Exchange for Remote<'_> {
    type Error = CallError;

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), CallError> {
        self.0.exchange(method, path, body).map_err(|e| CallError {
            status: match &e {
                crate::client::connection::Error::Api { status, .. } => *status,
                _ => 0,
            },
            message: crate::error_chain(&e),
        })
    }
}

impl Transport for Remote<'_> {}

/// The metadata of the answer to `GET path`.
fn get<T: DeserializeOwned>(t: &mut dyn Transport, path: &str) -> Result<T, CallError> {
    wire::call(t, "GET", path, None)
}

/// A call whose answer, if it is an operation, is waited for.
fn act(
    t: &mut dyn Transport,
    method: &str,
    path: &str,
    body: &impl Serialize,
) -> Result<(), CallError> {
    send(
        t,
        method,
        path,
        &serde_json::to_vec(body).unwrap_or_default(),
    )
}

/// [`act`] with the body as JSON already (one copy of the call and the
/// wait, whatever the body's type).
fn send(t: &mut dyn Transport, method: &str, path: &str, body: &[u8]) -> Result<(), CallError> {
    let answer = wire::call(t, method, path, Some(body))?;
    wire::settle(t, answer)?;
    Ok(())
}

/// `GET path`, `None` when it does not exist.
fn probe<T: DeserializeOwned>(t: &mut dyn Transport, path: &str) -> Result<Option<T>, CallError> {
    match get(t, path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

fn run(step: &Step, t: &mut dyn Transport) -> Result<Outcome, CallError> {
    match step {
        Step::Config { key, value } => {
            let server: Value = get(t, path::SERVER)?;
            let now = server.pointer("/config").and_then(|c| c.get(key.as_str()));
            let now = now.and_then(Value::as_str);
            let done = if crate::server::settings::is_secret(key) {
                now.is_some() != value.is_empty()
            } else {
                now.unwrap_or_default() == value
            };
            if done {
                return Ok(Outcome::Unchanged);
            }
            act(t, "PATCH", path::SERVER, &ServerPut::one(key, value))?;
            Ok(if now.is_some() {
                Outcome::Updated
            } else {
                Outcome::Created
            })
        }
        Step::Certificate {
            fingerprint,
            name,
            role,
            projects,
            pem,
        } => {
            let url = path::certificate(fingerprint);
            // The entry as it is, read as the body that changes it.
            let Some(now) = probe::<CertificatePut>(t, &url)? else {
                if t.keeps_removed(pem) {
                    return Ok(Outcome::Denied);
                }
                let body = CertificatesPost {
                    name: name.clone(),
                    certificate: pem.clone(),
                    role: Some(*role),
                    projects: Some(projects.clone()),
                    ..CertificatesPost::client()
                };
                act(t, "POST", path::CERTIFICATES, &body)?;
                return Ok(Outcome::Created);
            };
            if now.name.as_ref() == Some(name)
                && now.role == Some(*role)
                && now.projects.as_ref() == Some(projects)
            {
                return Ok(Outcome::Unchanged);
            }
            let body = CertificatePut {
                name: Some(name.clone()),
                role: Some(*role),
                projects: Some(projects.clone()),
                restricted: Some(!projects.is_empty()),
            };
            act(t, "PUT", &url, &body)?;
            Ok(Outcome::Updated)
        }
        Step::Image { alias, path: file } => {
            let list: Vec<ImageInfo> = get(t, path::IMAGES_FULL)?;
            if list.iter().any(|i| i.has_alias(alias)) {
                return Ok(Outcome::Unchanged);
            }
            let body = ImagesPost::from_path(file.clone(), alias.clone());
            act(t, "POST", path::IMAGES, &body)?;
            Ok(Outcome::Created)
        }
        Step::Instance {
            name,
            alias,
            config,
            devices,
        } => {
            let url = path::instance(name);
            // The instance as it is, read as the body that changes it.
            let Some(now) = probe::<InstancePut>(t, &url)? else {
                let body =
                    InstancesPost::vm(name.clone(), alias.clone(), config.clone(), devices.clone());
                act(t, "POST", path::INSTANCES, &body)?;
                return Ok(Outcome::Created);
            };
            let (now_config, now_devices) = (
                now.config.unwrap_or_default(),
                now.devices.unwrap_or_default(),
            );
            // Only what differs is sent (inserted one by one: collecting
            // into a map would compile a sort for it). An unset config key
            // reads as empty, as the API sets it.
            let mut changed = BTreeMap::new();
            for (k, v) in config {
                if now_config.get(k).map_or("", String::as_str) != v {
                    changed.insert(k.clone(), v.clone());
                }
            }
            let mut changed_devices = BTreeMap::new();
            for (k, d) in devices {
                if now_devices.get(k) != Some(d) {
                    changed_devices.insert(k.clone(), d.clone());
                }
            }
            if changed.is_empty() && changed_devices.is_empty() {
                return Ok(Outcome::Unchanged);
            }
            let body = InstancePut {
                profiles: None,
                restore: None,
                config: Some(changed),
                devices: Some(changed_devices),
            };
            act(t, "PATCH", &url, &body)?;
            Ok(Outcome::Updated)
        }
        Step::State { name, running } => {
            let url = path::instance_state(name);
            let now: Value = get(t, &url)?;
            let is_running = now.get("status").and_then(Value::as_str) == Some("Running");
            if is_running == *running {
                return Ok(Outcome::Unchanged);
            }
            let action = if *running { "start" } else { "stop" };
            let body = StatePut {
                action: action.into(),
                timeout: -1,
                force: false,
                stateful: false,
            };
            act(t, "PUT", &url, &body)?;
            Ok(Outcome::Updated)
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {

    use super::*;
    use crate::pki::{CertSpec, Curve, Key, Profile};
    use crate::wire::Envelope;
    use serde_json::json;

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

    impl Exchange for Fake {
        type Error = CallError;

        fn exchange(
            &mut self,
            method: &str,
            path: &str,
            body: Option<&[u8]>,
        ) -> Result<(u16, Vec<u8>), CallError> {
            let answer = |status, e: &Envelope<Value>| (status, serde_json::to_vec(e).unwrap());
            if method == "GET" {
                return Ok(match self.gets.get(path) {
                    Some(v) => answer(200, &Envelope::sync(v.clone())),
                    None => answer(404, &Envelope::error(404, "not found")),
                });
            }
            self.calls.push((
                method.into(),
                path.into(),
                body.map(|b| serde_json::from_slice(b).unwrap())
                    .unwrap_or_default(),
            ));
            if path == "/1.0/images" || path.ends_with("/state") {
                let op = json!({"id": "op1", "class": "task", "status_code": 103});
                return Ok(answer(
                    202,
                    &Envelope::operation("/1.0/operations/op1".into(), op),
                ));
            }
            Ok(answer(200, &Envelope::sync(json!({}))))
        }
    }

    impl Transport for Fake {}

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
        t.gets.insert(
            "/1.0/images?recursion=1".into(),
            json!([{"fingerprint": "ab12", "aliases": [{"name": "base"}]}]),
        );
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
}
