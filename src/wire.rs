//! What travels between client and daemon, shared by both sides (and by
//! preseed, which is a client too): the rules of the API's paths, and the
//! bodies both sides read and write.
//!
//! Every answer is LXD's [`Envelope`]; a client opens it in one place,
//! [`call`], whichever way the request travelled ([`Exchange`]), and waits
//! for the operation an answer started in one place, [`settle`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The daemon's error envelope, or an operation that ended in failure.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("body is not JSON ({0})")]
    NotJson(#[source] serde_json::Error),
    #[error("no metadata ({0})")]
    NoMetadata(#[source] serde_json::Error),
    #[error("status {0} without an envelope")]
    NoEnvelope(u16),
    #[error("project {0:?} not found: kvmbox has only the default project")]
    UnknownProject(String),
}

/// LXD's response envelope
/// (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/#return-values>):
/// the daemon writes every answer as one. A client reads only its `type`,
/// `error` and `metadata`; the other fields are not decoded, which keeps
/// the decoder (one per metadata type) small.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    /// Absent only from an answer that is no envelope.
    #[serde(rename = "type")]
    pub kind: Option<Kind>,
    #[serde(skip_deserializing)]
    pub status: String,
    #[serde(skip_deserializing)]
    pub status_code: u16,
    /// The operation's URL, in an `async` answer.
    #[serde(skip_deserializing)]
    pub operation: String,
    /// The HTTP status, in an `error` answer.
    #[serde(skip_deserializing)]
    pub error_code: u16,
    #[serde(default)]
    pub error: String,
    /// `null` in an `error` answer.
    pub metadata: Option<T>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Sync,
    Async,
    Error,
}

impl<T> Envelope<T> {
    /// A synchronous answer: 200, and `metadata`. The daemon writes its
    /// head as bytes (`reply::sync_json`, held to this by a test): a list
    /// served from memory is not decoded to be wrapped.
    #[cfg(test)]
    pub(crate) fn sync(metadata: T) -> Envelope<T> {
        Envelope {
            kind: Some(Kind::Sync),
            status: "Success".into(),
            status_code: 200,
            operation: String::new(),
            error_code: 0,
            error: String::new(),
            metadata: Some(metadata),
        }
    }

    /// An operation started (HTTP 202): its URL, and the operation.
    pub(crate) fn operation(url: String, op: T) -> Envelope<T> {
        Envelope {
            kind: Some(Kind::Async),
            status: "Operation created".into(),
            status_code: 100,
            operation: url,
            error_code: 0,
            error: String::new(),
            metadata: Some(op),
        }
    }

    /// A refusal with HTTP status `code`.
    pub(crate) fn error(code: u16, message: &str) -> Envelope<T> {
        Envelope {
            kind: Some(Kind::Error),
            status: String::new(),
            status_code: 0,
            operation: String::new(),
            error_code: code,
            error: message.into(),
            metadata: None,
        }
    }
}

/// Opens an answer (HTTP `status`, `body`): the metadata of a `sync` or
/// `async` envelope, decoded into `T`, or the error of an `error` one.
pub(crate) fn open<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, Error> {
    let e: Envelope<T> = serde_json::from_slice(body).map_err(Error::NotJson)?;
    match (e.kind, e.metadata) {
        (Some(Kind::Sync | Kind::Async), Some(m)) => Ok(m),
        // `null` metadata: only a type that takes null (a Value) fits.
        (Some(Kind::Sync | Kind::Async), None) => {
            serde_json::from_slice(b"null").map_err(Error::NoMetadata)
        }
        (Some(Kind::Error), _) => Err(Error::Refused {
            status,
            message: if e.error.is_empty() {
                "unknown error".into()
            } else {
                e.error
            },
        }),
        (None, _) => Err(Error::NoEnvelope(status)),
    }
}

/// One request and its answer, the envelope still closed: over a
/// connection to a daemon, or handed to the daemon itself (a preseed
/// document applied at start-up).
pub(crate) trait Exchange {
    type Error: From<Error>;
    /// Sends `method path` with a JSON `body`; the answer's HTTP status
    /// and body.
    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), Self::Error>;
}

/// A request whose answer is opened ([`open`]).
pub(crate) fn call<T: DeserializeOwned, X: Exchange + ?Sized>(
    x: &mut X,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<T, X::Error> {
    let (status, body) = x.exchange(method, path, body)?;
    Ok(open(status, &body)?)
}

/// The end of the operation `answer` started, if `answer` is one (the
/// metadata of an `async` envelope): the operation's metadata once it
/// succeeded, or its error. Any other answer is handed back as it is.
pub(crate) fn settle<X: Exchange + ?Sized>(x: &mut X, answer: Value) -> Result<Value, X::Error> {
    let id = match (
        answer.get("id").and_then(Value::as_str),
        answer.get("class"),
        answer.get("status_code"),
    ) {
        (Some(id), Some(_), Some(_)) => id,
        _ => return Ok(answer),
    };
    let mut done: Value = call(x, "GET", &path::operation_wait(id), None)?;
    if done.get("status_code").and_then(Value::as_u64) == Some(200) {
        return Ok(done
            .get_mut("metadata")
            .map(Value::take)
            .unwrap_or_default());
    }
    let message = match done.get("err").and_then(Value::as_str) {
        Some(err) if !err.is_empty() => err.to_string(),
        _ => "the operation failed".to_string(),
    };
    Err(Error::Refused {
        status: 400,
        message,
    }
    .into())
}

/// The API's paths, as clients ask for them and the daemon shows them
/// (a list's entries, an operation's resources). Each `…_FULL` list has
/// every entry in full (`?recursion=1`), not as its path.
pub mod path {
    /// `/1.0`: the server and its configuration.
    pub const SERVER: &str = "/1.0";
    pub const CERTIFICATES: &str = "/1.0/certificates";
    pub const CERTIFICATES_FULL: &str = "/1.0/certificates?recursion=1";
    pub const INSTANCES: &str = "/1.0/instances";
    pub const INSTANCES_FULL: &str = "/1.0/instances?recursion=1";
    pub const IMAGES: &str = "/1.0/images";
    pub const IMAGES_FULL: &str = "/1.0/images?recursion=1";

    pub fn certificate(fingerprint: &str) -> String {
        format!("{CERTIFICATES}/{fingerprint}")
    }

    pub fn instance(name: &str) -> String {
        format!("{INSTANCES}/{name}")
    }

    pub fn instance_state(name: &str) -> String {
        format!("{INSTANCES}/{name}/state")
    }

    pub fn instance_console(name: &str) -> String {
        format!("{INSTANCES}/{name}/console")
    }

    pub fn image(fingerprint: &str) -> String {
        format!("{IMAGES}/{fingerprint}")
    }

    pub fn operation(id: &str) -> String {
        format!("/1.0/operations/{id}")
    }

    /// The operation once it has ended, or after an hour (the longest the
    /// daemon holds a wait).
    pub fn operation_wait(id: &str) -> String {
        format!("/1.0/operations/{id}/wait?timeout=3600")
    }
}

/// Path parameters are names, fingerprints and uuids: nothing else gets in.
pub(crate) fn is_param(seg: &str) -> bool {
    !seg.is_empty()
        && seg.len() <= 128
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && seg != "."
        && seg != ".."
}

/// What a trusted certificate may do. Ordered: each role includes
/// everything below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access.
    Auditor,
    /// Instance lifecycle: start, stop, console, snapshots.
    User,
    /// Also create, reconfigure and delete instances and images.
    Operator,
    /// Also server configuration and the trust store.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auditor" => Ok(Role::Auditor),
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?}: use auditor, user, operator or admin"
            )),
        }
    }
}

/// The one project kvmbox has: LXD's `default`, where every instance,
/// image and operation lives. A certificate's project list may name only it.
pub(crate) const DEFAULT_PROJECT: &str = "default";

/// Refuses a project list that names anything but [`DEFAULT_PROJECT`].
pub(crate) fn check_projects(projects: &[String]) -> Result<(), Error> {
    match projects.iter().find(|p| *p != DEFAULT_PROJECT) {
        Some(p) => Err(Error::UnknownProject(p.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_as_lxd_has_them() {
        assert_eq!(path::instance("vm1"), "/1.0/instances/vm1");
        assert_eq!(path::instance_state("vm1"), "/1.0/instances/vm1/state");
        assert_eq!(path::instance_console("vm1"), "/1.0/instances/vm1/console");
        assert_eq!(path::certificate("ab12"), "/1.0/certificates/ab12");
        assert_eq!(path::image("ab12"), "/1.0/images/ab12");
        assert_eq!(path::operation("u1"), "/1.0/operations/u1");
        assert_eq!(
            path::operation_wait("u1"),
            "/1.0/operations/u1/wait?timeout=3600"
        );
        assert_eq!(path::INSTANCES_FULL, "/1.0/instances?recursion=1");
        assert_eq!(path::CERTIFICATES_FULL, "/1.0/certificates?recursion=1");
        assert_eq!(path::IMAGES_FULL, "/1.0/images?recursion=1");
    }

    #[test]
    fn envelopes_in_lxds_shape() {
        let e = serde_json::to_value(Envelope::sync(json!(["/1.0"]))).unwrap();
        assert_eq!(
            e,
            json!({"type": "sync", "status": "Success", "status_code": 200, "operation": "",
                "error_code": 0, "error": "", "metadata": ["/1.0"]})
        );
        let e = serde_json::to_value(Envelope::<()>::error(404, "not found")).unwrap();
        assert_eq!(
            e,
            json!({"type": "error", "status": "", "status_code": 0, "operation": "",
                "error_code": 404, "error": "not found", "metadata": null})
        );
        let op = Envelope::operation("/1.0/operations/x".into(), json!({"id": "x"}));
        let e = serde_json::to_value(&op).unwrap();
        assert_eq!(
            e,
            json!({"type": "async", "status": "Operation created", "status_code": 100,
                "operation": "/1.0/operations/x", "error_code": 0, "error": "",
                "metadata": {"id": "x"}})
        );
        // What a client reads of it.
        let back: Envelope<Value> = serde_json::from_value(e).unwrap();
        assert_eq!(
            (back.kind, back.error, back.metadata),
            (op.kind, op.error, op.metadata)
        );
    }

    #[test]
    fn a_client_opens_an_envelope() {
        let body = |v: Value| serde_json::to_vec(&v).unwrap();
        let ok = body(json!({"type": "sync", "metadata": {"a": 1}}));
        assert_eq!(open::<Value>(200, &ok).unwrap(), json!({"a": 1}));
        let null = body(json!({"type": "sync", "metadata": null}));
        assert_eq!(open::<Value>(200, &null).unwrap(), Value::Null);
        assert!(matches!(
            open::<Vec<u8>>(200, &null),
            Err(Error::NoMetadata(_))
        ));
        let refused = body(json!({"type": "error", "error": "nope", "metadata": null}));
        match open::<Vec<u8>>(403, &refused) {
            Err(Error::Refused { status, message }) => {
                assert_eq!((status, &*message), (403, "nope"))
            }
            other => panic!("{other:?}"),
        }
        let bare = body(json!({"type": "error"}));
        assert_eq!(
            open::<Value>(500, &bare).unwrap_err().to_string(),
            "unknown error"
        );
        assert!(matches!(
            open::<Value>(200, b"{}"),
            Err(Error::NoEnvelope(200))
        ));
        assert!(matches!(
            open::<Value>(200, b"<html>"),
            Err(Error::NotJson(_))
        ));
        let other = body(json!({"type": "later", "metadata": 1}));
        assert!(open::<Value>(200, &other).is_err());
    }

    /// A daemon that answers from a list, and records what it was asked.
    struct Script(Vec<(u16, Value)>, Vec<String>);

    impl Exchange for Script {
        type Error = Error;
        fn exchange(
            &mut self,
            method: &str,
            path: &str,
            _: Option<&[u8]>,
        ) -> Result<(u16, Vec<u8>), Error> {
            self.1.push(format!("{method} {path}"));
            let (status, v) = self.0.remove(0);
            Ok((status, serde_json::to_vec(&v).unwrap()))
        }
    }

    #[test]
    fn an_operation_is_waited_for_and_anything_else_passes() {
        let op = json!({"id": "op1", "class": "task", "status_code": 103});
        let ended = |code, err: &str| {
            json!({"type": "sync", "metadata": {"id": "op1", "class": "task",
                "status_code": code, "err": err, "metadata": {"fingerprint": "ab"}}})
        };
        let mut s = Script(vec![(200, ended(200, ""))], vec![]);
        assert_eq!(
            settle(&mut s, op.clone()).unwrap(),
            json!({"fingerprint": "ab"})
        );
        assert_eq!(s.1, ["GET /1.0/operations/op1/wait?timeout=3600"]);

        let mut s = Script(vec![(200, ended(400, "no disk"))], vec![]);
        match settle(&mut s, op.clone()) {
            Err(Error::Refused { status, message }) => {
                assert_eq!((status, &*message), (400, "no disk"))
            }
            other => panic!("{other:?}"),
        }
        let mut s = Script(vec![(200, ended(103, ""))], vec![]);
        assert_eq!(
            settle(&mut s, op).unwrap_err().to_string(),
            "the operation failed"
        );

        let mut s = Script(vec![], vec![]);
        let plain = json!({"id": "op1", "status_code": 200});
        assert_eq!(settle(&mut s, plain.clone()).unwrap(), plain);
        assert!(s.1.is_empty(), "nothing to wait for");
    }

    #[test]
    fn only_the_default_project_exists() {
        assert!(check_projects(&[]).is_ok());
        assert!(check_projects(&["default".into()]).is_ok());
        let e = check_projects(&["default".into(), "p1".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "project \"p1\" not found: kvmbox has only the default project"
        );
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::User);
        assert!(Role::User > Role::Auditor);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }
}
