//! The REST API's map: LXD's `/1.0` layout as a table in which every route
//! names the least role it needs and where it acts, and the one function
//! that looks a request up, has it authorized, and hands it to its handler.
//! Reference: <https://documentation.ubuntu.com/lxd/en/latest/rest-api/>.

use std::sync::Arc;

use serde_json::json;

use crate::http::{Request, Response};
use crate::server::auth::{authorize, project, Identity, Need, Scope};
use crate::server::handlers::discovery::{self, Kind};
use crate::server::handlers::{self, certificates, guest, images, instances::Call};
use crate::server::reply::{error, sync};
use crate::server::state::Shared;
use crate::server::trust::Role;
use crate::wire::is_param;

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
    /// Instances: see `handlers::instances`.
    Instances(Call),
    Images,
    Image,
    ImageAdd,
    ImageDelete,
    Aliases,
    Alias,
    AliasAdd,
    AliasDelete,
    AliasRename,
    AliasPut,
    AliasPatch,
    /// The read-only resources of `handlers::discovery`.
    List(Kind),
    Get(Kind),
    /// Exec, console, files and operation websockets: see `handlers::guest`.
    Guest(guest::Call),
    /// `/1.0/events`: operation and lifecycle events, on a websocket.
    Events,
    /// Backups: routed (so roles apply) but not built yet.
    NotImplemented(&'static str),
    Operations,
    Operation,
    OperationWait,
}

/// What a route needs, by its least role (one column of the table).
const ANYONE: Need = Need::Anyone;
const AUDITOR: Need = Need::Role(Role::Auditor);
const USER: Need = Need::Role(Role::User);
const OPERATOR: Need = Need::Role(Role::Operator);
const ADMIN: Need = Need::Role(Role::Admin);
const SERVER: Scope = Scope::Server;
const PROJECT: Scope = Scope::Project;

/// Method, path pattern (`{}` is one segment), route, the least role it
/// needs, and whether it acts on the whole server or inside a project. Every
/// authorization the daemon makes starts from these two columns.
#[rustfmt::skip]
const ROUTES: &[(&str, &str, Route, Need, Scope)] = &[
    ("GET", "/", Route::Root, ANYONE, SERVER),
    ("GET", "/1.0", Route::Server, ANYONE, SERVER),
    ("PUT", "/1.0", Route::ServerPut, ADMIN, SERVER),
    ("PATCH", "/1.0", Route::ServerPatch, ADMIN, SERVER),
    ("GET", "/1.0/certificates", Route::Certificates, AUDITOR, SERVER),
    ("POST", "/1.0/certificates", Route::CertificateAdd, ANYONE, SERVER),
    ("GET", "/1.0/certificates/{}", Route::Certificate, AUDITOR, SERVER),
    ("DELETE", "/1.0/certificates/{}", Route::CertificateDelete, ADMIN, SERVER),
    ("PUT", "/1.0/certificates/{}", Route::CertificateUpdate, ADMIN, SERVER),
    ("PATCH", "/1.0/certificates/{}", Route::CertificateUpdate, ADMIN, SERVER),
    ("GET", "/1.0/instances", Route::Instances(Call::List), AUDITOR, PROJECT),
    ("POST", "/1.0/instances", Route::Instances(Call::Create), OPERATOR, PROJECT),
    ("GET", "/1.0/instances/{}", Route::Instances(Call::Get), AUDITOR, PROJECT),
    ("PUT", "/1.0/instances/{}", Route::Instances(Call::Put), OPERATOR, PROJECT),
    ("PATCH", "/1.0/instances/{}", Route::Instances(Call::Patch), OPERATOR, PROJECT),
    ("DELETE", "/1.0/instances/{}", Route::Instances(Call::Delete), OPERATOR, PROJECT),
    ("GET", "/1.0/instances/{}/state", Route::Instances(Call::State), AUDITOR, PROJECT),
    ("PUT", "/1.0/instances/{}/state", Route::Instances(Call::StatePut), USER, PROJECT),
    ("GET", "/1.0/instances/{}/snapshots", Route::Instances(Call::Snapshots), AUDITOR, PROJECT),
    ("POST", "/1.0/instances/{}/snapshots", Route::Instances(Call::SnapshotAdd), USER, PROJECT),
    ("GET", "/1.0/instances/{}/snapshots/{}", Route::Instances(Call::Snapshot), AUDITOR, PROJECT),
    ("POST", "/1.0/instances/{}/snapshots/{}", Route::Instances(Call::SnapshotRename), USER, PROJECT),
    ("DELETE", "/1.0/instances/{}/snapshots/{}", Route::Instances(Call::SnapshotDelete), USER, PROJECT),
    ("GET", "/1.0/instances/{}/backups", Route::Instances(Call::Backups), AUDITOR, PROJECT),
    ("POST", "/1.0/instances/{}/backups", Route::NotImplemented("backups"), USER, PROJECT),
    ("GET", "/1.0/images", Route::Images, AUDITOR, PROJECT),
    ("POST", "/1.0/images", Route::ImageAdd, OPERATOR, PROJECT),
    // Before `/1.0/images/{}`, which would take `aliases` for a fingerprint.
    ("GET", "/1.0/images/aliases", Route::Aliases, AUDITOR, PROJECT),
    ("POST", "/1.0/images/aliases", Route::AliasAdd, OPERATOR, PROJECT),
    ("GET", "/1.0/images/aliases/{}", Route::Alias, AUDITOR, PROJECT),
    ("DELETE", "/1.0/images/aliases/{}", Route::AliasDelete, OPERATOR, PROJECT),
    ("POST", "/1.0/images/aliases/{}", Route::AliasRename, OPERATOR, PROJECT),
    ("PUT", "/1.0/images/aliases/{}", Route::AliasPut, OPERATOR, PROJECT),
    ("PATCH", "/1.0/images/aliases/{}", Route::AliasPatch, OPERATOR, PROJECT),
    ("GET", "/1.0/images/{}", Route::Image, AUDITOR, PROJECT),
    ("DELETE", "/1.0/images/{}", Route::ImageDelete, OPERATOR, PROJECT),
    ("GET", "/1.0/profiles", Route::List(Kind::Profiles), AUDITOR, PROJECT),
    ("GET", "/1.0/profiles/{}", Route::Get(Kind::Profiles), AUDITOR, PROJECT),
    ("GET", "/1.0/projects", Route::List(Kind::Projects), AUDITOR, PROJECT),
    ("GET", "/1.0/projects/{}", Route::Get(Kind::Projects), AUDITOR, PROJECT),
    ("GET", "/1.0/storage-pools", Route::List(Kind::StoragePools), AUDITOR, SERVER),
    ("GET", "/1.0/storage-pools/{}", Route::Get(Kind::StoragePools), AUDITOR, SERVER),
    ("GET", "/1.0/networks", Route::List(Kind::Networks), AUDITOR, PROJECT),
    ("GET", "/1.0/networks/{}", Route::Get(Kind::Networks), AUDITOR, PROJECT),
    // Getting into a running instance: exec, console, files, and where the
    // clients of their operations connect. An auditor never may.
    ("POST", "/1.0/instances/{}/exec", Route::Guest(guest::Call::Exec), USER, PROJECT),
    ("POST", "/1.0/instances/{}/console", Route::Guest(guest::Call::Console), USER, PROJECT),
    ("GET", "/1.0/instances/{}/console", Route::Guest(guest::Call::ConsoleLog), USER, PROJECT),
    ("DELETE", "/1.0/instances/{}/console", Route::Guest(guest::Call::ConsoleClear), USER, PROJECT),
    ("GET", "/1.0/instances/{}/files", Route::Guest(guest::Call::FileGet), USER, PROJECT),
    ("POST", "/1.0/instances/{}/files", Route::Guest(guest::Call::FilePost), USER, PROJECT),
    ("DELETE", "/1.0/instances/{}/files", Route::Guest(guest::Call::FileDelete), USER, PROJECT),
    ("GET", "/1.0/instances/{}/logs/exec-output", Route::Guest(guest::Call::Outputs), USER, PROJECT),
    ("GET", "/1.0/instances/{}/logs/exec-output/{}", Route::Guest(guest::Call::Output), USER, PROJECT),
    ("DELETE", "/1.0/instances/{}/logs/exec-output/{}", Route::Guest(guest::Call::OutputDelete), USER, PROJECT),
    ("GET", "/1.0/operations/{}/websocket", Route::Guest(guest::Call::Websocket), USER, PROJECT),
    ("GET", "/1.0/events", Route::Events, AUDITOR, PROJECT),
    ("GET", "/1.0/operations", Route::Operations, AUDITOR, PROJECT),
    ("GET", "/1.0/operations/{}", Route::Operation, AUDITOR, PROJECT),
    ("GET", "/1.0/operations/{}/wait", Route::OperationWait, AUDITOR, PROJECT),
];

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

/// LXD's older name for the instances endpoints: every call under it is
/// the same call under `/1.0/instances`.
const CONTAINERS: &str = "/1.0/containers";

fn find(method: &str, path: &str) -> Result<(Route, Need, Scope, Vec<String>), Response> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let renamed;
    let path = match path.strip_prefix(CONTAINERS) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            renamed = format!("{}{rest}", crate::wire::path::INSTANCES);
            renamed.as_str()
        }
        _ => path,
    };
    let mut path_known = false;
    for (m, pattern, route, need, scope) in ROUTES {
        if let Some(params) = matches(pattern, path) {
            path_known = true;
            if *m == method {
                return Ok((*route, *need, *scope, params));
            }
        }
    }
    Err(if path_known {
        error(405, "method not allowed")
    } else {
        error(404, "not found")
    })
}

/// Whether the request `head` opens is an image upload, whose body the
/// images handler streams to the store rather than have it read into
/// memory: `POST /1.0/images` of the types `lxc image import` sends
/// (`application/octet-stream`, `multipart/form-data`). Anything else is
/// read as JSON, as before (curl's default form type among them).
pub(crate) fn streams(head: &crate::http::Head) -> bool {
    let media = head
        .content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    head.method == "POST"
        && head.path.trim_end_matches('/') == "/1.0/images"
        && matches!(
            media.as_deref(),
            Some("application/octet-stream" | "multipart/form-data")
        )
}

/// Answers an image upload ([`streams`]): authorized on its head, before
/// any of its body is read.
pub(crate) async fn upload(
    shared: &Arc<Shared>,
    id: &Identity,
    req: &Request,
    body: &mut crate::http::Body<'_, crate::http::Stream<'_>>,
    timeout: std::time::Duration,
) -> Response {
    let (need, scope) = match find(&req.method, &req.path) {
        Ok((Route::ImageAdd, need, scope, _)) => (need, scope),
        Ok(_) => return error(404, "not found"),
        Err(resp) => return resp,
    };
    if let Err(resp) = project(req).and_then(|()| authorize(id, need, scope)) {
        return resp;
    }
    images::upload(shared, req, body, timeout).await
}

/// Answers one request.
pub(crate) async fn handle(shared: &Arc<Shared>, id: &Identity, req: &Request) -> Response {
    let (route, need, scope, params) = match find(&req.method, &req.path) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(resp) = project(req).and_then(|()| authorize(id, need, scope)) {
        return resp;
    }
    let param = params.first().map(String::as_str).unwrap_or_default();
    let sub = params.get(1).map(String::as_str).unwrap_or_default();
    let recursion = req.query_param("recursion").is_some_and(|r| r != "0");
    match route {
        Route::Root => sync(json!(["/1.0"])),
        Route::Server => sync(handlers::server::get(shared, id)),
        Route::ServerPut => handlers::server::put(shared, req, true).await,
        Route::ServerPatch => handlers::server::put(shared, req, false).await,
        Route::Certificates => certificates::list(shared, id, recursion),
        Route::CertificateAdd => certificates::add(shared, id, req).await,
        Route::Certificate => certificates::get(shared, id, param),
        Route::CertificateDelete => certificates::delete(shared, id, param),
        Route::CertificateUpdate => certificates::update(shared, id, param, req),
        Route::Instances(call) => {
            handlers::instances::handle(shared, id, req, call, param, sub).await
        }
        Route::Images => images::list(shared, recursion),
        Route::Image => images::get(shared, param),
        Route::ImageAdd => images::add(shared, id, req).await,
        Route::ImageDelete => images::delete(shared, param),
        Route::Aliases => images::aliases(shared, recursion),
        Route::Alias => images::alias(shared, param),
        Route::AliasAdd => images::alias_add(shared, req),
        Route::AliasDelete => images::alias_delete(shared, param),
        Route::AliasRename => images::alias_rename(shared, param, req),
        Route::AliasPut => images::alias_update(shared, param, req, true),
        Route::AliasPatch => images::alias_update(shared, param, req, false),
        Route::List(kind) => discovery::list(shared, kind, recursion),
        Route::Get(kind) => discovery::get(shared, kind, param),
        Route::Guest(call) => guest::handle(shared, req, call, param, sub).await,
        Route::Events => handlers::operations::events(req),
        Route::NotImplemented(what) => error(501, &format!("{what} are not implemented yet")),
        Route::Operations => handlers::operations::list(shared),
        Route::Operation => handlers::operations::get(shared, param),
        Route::OperationWait => handlers::operations::wait(shared, req, param).await,
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
    use crate::server::auth::{Peer, UNTRUSTED_HINT};
    use crate::sys::PeerCred;
    use serde_json::Value;

    #[test]
    fn routing() {
        let (r, need, scope, p) = find("DELETE", "/1.0/certificates/abc123").unwrap();
        assert_eq!(
            (r, need, scope, p),
            (
                Route::CertificateDelete,
                Need::Role(Role::Admin),
                Scope::Server,
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
            content_type: None,
            body: body.as_bytes().to_vec(),
            keep_alive: true,
            websocket_key: None,
            lxd_headers: Vec::new(),
        };
        let resp = smol::block_on(handle(s, &id, &req));
        (resp.status, body_of(&resp))
    }

    #[test]
    fn uploads_are_told_by_their_head_and_authorized_before_their_body() {
        let head = |wire: &str| {
            let mut src = smol::io::Cursor::new(wire.as_bytes().to_vec());
            let mut buf = Vec::new();
            smol::block_on(crate::http::read_head(
                &mut src,
                &mut buf,
                Default::default(),
            ))
            .unwrap()
        };
        let up = "POST /1.0/images HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n\r\n";
        assert!(streams(&head(up)));
        assert!(streams(&head(&up.replace("/images", "/images/"))));
        let multipart = "Content-Type: Multipart/Form-Data; boundary=x\r\n";
        let multipart = up.replace("Content-Type: application/octet-stream\r\n", multipart);
        assert!(streams(&head(&multipart)));
        for other in [
            up.replace("octet-stream", "json"),
            up.replace("octet-stream", "x-www-form-urlencoded"),
            up.replace("octet-stream", "x-tar"),
            up.replace("Content-Type: application/octet-stream\r\n", ""),
            up.replace("POST", "PUT"),
            up.replace("/1.0/images", "/1.0/images/aliases"),
        ] {
            assert!(!streams(&head(&other)), "{other:?}");
        }
        // Not trusted, or only an auditor: refused before a byte of the
        // body is read.
        let dir = tempfile::tempdir().unwrap();
        let s = shared(dir.path());
        for role in [None, Some(Role::Auditor)] {
            let id = Identity {
                peer: Peer::Local(PeerCred {
                    pid: 1,
                    uid: 1000,
                    gid: 1000,
                    groups: Some(vec![]),
                }),
                cert: None,
                role,
                projects: Vec::new(),
                refused: None,
            };
            let (req, framing) = head(up).split();
            let mut src = smol::io::Cursor::new(b"data".to_vec());
            let stream: &mut crate::http::Stream<'_> = &mut src;
            let mut buf = Vec::new();
            let mut body = crate::http::Body::new(stream, &mut buf, framing, Default::default());
            let resp = smol::block_on(upload(
                &s,
                &id,
                &req,
                &mut body,
                std::time::Duration::from_secs(1),
            ));
            assert!(resp.status == 403, "{role:?}: {}", resp.status);
            assert_eq!(body.read(), 0);
        }
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
        // Getting into an instance: never an auditor, a user and up may.
        let exec = r#"{"command": ["true"], "wait-for-websocket": true}"#;
        for (m, p, b) in [
            ("POST", "/1.0/instances/vm1/exec", exec),
            ("POST", "/1.0/containers/vm1/exec", exec),
            ("POST", "/1.0/instances/vm1/console", "{}"),
            ("DELETE", "/1.0/instances/vm1/console", ""),
            ("GET", "/1.0/instances/vm1/files?path=/etc/hosts", ""),
            ("POST", "/1.0/instances/vm1/files?path=/tmp/x", "data"),
        ] {
            let (code, v) = call(&s, a, m, p, b);
            assert_eq!(code, 403, "{m} {p}: {v}");
            assert!(v["error"].as_str().unwrap().contains("user role"), "{v}");
            for r in [u, o, Some(Role::Admin)] {
                assert_eq!(call(&s, r, m, p, b).0, 404, "{r:?} {m} {p}");
            }
        }
        assert_eq!(
            call(&s, a, "GET", "/1.0/operations/x/websocket?secret=y", "").0,
            403
        );
        assert_eq!(
            call(&s, u, "GET", "/1.0/operations/x/websocket?secret=y", "").0,
            400
        );
        // A user restricted to projects other than default gets nowhere.
        let (code, _) = call_in(&s, u, &["p1"], "POST", "/1.0/instances/vm1/exec", exec);
        assert_eq!(code, 403);
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
        assert_eq!(call(&s, a, "POST", "/1.0/certificates", ok).0, 202);
    }

    #[test]
    fn every_route_but_discovery_and_self_add_needs_a_role() {
        for (m, p, _, need, _) in ROUTES {
            let open = matches!(
                (*m, *p),
                ("GET", "/") | ("GET", "/1.0") | ("POST", "/1.0/certificates")
            );
            assert_eq!(*need == Need::Anyone, open, "{m} {p}");
        }
    }
}
