//! The REST API: LXD's `/1.0` layout and response envelope, a route table in
//! which every route names the least role it needs, and the handlers.
//!
//! Every request carries an [`Identity`]: who the peer is (Unix socket
//! credentials now, a TCP address with the remote listener later), the
//! fingerprint of its TLS client certificate, and the role the trust store
//! gives it, if any. Reference: <https://documentation.ubuntu.com/lxd/en/latest/rest-api/>.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::log::log;
use crate::pki::Cert;
use crate::server::handlers::certificates;
use crate::server::handlers::instances::Call;
use crate::server::trust::{Role, DEFAULT_PROJECT};
use crate::server::Shared;
use crate::sys::PeerCred;

/// Who is calling.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub peer: Peer,
    /// The TLS client certificate (always present on the Unix socket, whose
    /// handshake requires one; optional over TCP).
    pub cert: Option<Cert>,
    /// `None` means untrusted.
    pub role: Option<Role>,
    /// Projects the role applies to; empty means all. Only `default`
    /// exists, so a list without it grants nothing inside a project.
    pub projects: Vec<String>,
    /// Why a certificate that could have been trusted was not (in PKI mode:
    /// no `core.pki_default_role`, an unusable CRL…): said instead of the
    /// usual hint. Only with `role: None`.
    pub refused: Option<String>,
}

/// Where the call comes from.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// The Unix socket, with the kernel's view of the caller.
    Local(PeerCred),
    /// The TCP listener, with the client's address.
    Remote(std::net::SocketAddr),
}

impl Identity {
    /// The key failed passphrase attempts are counted under: a uid (a
    /// subordinate one as its owner's), or a network peer as connection
    /// slots count it (an IPv6 peer by its /64).
    pub(crate) fn limiter_key(&self) -> String {
        match &self.peer {
            Peer::Local(c) => format!("uid:{}", crate::sys::subuid_owner(c.uid)),
            Peer::Remote(a) => format!("ip:{}", crate::server::admission::network_peer(a.ip())),
        }
    }

    /// What an untrusted caller is told: why, or how to become trusted from
    /// where it is.
    pub(crate) fn untrusted_hint(&self) -> &str {
        match (&self.refused, &self.peer) {
            (Some(why), _) => why,
            (None, Peer::Local(_)) => UNTRUSTED_HINT,
            (None, Peer::Remote(_)) => REMOTE_UNTRUSTED_HINT,
        }
    }

    /// Whether the certificate is limited to a list of projects.
    pub(crate) fn restricted(&self) -> bool {
        !self.projects.is_empty()
    }

    pub(crate) fn describe(&self) -> String {
        match &self.peer {
            Peer::Local(c) => format!("uid {} (pid {})", c.uid, c.pid),
            Peer::Remote(a) => format!("{a}"),
        }
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
    CertificateUpdate,
    /// Instances and images: see `handlers::instances`.
    Instances(Call),
    /// An instance call whose operation has ended before the answer: lxc 5.0
    /// waits on operations through the `/1.0/events` websocket, which kvmbox
    /// does not serve, unless the operation it is handed is already final.
    Settled(Call),
    /// `/1.0/events`: the websocket is accepted so that LXD clients can wait
    /// on operations, but kvmbox emits no events on it yet.
    Events,
    /// Snapshots and image deletion: routed (so roles apply) but not built yet.
    NotImplemented(&'static str),
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
        "PUT",
        "/1.0/certificates/{}",
        Route::CertificateUpdate,
        Need::Role(Role::Admin),
    ),
    (
        "PATCH",
        "/1.0/certificates/{}",
        Route::CertificateUpdate,
        Need::Role(Role::Admin),
    ),
    (
        "GET",
        "/1.0/instances",
        Route::Instances(Call::List),
        Need::Role(Role::Auditor),
    ),
    // lxc 5.0 asks for containers: the same instances under LXD's old name.
    (
        "GET",
        "/1.0/containers",
        Route::Instances(Call::List),
        Need::Role(Role::Auditor),
    ),
    (
        "GET",
        "/1.0/containers/{}",
        Route::Instances(Call::Get),
        Need::Role(Role::Auditor),
    ),
    (
        "GET",
        "/1.0/containers/{}/state",
        Route::Instances(Call::State),
        Need::Role(Role::Auditor),
    ),
    (
        "PUT",
        "/1.0/containers/{}/state",
        Route::Settled(Call::StatePut),
        Need::Role(Role::User),
    ),
    (
        "GET",
        "/1.0/instances/{}/snapshots",
        Route::Instances(Call::Snapshots),
        Need::Role(Role::Auditor),
    ),
    (
        "GET",
        "/1.0/containers/{}/snapshots",
        Route::Instances(Call::Snapshots),
        Need::Role(Role::Auditor),
    ),
    (
        "GET",
        "/1.0/instances/{}/backups",
        Route::Instances(Call::Snapshots),
        Need::Role(Role::Auditor),
    ),
    (
        "GET",
        "/1.0/containers/{}/backups",
        Route::Instances(Call::Snapshots),
        Need::Role(Role::Auditor),
    ),
    (
        "POST",
        "/1.0/instances/{}/backups",
        Route::NotImplemented("backups"),
        Need::Role(Role::User),
    ),
    (
        "POST",
        "/1.0/instances/{}/snapshots",
        Route::NotImplemented("snapshots"),
        Need::Role(Role::User),
    ),
    (
        "DELETE",
        "/1.0/images/{}",
        Route::NotImplemented("deleting images"),
        Need::Role(Role::Operator),
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
        "/1.0/events",
        Route::Events,
        Need::Role(Role::Auditor),
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

/// What a remote client that is not (or no longer) trusted is told.
pub const REMOTE_UNTRUSTED_HINT: &str = "not authorized: this client is not trusted by the \
     server (its certificate was never added, or was removed); ask an administrator for a \
     token (`kvmbox config trust add --name NAME`) and run `kvmbox remote add` again";

/// Whether a route acts inside a project (`?project=`) rather than on the
/// whole server. No wildcard: a new route must be sorted here.
fn project_scoped(route: Route) -> bool {
    match route {
        Route::Root
        | Route::Server
        | Route::ServerPut
        | Route::ServerPatch
        | Route::Certificates
        | Route::CertificateAdd
        | Route::Certificate
        | Route::CertificateDelete
        | Route::CertificateUpdate => false,
        Route::Instances(_)
        | Route::Settled(_)
        | Route::Events
        | Route::NotImplemented(_)
        | Route::Operations
        | Route::Operation
        | Route::OperationWait => true,
    }
}

/// The project a request names: absent or empty is `default` (as in LXD;
/// Ansible always sends `project=`), and that is the only one there is.
fn project(req: &Request) -> Result<(), Response> {
    let name = req.query_param("project").unwrap_or_default();
    if name.is_empty() || name == DEFAULT_PROJECT {
        return Ok(());
    }
    if !is_param(name) {
        return Err(error(400, "invalid project name"));
    }
    Err(error(
        404,
        &crate::server::trust::Error::UnknownProject(name.to_string()).to_string(),
    ))
}

/// Checks `id` against what the route needs: the role, then for a
/// certificate restricted to projects, that its list names `default` on
/// project routes, and that it does not change the server (a client limited
/// to some projects must not reconfigure the server or the trust store
/// they all share).
fn authorize(id: &Identity, need: Need, route: Route) -> Result<(), Response> {
    let Need::Role(min) = need else {
        return Ok(());
    };
    let Some(role) = id.role else {
        return Err(error(403, id.untrusted_hint()));
    };
    if role < min {
        return Err(error(
            403,
            &format!("not authorized: this needs the {min:?} role").to_lowercase(),
        ));
    }
    if !id.restricted() {
        return Ok(());
    }
    if project_scoped(route) {
        if !id.projects.iter().any(|p| p == DEFAULT_PROJECT) {
            return Err(error(
                403,
                &format!(
                    "not authorized: this certificate is restricted to projects {:?}, and \
                     kvmbox has only the default project",
                    id.projects
                ),
            ));
        }
    } else if min > Role::Auditor {
        return Err(error(
            403,
            "not authorized: a certificate restricted to projects cannot change the server",
        ));
    }
    Ok(())
}

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
pub(crate) fn is_param(seg: &str) -> bool {
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
    sync_json(&serde_json::to_vec(&metadata).unwrap_or_default())
}

/// [`sync`] with metadata that is JSON already (a list served from memory).
pub(crate) fn sync_json(metadata: &[u8]) -> Response {
    const HEAD: &str = r#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":"#;
    let mut body = Vec::with_capacity(HEAD.len() + metadata.len() + 1);
    body.extend_from_slice(HEAD.as_bytes());
    body.extend_from_slice(metadata);
    body.push(b'}');
    Response { status: 200, body }
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
pub(crate) fn operation(op: &crate::server::operations::Operation) -> Response {
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
    if let Err(resp) = project(req).and_then(|()| authorize(id, need, route)) {
        return resp;
    }
    let param = params.first().map(String::as_str).unwrap_or_default();
    let recursion = req.query_param("recursion").is_some_and(|r| r != "0");
    match route {
        Route::Root => sync(json!(["/1.0"])),
        Route::Server => sync(shared.server_info(id)),
        Route::ServerPut => put_config(shared, req, true).await,
        Route::ServerPatch => put_config(shared, req, false).await,
        Route::Certificates => certificates::list(shared, id, recursion),
        Route::CertificateAdd => certificates::add(shared, id, req).await,
        Route::Certificate => certificates::get(shared, id, param),
        Route::CertificateDelete => certificates::delete(shared, id, param),
        Route::CertificateUpdate => certificates::update(shared, id, param, req),
        Route::Instances(call) => {
            crate::server::handlers::instances::handle(shared, id, req, call, param).await
        }
        Route::Settled(call) => {
            let resp =
                crate::server::handlers::instances::handle(shared, id, req, call, param).await;
            settled(shared, resp).await
        }
        Route::Events => match &req.websocket_key {
            Some(key) => Response::websocket_accept(key),
            None => error(400, "/1.0/events is served as a websocket only"),
        },
        Route::NotImplemented(what) => error(501, &format!("{what} are not implemented yet")),
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

/// Waits for the operation an async response started and answers with it in
/// its final state; any other response passes through.
async fn settled(shared: &Arc<Shared>, resp: Response) -> Response {
    if resp.status != 202 {
        return resp;
    }
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    let Some(op_id) = body.pointer("/metadata/id").and_then(Value::as_str) else {
        return resp;
    };
    match shared.ops.wait(op_id, Duration::from_secs(3600)).await {
        Some(op) => operation(&op),
        None => resp,
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
    let prepared = smol::unblock(move || crate::server::settings::prepare(&changes)).await;
    let result = prepared.and_then(|p| shared.settings().apply(p, replace));
    match result {
        Ok(()) => {
            log!(Info, "server configuration changed");
            shared.notify_config();
            sync(json!({}))
        }
        Err(
            e @ (crate::server::settings::Error::UnknownKey(_)
            | crate::server::settings::Error::Invalid { .. }
            | crate::server::settings::Error::BadValue { .. }
            | crate::server::settings::Error::IdsInUse { .. }
            | crate::server::settings::Error::Redacted(_)
            | crate::server::settings::Error::BadAddress(_)),
        ) => error(400, &crate::error_chain(&e)),
        Err(e) => {
            log!(Error, "{}", crate::error_chain(&e));
            error(500, "cannot save the configuration")
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
            crate::server::trust::TrustStore::open(&dir.join("trust.json")).unwrap(),
            crate::server::settings::Settings::open(&dir.join("daemon.json")).unwrap(),
            crate::server::tokens::Tokens::open(&dir.join("tokens.json")).unwrap(),
            None,
        ))
    }

    fn call(
        s: &Arc<Shared>,
        role: Option<Role>,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        call_in(s, role, &[], method, path, body)
    }

    /// [`call`] by a certificate restricted to `projects`.
    fn call_in(
        s: &Arc<Shared>,
        role: Option<Role>,
        projects: &[&str],
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
            projects: projects.iter().map(|p| p.to_string()).collect(),
            refused: None,
        };
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let req = Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
            websocket_key: None,
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
    fn only_the_default_project_exists_and_restrictions_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        let a = Some(Role::Admin);
        for q in ["", "?project=", "?project=default", "?recursion=1&project="] {
            let (code, v) = call(&s, a, "GET", &format!("/1.0/instances{q}"), "");
            assert_eq!(code, 200, "{q}: {v}");
        }
        for path in [
            "/1.0/instances?project=p1",
            "/1.0/operations?project=p1",
            "/1.0/certificates?project=p1",
            "/1.0?project=p1",
        ] {
            let (code, v) = call(&s, a, "GET", path, "");
            assert_eq!(code, 404, "{path}");
            assert_eq!(
                v["error"],
                "project \"p1\" not found: kvmbox has only the default project"
            );
        }
        assert_eq!(call(&s, a, "GET", "/1.0/instances?project=../x", "").0, 400);
        // Restricted to p1 (a list from before only default existed): no
        // project route, whatever it asks for.
        let o = Some(Role::Operator);
        for (m, p) in [
            ("GET", "/1.0/instances"),
            ("GET", "/1.0/containers?project="),
            ("DELETE", "/1.0/instances/vm1"),
            ("GET", "/1.0/images"),
            ("GET", "/1.0/operations"),
            ("GET", "/1.0/operations/x/wait"),
            ("GET", "/1.0/events"),
        ] {
            let (code, v) = call_in(&s, o, &["p1"], m, p, "");
            assert_eq!(code, 403, "{m} {p}");
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("only the default project"),
                "{v}"
            );
        }
        // Restricted to default: acts there, never on the server.
        assert_eq!(
            call_in(&s, o, &["default"], "GET", "/1.0/instances", "").0,
            200
        );
        assert_eq!(
            call_in(&s, a, &["default"], "PATCH", "/1.0", r#"{"config": {}}"#).0,
            403
        );
        // Only default can be granted.
        for body in [
            r#"{"token": true, "name": "n", "projects": ["p1"]}"#,
            r#"{"token": true, "name": "n", "projects": ["default", "p2"]}"#,
        ] {
            let (code, v) = call(&s, a, "POST", "/1.0/certificates", body);
            assert_eq!(code, 400, "{body}");
            assert!(v["error"].as_str().unwrap().contains("only the default"));
        }
        let ok = r#"{"token": true, "name": "n", "projects": ["default"]}"#;
        assert_eq!(call(&s, a, "POST", "/1.0/certificates", ok).0, 200);
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

    #[test]
    fn guesses_count_per_uid_ipv4_address_and_ipv6_64() {
        let key = |peer| {
            Identity {
                peer,
                cert: None,
                role: None,
                projects: Vec::new(),
                refused: None,
            }
            .limiter_key()
        };
        let remote = |a: &str| key(Peer::Remote(a.parse().unwrap()));
        assert_eq!(
            remote("[2001:db8:0:1::5]:40000"),
            remote("[2001:db8:0:1:ffff::9]:40001")
        );
        assert_ne!(
            remote("[2001:db8:0:1::5]:40000"),
            remote("[2001:db8:0:2::5]:40000")
        );
        assert_eq!(remote("192.0.2.1:1"), remote("192.0.2.1:2"));
        assert_ne!(remote("192.0.2.1:1"), remote("192.0.2.2:1"));
        let local = key(Peer::Local(crate::sys::PeerCred {
            pid: 1,
            uid: 0,
            gid: 0,
            groups: None,
        }));
        assert_ne!(local, remote("0.0.0.0:1"));
    }
}
