//! The REST API: LXD's `/1.0` layout and response envelope, a route table in
//! which every route names the least role it needs, and the handlers.
//!
//! Every request carries an [`Identity`]: who the peer is (Unix socket
//! credentials now, a TCP address with the remote listener later), the
//! fingerprint of its TLS client certificate, and the role the trust store
//! gives it, if any. Reference: <https://documentation.ubuntu.com/lxd/en/latest/rest-api/>.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_instances::Call;
use crate::daemon::Shared;
use crate::http::{Request, Response};
use crate::log::log;
use crate::pki::Cert;
use crate::sys::PeerCred;
use crate::trust::Role;

/// Who is calling.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub peer: Peer,
    /// The TLS client certificate (always present: the handshake requires one).
    pub cert: Option<Cert>,
    /// `None` means untrusted.
    pub role: Option<Role>,
}

/// Where the call comes from.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// The Unix socket, with the kernel's view of the caller.
    Local(PeerCred),
}

impl Identity {
    /// The key failed passphrase attempts are counted under.
    fn limiter_key(&self) -> String {
        match &self.peer {
            Peer::Local(c) => format!("uid:{}", c.uid),
        }
    }

    fn describe(&self) -> String {
        match &self.peer {
            Peer::Local(c) => format!("uid {} (pid {})", c.uid, c.pid),
        }
    }

    fn fingerprint(&self) -> Option<String> {
        self.cert.as_ref().map(Cert::fingerprint)
    }
}

/// What a route requires of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Anyone who completed the TLS handshake.
    Anyone,
    /// A trusted caller with at least this role.
    Role(Role),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Server,
    ServerPut,
    ServerPatch,
    Certificates,
    CertificateAdd,
    Certificate,
    CertificateDelete,
    /// Instances and images: see `api_instances`.
    Instances(Call),
    Operations,
    Operation,
    OperationWait,
}

/// Method, path pattern (`{}` is one segment), route, what it needs.
const ROUTES: &[(&str, &str, Route, Need)] = &[
    ("GET", "/", Route::Root, Need::Anyone),
    ("GET", "/1.0", Route::Server, Need::Anyone),
    ("PUT", "/1.0", Route::ServerPut, Need::Role(Role::Admin)),
    ("PATCH", "/1.0", Route::ServerPatch, Need::Role(Role::Admin)),
    (
        "GET",
        "/1.0/certificates",
        Route::Certificates,
        Need::Role(Role::Auditor),
    ),
    (
        "POST",
        "/1.0/certificates",
        Route::CertificateAdd,
        Need::Anyone,
    ),
    (
        "GET",
        "/1.0/certificates/{}",
        Route::Certificate,
        Need::Role(Role::Auditor),
    ),
    (
        "DELETE",
        "/1.0/certificates/{}",
        Route::CertificateDelete,
        Need::Role(Role::Admin),
    ),
    (
        "GET",
        "/1.0/instances",
        Route::Instances(Call::List),
        Need::Role(Role::Auditor),
    ),
    (
        "POST",
        "/1.0/instances",
        Route::Instances(Call::Create),
        Need::Role(Role::Operator),
    ),
    (
        "GET",
        "/1.0/instances/{}",
        Route::Instances(Call::Get),
        Need::Role(Role::Auditor),
    ),
    (
        "PUT",
        "/1.0/instances/{}",
        Route::Instances(Call::Put),
        Need::Role(Role::Operator),
    ),
    (
        "PATCH",
        "/1.0/instances/{}",
        Route::Instances(Call::Patch),
        Need::Role(Role::Operator),
    ),
    (
        "DELETE",
        "/1.0/instances/{}",
        Route::Instances(Call::Delete),
        Need::Role(Role::Operator),
    ),
    (
        "GET",
        "/1.0/instances/{}/state",
        Route::Instances(Call::State),
        Need::Role(Role::Auditor),
    ),
    (
        "PUT",
        "/1.0/instances/{}/state",
        Route::Instances(Call::StatePut),
        Need::Role(Role::User),
    ),
    (
        "GET",
        "/1.0/instances/{}/console",
        Route::Instances(Call::Console),
        Need::Role(Role::User),
    ),
    (
        "GET",
        "/1.0/images",
        Route::Instances(Call::Images),
        Need::Role(Role::Auditor),
    ),
    (
        "POST",
        "/1.0/images",
        Route::Instances(Call::ImageAdd),
        Need::Role(Role::Operator),
    ),
    (
        "GET",
        "/1.0/operations",
        Route::Operations,
        Need::Role(Role::Auditor),
    ),
    (
        "GET",
        "/1.0/operations/{}",
        Route::Operation,
        Need::Role(Role::Auditor),
    ),
    (
        "GET",
        "/1.0/operations/{}/wait",
        Route::OperationWait,
        Need::Role(Role::Auditor),
    ),
];

/// What an untrusted client is told, wherever it is refused.
pub const UNTRUSTED_HINT: &str =
    "not authorized: this client is not trusted; run `kvmbox authenticate` with the local passphrase";

/// Matches `path` against `pattern`, collecting the `{}` segments.
fn matches(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(params),
            (Some("{}"), Some(seg)) if is_param(seg) => params.push(seg.to_string()),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// Path parameters are names, fingerprints and uuids: nothing else gets in.
fn is_param(seg: &str) -> bool {
    !seg.is_empty()
        && seg.len() <= 128
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && seg != "."
        && seg != ".."
}

fn find(method: &str, path: &str) -> Result<(Route, Need, Vec<String>), Response> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let mut path_known = false;
    for (m, pattern, route, need) in ROUTES {
        if let Some(params) = matches(pattern, path) {
            path_known = true;
            if *m == method {
                return Ok((*route, *need, params));
            }
        }
    }
    Err(if path_known {
        error(405, "method not allowed")
    } else {
        error(404, "not found")
    })
}

/// LXD's synchronous response.
pub(crate) fn sync(metadata: Value) -> Response {
    envelope(
        200,
        json!({
            "type": "sync",
            "status": "Success",
            "status_code": 200,
            "operation": "",
            "error_code": 0,
            "error": "",
            "metadata": metadata,
        }),
    )
}

/// LXD's error response.
pub(crate) fn error(code: u16, message: &str) -> Response {
    envelope(
        code,
        json!({
            "type": "error",
            "status": "",
            "status_code": 0,
            "operation": "",
            "error_code": code,
            "error": message,
            "metadata": null,
        }),
    )
}

/// LXD's asynchronous response: 202 and the operation.
pub(crate) fn operation(op: &crate::operations::Operation) -> Response {
    envelope(
        202,
        json!({
            "type": "async",
            "status": "Operation created",
            "status_code": 100,
            "operation": format!("/1.0/operations/{}", op.id),
            "error_code": 0,
            "error": "",
            "metadata": op,
        }),
    )
}

fn envelope(status: u16, body: Value) -> Response {
    Response {
        status,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// Answers one request.
pub(crate) async fn handle(shared: &Arc<Shared>, id: &Identity, req: &Request) -> Response {
    let (route, need, params) = match find(&req.method, &req.path) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Need::Role(min) = need {
        match id.role {
            None => return error(403, UNTRUSTED_HINT),
            Some(role) if role < min => {
                return error(
                    403,
                    &format!("not authorized: this needs the {min:?} role").to_lowercase(),
                )
            }
            Some(_) => {}
        }
    }
    let param = params.first().map(String::as_str).unwrap_or_default();
    let recursion = req.query_param("recursion").is_some_and(|r| r != "0");
    match route {
        Route::Root => sync(json!(["/1.0"])),
        Route::Server => sync(shared.server_info(id)),
        Route::ServerPut => put_config(shared, req, true).await,
        Route::ServerPatch => put_config(shared, req, false).await,
        Route::Certificates => certificates(shared, recursion),
        Route::CertificateAdd => add_certificate(shared, id, req).await,
        Route::Certificate => match shared.trust().get(param) {
            Some(e) => sync(entry_json(e)),
            None => error(404, "certificate not found"),
        },
        Route::CertificateDelete => delete_certificate(shared, id, param),
        Route::Instances(call) => crate::api_instances::handle(shared, id, req, call, param).await,
        Route::Operations => sync(json!(shared.ops.by_status())),
        Route::Operation => match shared.ops.get(param) {
            Some(op) => sync(json!(op)),
            None => error(404, "operation not found"),
        },
        Route::OperationWait => {
            let secs = req
                .query_param("timeout")
                .and_then(|t| t.parse::<i64>().ok())
                .filter(|t| *t >= 0)
                .map_or(3600, |t| t.min(3600));
            let timeout = Duration::from_secs(secs.unsigned_abs());
            match shared.ops.wait(param, timeout).await {
                Some(op) => sync(json!(op)),
                None => error(404, "operation not found"),
            }
        }
    }
}

/// The body of `PUT/PATCH /1.0`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerPut {
    #[serde(default)]
    config: BTreeMap<String, Value>,
}

async fn put_config(shared: &Arc<Shared>, req: &Request, replace: bool) -> Response {
    let body: ServerPut = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return error(400, &format!("invalid JSON body: {e}")),
    };
    let mut changes = BTreeMap::new();
    for (k, v) in body.config {
        let v = match v {
            Value::String(s) => s,
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => return error(400, &format!("config value of {k} must be a string")),
        };
        changes.insert(k, v);
    }
    // Hashing a passphrase is slow by design: keep it off the executor and
    // outside the settings lock.
    let prepared = smol::unblock(move || crate::settings::prepare(&changes)).await;
    let result = prepared.and_then(|p| shared.settings().apply(p, replace));
    match result {
        Ok(()) => {
            log!(Info, "server configuration changed");
            sync(json!({}))
        }
        Err(
            e @ (crate::settings::Error::UnknownKey(_)
            | crate::settings::Error::Invalid { .. }
            | crate::settings::Error::BadValue { .. }
            | crate::settings::Error::Redacted(_)),
        ) => error(400, &crate::error_chain(&e)),
        Err(e) => {
            log!(Error, "{}", crate::error_chain(&e));
            error(500, "cannot save the configuration")
        }
    }
}

fn certificates(shared: &Arc<Shared>, recursion: bool) -> Response {
    let trust = shared.trust();
    if recursion {
        let list: Vec<Value> = trust.entries().map(entry_json).collect();
        sync(Value::Array(list))
    } else {
        let urls: Vec<String> = trust
            .entries()
            .map(|e| format!("/1.0/certificates/{}", e.fingerprint))
            .collect();
        sync(json!(urls))
    }
}

/// A trust entry as LXD shows it (`restricted` is what `lxc` reads), plus
/// our role and added time.
fn entry_json(e: &crate::trust::Entry) -> Value {
    let mut v = json!(e);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("restricted".into(), json!(!e.projects.is_empty()));
    }
    v
}

fn delete_certificate(shared: &Arc<Shared>, id: &Identity, fp: &str) -> Response {
    match shared.trust().remove(fp) {
        Ok(true) => {
            log!(
                Info,
                "certificate {fp} removed from the trust store by {}",
                id.describe()
            );
            sync(json!({}))
        }
        Ok(false) => error(404, "certificate not found"),
        Err(e) => {
            log!(Error, "{}", crate::error_chain(&e));
            error(500, "cannot save the trust store")
        }
    }
}

/// The body of `POST /1.0/certificates` (LXD's `CertificatesPost`).
#[derive(Deserialize)]
struct CertificatesPost {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    certificate: String,
    #[serde(default, alias = "trust_password")]
    password: String,
}

/// A client adds its own TLS certificate with the local passphrase.
async fn add_certificate(shared: &Arc<Shared>, id: &Identity, req: &Request) -> Response {
    let body: CertificatesPost = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return error(400, &format!("invalid JSON body: {e}")),
    };
    if body.kind.as_deref().is_some_and(|k| k != "client") {
        return error(400, "only client certificates can be added");
    }
    if !body.certificate.is_empty() {
        return error(
            501,
            "adding another client's certificate is not supported yet",
        );
    }
    if body.name.len() > 64 || body.name.chars().any(char::is_control) {
        return error(400, "the name must be at most 64 printable characters");
    }
    let Some(cert) = id.cert.clone() else {
        return error(400, "no client certificate in this connection");
    };
    if id.role.is_some() {
        return sync(json!({}));
    }
    let Some(stored) = shared.settings().passphrase_hash().map(str::to_string) else {
        return error(
            403,
            "not authorized: no local passphrase is set; an administrator sets one with \
             `kvmbox config set local.passphrase`",
        );
    };
    let key = id.limiter_key();
    if let Err(wait) = shared.limiter().begin(key.clone(), Instant::now()) {
        log!(
            Warn,
            "authentication attempt from {} refused by the rate limiter",
            id.describe()
        );
        return error(
            429,
            &format!(
                "too many failed attempts: try again in {} s",
                wait.as_secs().max(1)
            ),
        );
    }
    let given = body.password;
    let ok = smol::unblock(move || crate::secret::verify(&given, &stored)).await;
    shared.limiter().finish(key, ok, Instant::now());
    if !ok {
        log!(Warn, "wrong passphrase from {}", id.describe());
        return error(403, "not authorized: wrong passphrase");
    }
    let name = if body.name.is_empty() {
        match &id.peer {
            Peer::Local(c) => format!("local-uid-{}", c.uid),
        }
    } else {
        body.name
    };
    let role = Role::Admin;
    match shared.trust().add(&cert, &name, role) {
        Ok(_) => {
            log!(
                Info,
                "certificate {} of {} trusted by passphrase",
                id.fingerprint().unwrap_or_default(),
                id.describe()
            );
            sync(json!({}))
        }
        Err(e) => {
            log!(Error, "{}", crate::error_chain(&e));
            error(500, "cannot save the trust store")
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

    #[test]
    fn envelopes() {
        let ok = body_of(&sync(json!(["/1.0"])));
        assert_eq!(ok["type"], "sync");
        assert_eq!(ok["status_code"], 200);
        assert_eq!(ok["metadata"][0], "/1.0");
        let e = error(403, "nope");
        assert_eq!(e.status, 403);
        let e = body_of(&e);
        assert_eq!(
            (e["type"].as_str(), e["error_code"].as_u64()),
            (Some("error"), Some(403))
        );
        assert_eq!(e["error"], "nope");
    }

    #[test]
    fn routing() {
        let (r, need, p) = find("DELETE", "/1.0/certificates/abc123").unwrap();
        assert_eq!(
            (r, need, p),
            (
                Route::CertificateDelete,
                Need::Role(Role::Admin),
                vec!["abc123".into()]
            )
        );
        assert_eq!(find("GET", "/1.0/").unwrap().0, Route::Server);
        assert_eq!(find("GET", "/").unwrap().0, Route::Root);
        assert_eq!(find("DELETE", "/1.0").unwrap_err().status, 405);
        assert_eq!(find("GET", "/2.0").unwrap_err().status, 404);
        assert_eq!(find("GET", "/1.0/certificates/..").unwrap_err().status, 404);
        assert_eq!(
            find("GET", "/1.0/certificates/a%2fb").unwrap_err().status,
            404
        );
        assert_eq!(
            find("GET", "/1.0/operations/x/wait").unwrap().0,
            Route::OperationWait
        );
        assert_eq!(find("GET", "/1.0//certificates").unwrap_err().status, 404);
    }

    fn shared(dir: &std::path::Path) -> Arc<Shared> {
        use crate::pki::{CertSpec, Curve, Key, Profile};
        let key = Key::generate(Curve::P256).unwrap();
        let spec = CertSpec {
            cn: "t".into(),
            sans: vec![],
            days: 1,
            profile: Profile::SelfSigned,
        };
        let cert = spec.self_signed(&key).unwrap();
        Arc::new(Shared::new(
            cert,
            dir.join("unix.socket"),
            0,
            crate::trust::TrustStore::open(&dir.join("trust.json")).unwrap(),
            crate::settings::Settings::open(&dir.join("daemon.json")).unwrap(),
        ))
    }

    fn call(
        s: &Arc<Shared>,
        role: Option<Role>,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        let id = Identity {
            peer: Peer::Local(PeerCred {
                pid: 1,
                uid: 1000,
                gid: 1000,
                groups: Some(vec![]),
            }),
            cert: None,
            role,
        };
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let req = Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        };
        let resp = smol::block_on(handle(s, &id, &req));
        (resp.status, body_of(&resp))
    }

    fn body_of(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn roles_are_enforced_per_route() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        let patch = r#"{"config": {}}"#;
        // Untrusted: discovery only, and the hint everywhere else.
        assert_eq!(call(&s, None, "GET", "/", "").0, 200);
        let (code, v) = call(&s, None, "GET", "/1.0", "");
        assert_eq!(
            (code, v["metadata"]["auth"].as_str()),
            (200, Some("untrusted"))
        );
        assert!(v["metadata"].get("environment").is_none());
        let (code, v) = call(&s, None, "GET", "/1.0/certificates", "");
        assert_eq!((code, v["error"].as_str()), (403, Some(UNTRUSTED_HINT)));
        // An auditor reads but does not configure.
        assert_eq!(
            call(
                &s,
                Some(Role::Auditor),
                "GET",
                "/1.0/certificates?recursion=1",
                ""
            )
            .0,
            200
        );
        assert_eq!(
            call(&s, Some(Role::Auditor), "GET", "/1.0/instances", "").0,
            200
        );
        let (code, v) = call(&s, Some(Role::Auditor), "PATCH", "/1.0", patch);
        assert_eq!(code, 403);
        assert!(v["error"].as_str().unwrap().contains("admin role"), "{v}");
        assert_eq!(
            call(
                &s,
                Some(Role::Operator),
                "DELETE",
                "/1.0/certificates/ab",
                ""
            )
            .0,
            403
        );
        // An admin does.
        assert_eq!(call(&s, Some(Role::Admin), "PATCH", "/1.0", patch).0, 200);
        assert_eq!(
            call(&s, Some(Role::Admin), "DELETE", "/1.0/certificates/ab", "").0,
            404
        );
        let (code, v) = call(&s, Some(Role::Admin), "GET", "/1.0", "");
        assert_eq!(
            (code, v["metadata"]["auth"].as_str()),
            (200, Some("trusted"))
        );
        assert_eq!(v["metadata"]["environment"]["server"], "kvmbox");
        assert_eq!(
            call(&s, Some(Role::Admin), "GET", "/1.0/operations/nope", "").0,
            404
        );
        assert_eq!(
            call(&s, Some(Role::Admin), "GET", "/1.0/operations", "").0,
            200
        );
    }

    #[test]
    fn self_add_needs_a_certificate_and_a_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        let (code, _) = call(&s, None, "POST", "/1.0/certificates", "{oops");
        assert_eq!(code, 400);
        let (code, v) = call(
            &s,
            None,
            "POST",
            "/1.0/certificates",
            r#"{"type": "metrics"}"#,
        );
        assert_eq!(code, 400, "{v}");
        let (code, _) = call(
            &s,
            None,
            "POST",
            "/1.0/certificates",
            r#"{"password": "x"}"#,
        );
        assert_eq!(code, 400, "no client certificate on this connection");
    }

    #[test]
    fn instance_routes_need_user_for_lifecycle_and_operator_for_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        let (a, u, o) = (Some(Role::Auditor), Some(Role::User), Some(Role::Operator));
        let start = r#"{"action": "start"}"#;
        assert_eq!(call(&s, a, "GET", "/1.0/instances", "").0, 200);
        assert_eq!(call(&s, a, "GET", "/1.0/instances/vm1", "").0, 404);
        assert_eq!(call(&s, a, "PUT", "/1.0/instances/vm1/state", start).0, 403);
        assert_eq!(call(&s, u, "PUT", "/1.0/instances/vm1/state", start).0, 404);
        assert_eq!(call(&s, a, "GET", "/1.0/instances/vm1/console", "").0, 403);
        assert_eq!(call(&s, u, "GET", "/1.0/instances/vm1/console", "").0, 404);
        for (m, p) in [
            ("POST", "/1.0/instances"),
            ("PUT", "/1.0/instances/vm1"),
            ("PATCH", "/1.0/instances/vm1"),
            ("DELETE", "/1.0/instances/vm1"),
            ("POST", "/1.0/images"),
        ] {
            assert_eq!(call(&s, u, m, p, "{}").0, 403, "{m} {p}");
            assert_ne!(call(&s, o, m, p, "{}").0, 403, "{m} {p}");
        }
        let (code, v) = call(&s, u, "PUT", "/1.0/instances/vm1/state", "{oops");
        assert_eq!(code, 400, "{v}");
    }

    #[test]
    fn every_route_but_discovery_and_self_add_needs_a_role() {
        for (m, p, _, need) in ROUTES {
            let open = matches!(
                (*m, *p),
                ("GET", "/") | ("GET", "/1.0") | ("POST", "/1.0/certificates")
            );
            assert_eq!(*need == Need::Anyone, open, "{m} {p}");
        }
    }
}
