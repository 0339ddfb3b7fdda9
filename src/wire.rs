//! What travels between client and daemon, shared by both sides (and by
//! preseed, which is a client too), in LXD's shapes
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>):
//!
//! - the API's [`path`]s, and the rule for a path parameter;
//! - the answer, LXD's [`Envelope`]: a client opens it in one place,
//!   [`call`], whichever way the request travelled ([`Exchange`]), and
//!   waits for the operation an answer started in one place, [`settle`];
//! - the request bodies, which a client writes and the daemon reads as the
//!   same types ([`InstancesPost`], [`StatePut`], [`CertificatesPost`], …);
//! - the words both sides check: a certificate's [`Role`] and projects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

impl crate::fault::Blame for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            // A project list naming what does not exist is the request's.
            Error::UnknownProject(_) => Fault::Input,
            // The rest is what a daemon answered: its account of it.
            Error::Refused { .. }
            | Error::NotJson(_)
            | Error::NoMetadata(_)
            | Error::NoEnvelope(_) => Fault::Peer,
        }
    }
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

    pub fn instance_snapshots(name: &str) -> String {
        format!("{INSTANCES}/{name}/snapshots")
    }

    pub fn instance_snapshot(name: &str, snapshot: &str) -> String {
        format!("{INSTANCES}/{name}/snapshots/{snapshot}")
    }

    pub fn instance_console(name: &str) -> String {
        format!("{INSTANCES}/{name}/console")
    }

    pub fn instance_exec(name: &str) -> String {
        format!("{INSTANCES}/{name}/exec")
    }

    /// A command's recorded output (`record-output`).
    pub fn exec_output(name: &str, file: &str) -> String {
        format!("/1.0/instances/{name}/logs/exec-output/{file}")
    }

    /// A guest file, `path` escaped for the query.
    pub fn instance_file(name: &str, path: &str) -> String {
        let mut q = String::new();
        for b in path.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                    q.push(char::from(b))
                }
                _ => q.push_str(&format!("%{b:02X}")),
            }
        }
        format!("{INSTANCES}/{name}/files?path={q}")
    }

    /// Where a client connects an operation's websocket.
    pub fn operation_websocket(id: &str, secret: &str) -> String {
        format!("/1.0/operations/{id}/websocket?secret={secret}")
    }

    pub fn image(fingerprint: &str) -> String {
        format!("{IMAGES}/{fingerprint}")
    }

    pub const IMAGE_ALIASES: &str = "/1.0/images/aliases";

    pub fn image_alias(name: &str) -> String {
        format!("{IMAGE_ALIASES}/{name}")
    }

    pub const PROFILES: &str = "/1.0/profiles";
    pub const PROJECTS: &str = "/1.0/projects";
    pub const STORAGE_POOLS: &str = "/1.0/storage-pools";
    pub const NETWORKS: &str = "/1.0/networks";

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

/// One device: LXD's flat string map (`type`, `source`, …).
pub type Device = BTreeMap<String, String>;

/// The body of `POST /1.0/instances` (LXD's `InstancesPost`): LXD's
/// fields, and no others.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesPost {
    pub name: String,
    /// `virtual-machine`, the only type there is; empty means it too.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<InstanceSource>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: BTreeMap<String, Device>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// LXD's fields for what kvmbox does not do (a cloud instance type, a
    /// stateful start, a snapshot to restore, a state to start in): lxc
    /// sends them empty, and anything else is refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_type: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stateful: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restore: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
}

impl InstancesPost {
    /// A virtual machine from the image `alias`, or from nothing (it
    /// boots a kernel its config names).
    pub fn vm(
        name: String,
        alias: Option<String>,
        config: BTreeMap<String, String>,
        devices: BTreeMap<String, Device>,
    ) -> InstancesPost {
        InstancesPost {
            name,
            kind: "virtual-machine".into(),
            source: Some(InstanceSource {
                kind: if alias.is_some() { "image" } else { "none" }.into(),
                alias,
                fingerprint: None,
                server: String::new(),
                protocol: String::new(),
                mode: String::new(),
            }),
            config,
            devices,
            description: String::new(),
            profiles: None,
            ephemeral: false,
            architecture: String::new(),
            instance_type: String::new(),
            stateful: false,
            restore: String::new(),
            state: None,
        }
    }
}

/// What an instance is made from: an image (by alias or fingerprint), or
/// `none`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceSource {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Another server to pull the image from (`lxc launch images:…`),
    /// its protocol (`simplestreams`) and mode (`pull`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
}

/// The body of `PUT` and `PATCH /1.0/instances/<name>`: what is left out
/// is kept. An instance as `GET` shows it reads as one too (its other
/// fields are skipped), which is how a client edits and puts it back.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstancePut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<BTreeMap<String, Device>>,
    /// Only the `default` profile exists; a client that puts back what it
    /// read sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Value>,
    /// A snapshot to put the instance back to (`lxc restore`); the rest of
    /// the body is then ignored, as in LXD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
}

/// The body of `POST /1.0/instances/<name>/snapshots` (LXD's
/// `InstanceSnapshotsPost`).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotsPost {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stateful: bool,
    /// Absent or null: as the instance's `snapshots.expiry` says; Go's
    /// zero time (what `lxc snapshot --no-expiry` sends): never. No other
    /// time is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Value>,
}

/// The body of `POST /1.0/instances/<name>/snapshots/<snapshot>` (LXD's
/// `InstanceSnapshotPost`): a rename.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPost {
    pub name: String,
    /// Moving a snapshot to another server: not supported.
    #[serde(default, skip_serializing_if = "is_false")]
    pub migration: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub live: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Value>,
}

/// The body of `PUT /1.0/instances/<name>/state` (LXD's
/// `InstanceStatePut`).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct StatePut {
    /// `start`, `stop` or `restart`.
    pub action: String,
    /// Seconds to wait for a graceful stop; negative: the default.
    #[serde(default = "default_timeout")]
    pub timeout: i64,
    /// Stop at once, without asking the guest.
    #[serde(default)]
    pub force: bool,
    /// Not supported: always false from kvmbox's clients.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stateful: bool,
}

fn default_timeout() -> i64 {
    -1
}

fn is_false(b: &bool) -> bool {
    !b
}

/// The body of `POST /1.0/images`: LXD's shape, with a host path or an
/// image server (`"type": "image"`, pulled) as the source.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ImagesPost {
    pub source: ImageSource,
    /// lxc sends `null` for none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub aliases: Vec<ImageAlias>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ImageAlias>, D::Error> {
    Ok(Option::<Vec<ImageAlias>>::deserialize(d)?.unwrap_or_default())
}

impl ImagesPost {
    /// The image in the host file `path` (absolute), named `alias`.
    pub fn from_path(path: PathBuf, alias: String) -> ImagesPost {
        ImagesPost {
            source: ImageSource {
                kind: "path".into(),
                path,
                ..ImageSource::default()
            },
            aliases: vec![ImageAlias { name: alias }],
        }
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageSource {
    /// `path` (a host file) or `image` (pulled from `server`).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "no_path")]
    pub path: PathBuf,
    /// `pull`, the only mode there is for `image`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// The image server's URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server: String,
    /// `simplestreams`, the only protocol pulled from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// The image on the server, by alias or by fingerprint (lxc puts an
    /// alias here too).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alias: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// `virtual-machine` (or empty), the only type pulled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_type: String,
}

fn no_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

impl ImagesPost {
    /// The image `alias` on simplestreams server `server`, pulled by the
    /// daemon and named `name` (or as the daemon derives it).
    pub fn pull(server: String, alias: String, name: Option<String>) -> ImagesPost {
        ImagesPost {
            source: ImageSource {
                kind: "image".into(),
                mode: "pull".into(),
                server,
                protocol: "simplestreams".into(),
                alias,
                image_type: "virtual-machine".into(),
                ..ImageSource::default()
            },
            aliases: name.map(|name| ImageAlias { name }).into_iter().collect(),
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageAlias {
    pub name: String,
}

/// An image as `GET /1.0/images/<fingerprint>` shows it: LXD's shape,
/// which `lxc image list` and `lxc init` parse. kvmbox's images are VM
/// disks for the host's architecture, private, never expiring or updated;
/// `properties.format` says whether the disk is raw or qcow2.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub fingerprint: String,
    #[serde(default)]
    pub aliases: Vec<AliasInfo>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub auto_update: bool,
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    pub profiles: Vec<String>,
    /// RFC 3339, as every date LXD shows.
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub uploaded_at: String,
    #[serde(default)]
    pub expires_at: String,
    #[serde(default)]
    pub last_used_at: String,
}

impl ImageInfo {
    /// Whether `name` is one of the image's aliases.
    pub fn has_alias(&self, name: &str) -> bool {
        self.aliases.iter().any(|a| a.name == name)
    }
}

/// An alias as an image lists it.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AliasInfo {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// An alias as `GET /1.0/images/aliases/<name>` shows it.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AliasEntry {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The image's fingerprint.
    pub target: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// The body of `POST /1.0/certificates` (LXD's `CertificatesPost`, as
/// lxc 5.0 sends it and as later LXD does with `trust_token`, plus
/// `role`). What is empty is left out.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CertificatesPost {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `client`, the only type there is (lxc 5.0 sends `""` with a token).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Another client's certificate, PEM or base64 DER (an administrator
    /// adding it); empty to add the caller's own TLS certificate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate: String,
    /// The trust password, the local passphrase, or (lxc 5.0) a token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_token: String,
    /// true: make a token for `name` instead of adding anything.
    #[serde(default, skip_serializing_if = "is_false")]
    pub token: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
    /// LXD's flag: false means all projects, whatever `projects` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restricted: Option<bool>,
    /// Token lifetime in seconds (default one day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

impl CertificatesPost {
    /// A client certificate: the caller's own, until the fields that add
    /// another or a secret are set.
    pub fn client() -> CertificatesPost {
        CertificatesPost {
            kind: Some("client".into()),
            ..CertificatesPost::default()
        }
    }

    /// The caller's own certificate, with the trust password (over TCP)
    /// or the local passphrase (on the Unix socket).
    pub fn with_password(password: String) -> CertificatesPost {
        CertificatesPost {
            password,
            ..CertificatesPost::client()
        }
    }

    /// The caller's own certificate, with a one-time token.
    pub fn with_token(token: String) -> CertificatesPost {
        CertificatesPost {
            trust_token: token,
            ..CertificatesPost::client()
        }
    }
}

/// The body of `PUT` and `PATCH /1.0/certificates/<fp>` (LXD's
/// `CertificatePut` plus `role`): what is left out keeps its value.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CertificatePut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
    /// LXD's flag: false means all projects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restricted: Option<bool>,
}

/// The body of `PUT` and `PATCH /1.0`: the server's configuration. A
/// value may be a string, a number or a bool (as LXD's YAML gives them),
/// or null to unset.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPut {
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
}

impl ServerPut {
    /// One key; an empty value unsets it.
    pub fn one(key: &str, value: &str) -> ServerPut {
        let mut config = BTreeMap::new();
        config.insert(key.to_string(), Value::from(value));
        ServerPut { config }
    }
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

/// A name that is none of the roles.
#[derive(PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use auditor, user, operator or admin")]
pub struct UnknownRole(String);

crate::debug_as_display!(UnknownRole);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "auditor" => Ok(Role::Auditor),
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(UnknownRole(s.to_string())),
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

/// `POST /1.0/instances/<name>/exec` (LXD's `InstanceExecPost`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExecPost {
    pub command: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(rename = "wait-for-websocket", default)]
    pub wait_for_websocket: bool,
    #[serde(default)]
    pub interactive: bool,
    #[serde(rename = "record-output", default)]
    pub record_output: bool,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    #[serde(default)]
    pub user: u32,
    #[serde(default)]
    pub group: u32,
    #[serde(default)]
    pub cwd: String,
}

/// `POST /1.0/instances/<name>/console` (LXD's `InstanceConsolePost`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConsolePost {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
}

/// A message on the `control` websocket of an exec or console operation
/// (LXD's `InstanceExecControl`): a window's new size, or a signal for the
/// command.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Control {
    /// `window-resize` or `signal`.
    pub command: String,
    /// `width` and `height`, as decimal strings, of a `window-resize`
    /// (lxc sends `null` with a signal).
    #[serde(default)]
    pub args: Option<BTreeMap<String, String>>,
    /// The signal number of a `signal`.
    #[serde(default)]
    pub signal: i32,
}

impl Control {
    pub fn resize(width: u16, height: u16) -> Control {
        let args = [("width", width), ("height", height)];
        Control {
            command: "window-resize".into(),
            args: Some(
                args.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            signal: 0,
        }
    }

    pub fn signal(signal: i32) -> Control {
        Control {
            command: "signal".into(),
            args: None,
            signal,
        }
    }

    /// (width, height) of a `window-resize` whose sizes are numbers a
    /// terminal can have.
    pub fn size(&self) -> Option<(u16, u16)> {
        let args = self.args.as_ref()?;
        let dim = |k: &str| args.get(k)?.parse::<u16>().ok().filter(|n| *n > 0);
        match self.command.as_str() {
            "window-resize" => Some((dim("width")?, dim("height")?)),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_messages_as_lxd_sends_them() {
        let c: Control = serde_json::from_value(
            json!({"command": "window-resize", "args": {"width": "132", "height": "43"}}),
        )
        .unwrap();
        assert_eq!(c.size(), Some((132, 43)));
        let back = serde_json::to_value(Control::resize(132, 43)).unwrap();
        assert_eq!(
            back.get("args"),
            Some(&json!({"width": "132", "height": "43"}))
        );
        let sig: Control =
            serde_json::from_value(json!({"command": "signal", "signal": 2})).unwrap();
        assert_eq!(
            (sig.command.as_str(), sig.signal, sig.size()),
            ("signal", 2, None)
        );
        // Sizes no terminal has are no resize.
        for (w, h) in [
            ("0", "24"),
            ("80", "-1"),
            ("99999", "24"),
            ("80", ""),
            ("8 0", "24"),
        ] {
            let c = Control {
                command: "window-resize".into(),
                args: Some(
                    [("width", w), ("height", h)]
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                signal: 0,
            };
            assert_eq!(c.size(), None, "{w}x{h}");
        }
    }

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

    /// `value` is written as `json`, and read back as it was.
    fn shape<T>(value: &T, json: Value)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_value(value).unwrap(), json);
        assert_eq!(&serde_json::from_value::<T>(json).unwrap(), value);
    }

    fn map<V: Clone>(pairs: &[(&str, V)]) -> BTreeMap<String, V> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn instance_bodies_in_lxds_shape() {
        let nic = map(&[("type", "nic".to_string()), ("nictype", "user".to_string())]);
        let post = InstancesPost::vm(
            "vm1".into(),
            Some("base".into()),
            map(&[("limits.cpu", "2".to_string())]),
            map(&[("eth0", nic.clone())]),
        );
        shape(
            &post,
            json!({"name": "vm1", "type": "virtual-machine",
                "source": {"type": "image", "alias": "base"},
                "config": {"limits.cpu": "2"},
                "devices": {"eth0": {"type": "nic", "nictype": "user"}}}),
        );
        let bare = InstancesPost::vm("vm2".into(), None, BTreeMap::new(), BTreeMap::new());
        shape(
            &bare,
            json!({"name": "vm2", "type": "virtual-machine", "source": {"type": "none"},
                "config": {}, "devices": {}}),
        );
        // LXD's fields kvmbox ignores are read; a misspelt one is refused.
        let lxd: InstancesPost = serde_json::from_value(json!({"name": "vm3",
            "description": "", "profiles": ["default"], "ephemeral": false,
            "architecture": "x86_64", "source": {"type": "image", "fingerprint": "ab"}}))
        .unwrap();
        assert_eq!(lxd.source.unwrap().fingerprint.as_deref(), Some("ab"));
        assert!(
            serde_json::from_value::<InstancesPost>(json!({"name": "x", "confg": {}})).is_err()
        );

        shape(
            &InstancePut {
                profiles: None,
                restore: None,
                config: Some(map(&[("limits.memory", "1GiB".to_string())])),
                devices: None,
            },
            json!({"config": {"limits.memory": "1GiB"}}),
        );
        shape(
            &InstancePut {
                profiles: None,
                restore: None,
                config: None,
                devices: Some(map(&[("eth0", nic)])),
            },
            json!({"devices": {"eth0": {"type": "nic", "nictype": "user"}}}),
        );
        // An instance as GET shows it reads as the body that puts it back.
        let shown: InstancePut = serde_json::from_value(json!({"name": "vm1",
            "status": "Running", "config": {"volatile.uuid": "u"}, "devices": {},
            "seclabel": {"loaded": true}}))
        .unwrap();
        assert_eq!(
            shown.config,
            Some(map(&[("volatile.uuid", "u".to_string())]))
        );
    }

    #[test]
    fn state_and_image_bodies_in_lxds_shape() {
        let stop = StatePut {
            action: "stop".into(),
            timeout: 30,
            force: true,
            stateful: false,
        };
        shape(
            &stop,
            json!({"action": "stop", "timeout": 30, "force": true}),
        );
        // As lxc sends it; and a bare action waits the default time.
        let lxc: StatePut = serde_json::from_value(
            json!({"action": "start", "timeout": -1, "force": false, "stateful": false}),
        )
        .unwrap();
        assert_eq!((lxc.action.as_str(), lxc.timeout), ("start", -1));
        let bare: StatePut = serde_json::from_value(json!({"action": "stop"})).unwrap();
        assert_eq!((bare.timeout, bare.force), (-1, false));

        shape(
            &ImagesPost::from_path("/srv/base.qcow2".into(), "base".into()),
            json!({"source": {"type": "path", "path": "/srv/base.qcow2"},
                "aliases": [{"name": "base"}]}),
        );
        shape(
            &ImagesPost::pull(
                "https://images.example.org".into(),
                "debian/12".into(),
                None,
            ),
            json!({"source": {"type": "image", "mode": "pull",
                "server": "https://images.example.org", "protocol": "simplestreams",
                "alias": "debian/12", "image_type": "virtual-machine"},
                "aliases": []}),
        );
        // As lxc 5.0 sends it for `lxc image copy REMOTE:debian/12 kb: --vm`.
        let lxc: ImagesPost = serde_json::from_value(json!({
            "source": {"type": "image", "mode": "pull", "server": "https://m:8443",
                "protocol": "simplestreams", "certificate": "", "secret": "",
                "fingerprint": "debian/12", "image_type": "virtual-machine", "project": ""},
            "aliases": null, "public": false, "auto_update": false, "profiles": null,
            "properties": null, "expires_at": "0001-01-01T00:00:00Z", "filename": ""
        }))
        .unwrap();
        assert_eq!(lxc.source.fingerprint, "debian/12");
        assert!(lxc.aliases.is_empty() && lxc.source.path.as_os_str().is_empty());
    }

    #[test]
    fn certificate_and_server_bodies_in_lxds_shape() {
        shape(
            &CertificatesPost::with_password("pw".into()),
            json!({"type": "client", "password": "pw"}),
        );
        shape(
            &CertificatesPost::with_token("tok".into()),
            json!({"type": "client", "trust_token": "tok"}),
        );
        let add = CertificatesPost {
            name: "alice".into(),
            certificate: "PEM".into(),
            role: Some(Role::Operator),
            projects: Some(vec!["default".into()]),
            ..CertificatesPost::client()
        };
        shape(
            &add,
            json!({"type": "client", "name": "alice", "certificate": "PEM",
                "role": "operator", "projects": ["default"]}),
        );
        let token = CertificatesPost {
            name: "edge1".into(),
            token: true,
            expires_in: Some(3600),
            ..CertificatesPost::client()
        };
        shape(
            &token,
            json!({"type": "client", "name": "edge1", "token": true, "expires_in": 3600}),
        );
        // lxc 5.0 sends an empty type with a token.
        let lxc: CertificatesPost =
            serde_json::from_value(json!({"type": "", "trust_token": "t", "name": ""})).unwrap();
        assert_eq!(
            (lxc.kind.as_deref(), lxc.trust_token.as_str()),
            (Some(""), "t")
        );

        shape(
            &CertificatePut {
                name: Some("alice".into()),
                role: Some(Role::User),
                projects: Some(vec![]),
                restricted: Some(false),
            },
            json!({"name": "alice", "role": "user", "projects": [], "restricted": false}),
        );
        shape(
            &CertificatePut {
                role: Some(Role::Admin),
                ..CertificatePut::default()
            },
            json!({"role": "admin"}),
        );

        shape(
            &ServerPut::one("core.https_address", "[::]:8443"),
            json!({"config": {"core.https_address": "[::]:8443"}}),
        );
        let yaml: ServerPut =
            serde_json::from_value(json!({"config": {"limits": 2, "on": true, "gone": null}}))
                .unwrap();
        assert_eq!(yaml.config.len(), 3);
        assert!(serde_json::from_value::<ServerPut>(json!({"confg": {}})).is_err());
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
