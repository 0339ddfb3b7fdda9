//! `/1.0/certificates`: the trust store over the API (LXD's shape, plus a
//! role per certificate), and the one call an untrusted client may make to
//! become trusted: by the local passphrase on the Unix socket, by
//! `core.trust_password` over TCP, or anywhere by a one-time token.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::clock::now;
use crate::clock::rfc3339;
use crate::http::{Request, Response};
use crate::log::log;
use crate::pki::Cert;
use crate::server::auth::{Identity, Peer};
use crate::server::reply::{body, error, fail, operation, sync};
use crate::server::state::Shared;
use crate::server::tokens::{JoinToken, DEFAULT_TTL};
use crate::server::trust::{Role, TrustStore};
use crate::wire::{path, CertificatePut, CertificatesPost};

pub(crate) fn list(shared: &Arc<Shared>, id: &Identity, recursion: bool) -> Response {
    let trust = shared.trust();
    let entries = trust.entries().filter(|e| id.may_see(e));
    if recursion {
        let list: Vec<Value> = entries.map(entry_json).collect();
        sync(Value::Array(list))
    } else {
        let urls: Vec<String> = entries.map(|e| path::certificate(&e.fingerprint)).collect();
        sync(json!(urls))
    }
}

/// The fingerprint of the one entry `id` may see whose fingerprint starts
/// with `prefix` (LXD takes any unique prefix, such as the 12 characters
/// `lxc config trust list` shows).
fn resolve(trust: &TrustStore, id: &Identity, prefix: &str) -> Result<String, Response> {
    let mut found = trust
        .entries()
        .filter(|e| id.may_see(e) && e.fingerprint.starts_with(prefix));
    match (found.next(), found.next()) {
        (Some(e), None) if !prefix.is_empty() => Ok(e.fingerprint.clone()),
        (Some(_), Some(_)) => Err(error(
            400,
            &format!("more than one certificate's fingerprint starts with {prefix:?}"),
        )),
        _ => Err(error(404, "certificate not found")),
    }
}

pub(crate) fn get(shared: &Arc<Shared>, id: &Identity, prefix: &str) -> Response {
    let trust = shared.trust();
    match resolve(&trust, id, prefix).map(|fp| trust.get(&fp).map(entry_json)) {
        Ok(Some(e)) => sync(e),
        Ok(None) => error(404, "certificate not found"),
        Err(r) => r,
    }
}

/// A trust entry as LXD shows it (`restricted` is what `lxc` reads), plus
/// our role and added time.
fn entry_json(e: &crate::server::trust::Entry) -> Value {
    let mut v = json!(e);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("restricted".into(), json!(!e.projects.is_empty()));
    }
    v
}

pub(crate) fn delete(shared: &Arc<Shared>, id: &Identity, prefix: &str) -> Response {
    let mut trust = shared.trust();
    let fp = match resolve(&trust, id, prefix) {
        Ok(fp) => fp,
        Err(r) => return r,
    };
    match trust.remove(&fp) {
        Ok(true) => {
            log!(
                Info,
                "certificate {fp} removed from the trust store by {}",
                id.describe()
            );
            sync(json!({}))
        }
        Ok(false) => error(404, "certificate not found"),
        Err(e) => fail(&e),
    }
}

/// A project list as the API accepts it: only `default` exists, and the
/// daemon is where that is enforced, whichever client asks.
fn check_projects(projects: &[String]) -> Result<(), Response> {
    if projects.len() > 64 {
        return Err(error(400, "invalid project list"));
    }
    crate::server::trust::check_projects(projects).map_err(|e| fail(&e))
}

/// LXD's `restricted` flag against the list it comes with: restricted to
/// no project at all would read as "all projects" (an empty list), so it
/// is refused rather than widened.
fn check_restricted(restricted: Option<bool>, projects: &[String]) -> Result<(), Response> {
    if restricted == Some(true) && projects.is_empty() {
        return Err(error(
            400,
            "restricted needs at least one project (kvmbox has only \"default\"): give \
             projects, or restricted: false for all projects",
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Response> {
    if name.len() > 64 || name.chars().any(char::is_control) {
        return Err(error(
            400,
            "the name must be at most 64 printable characters",
        ));
    }
    Ok(())
}

/// PUT and PATCH alike: LXD's `lxc config trust edit` sends the whole
/// entry, and anything left out is kept rather than reset.
pub(crate) fn update(shared: &Arc<Shared>, id: &Identity, prefix: &str, req: &Request) -> Response {
    let body: CertificatePut = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut trust = shared.trust();
    let fp = match resolve(&trust, id, prefix) {
        Ok(fp) => fp,
        Err(r) => return r,
    };
    let fp = fp.as_str();
    let Some(old) = trust.get(fp).cloned() else {
        return error(404, "certificate not found");
    };
    let name = body.name.unwrap_or(old.name);
    let role = body.role.unwrap_or(old.role);
    let mut projects = body.projects.unwrap_or(old.projects);
    if body.restricted == Some(false) {
        projects.clear();
    }
    if let Err(r) = check_name(&name)
        .and_then(|()| check_projects(&projects))
        .and_then(|()| check_restricted(body.restricted, &projects))
    {
        return r;
    }
    match trust.update(fp, &name, role, &projects) {
        Ok(_) => {
            log!(
                Info,
                "certificate {fp} changed to role {role:?}, projects {projects:?} by {}",
                id.describe()
            );
            sync(json!({}))
        }
        Err(e) => fail(&e),
    }
}

/// What a removed certificate is told when it tries to add itself back.
const DENIED_SELF_ADD: &str = "not authorized: an administrator removed this certificate (or \
     another of its key) from the trust store; no password or token adds it back, only an \
     administrator can (`kvmbox config trust add`)";

pub(crate) async fn add(shared: &Arc<Shared>, id: &Identity, req: &Request) -> Response {
    let body: CertificatesPost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // lxc 5.0 sends `"type": ""` with a token: the default, a client.
    if body
        .kind
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k != "client")
    {
        return error(400, "only client certificates can be added");
    }
    let mut projects = body.projects.clone().unwrap_or_default();
    if body.restricted == Some(false) {
        projects.clear();
    }
    if let Err(r) = check_name(&body.name)
        .and_then(|()| check_projects(&projects))
        .and_then(|()| check_restricted(body.restricted, &projects))
    {
        return r;
    }
    if body.token || !body.certificate.is_empty() {
        // Both act for someone else: the administrator's business.
        if !id.admin_of_all() {
            return error(
                403,
                match id.role {
                    None => id.untrusted_hint(),
                    Some(_) => "not authorized: this needs the admin role in all projects",
                },
            );
        }
        let role = body.role.unwrap_or(Role::Admin);
        return if body.token {
            issue_token(shared, id, &body.name, role, &projects, body.expires_in)
        } else {
            add_other(shared, id, &body.certificate, &body.name, role, &projects)
        };
    }
    let Some(cert) = id.cert.clone() else {
        return error(400, "no client certificate in this connection");
    };
    if id.role.is_some() {
        return sync(json!({}));
    }
    // No secret lifts an administrator's removal: only an administrator
    // adding it again does.
    if shared.trust().is_denied(&cert) {
        log!(
            Warn,
            "{} tried to add its removed certificate {} back",
            id.describe(),
            cert.fingerprint()
        );
        return error(403, DENIED_SELF_ADD);
    }
    self_add(shared, id, &cert, body).await
}

fn issue_token(
    shared: &Arc<Shared>,
    id: &Identity,
    name: &str,
    role: Role,
    projects: &[String],
    ttl: Option<u64>,
) -> Response {
    if name.is_empty() {
        return error(400, "a token needs the name of the client it is for");
    }
    let ttl = ttl.unwrap_or(DEFAULT_TTL).clamp(1, 30 * 24 * 3600);
    let issued = shared.tokens().issue(name, role, projects, ttl, now());
    let (secret, expires) = match issued {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let token = JoinToken {
        client_name: name.to_string(),
        fingerprint: shared.fingerprint(),
        addresses: shared
            .https_address()
            .map(|a| a.to_string())
            .into_iter()
            .collect(),
        secret,
        expires_at: rfc3339(expires),
    };
    log!(
        Info,
        "token for {name:?} (role {role:?}) issued by {}, expires {}",
        id.describe(),
        token.expires_at
    );
    // An operation, as LXD's `certificate_token` has it: lxc reads the
    // token's parts (`request.name`, `secret`, `fingerprint`, `addresses`,
    // `expiresAt`) from its metadata; kvmbox's client reads `token`.
    let op = shared.ops.finished(
        "token",
        "Certificate add token",
        json!({
            "request": {"name": token.client_name, "type": "client", "projects": projects},
            "secret": token.secret,
            "expiresAt": token.expires_at,
            "token": token.encode(),
            "client_name": token.client_name,
            "fingerprint": token.fingerprint,
            "addresses": token.addresses,
            "expires_at": token.expires_at,
        }),
    );
    operation(&op)
}

fn add_other(
    shared: &Arc<Shared>,
    id: &Identity,
    text: &str,
    name: &str,
    role: Role,
    projects: &[String],
) -> Response {
    use base64::Engine;
    let cert = Cert::from_pem(text.as_bytes()).or_else(|_| {
        let der = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| ())?;
        Cert::from_der(&der).map_err(|_| ())
    });
    let Ok(cert) = cert else {
        return error(400, "the certificate is neither PEM nor base64 DER X.509");
    };
    if !cert.info().is_ok_and(|i| i.key_type.starts_with("ecdsa-")) {
        return error(400, "only EC (P-256, P-384) certificates can be trusted");
    }
    let name = if name.is_empty() {
        cert.info().map(|i| i.subject).unwrap_or_default()
    } else {
        name.to_string()
    };
    let fp = cert.fingerprint();
    if shared.trust().get(&fp).is_some() {
        return error(409, "this certificate is already trusted");
    }
    match shared.trust().add_scoped(&cert, &name, role, projects) {
        Ok(_) => {
            log!(
                Info,
                "certificate {fp} ({name}) trusted as {role:?} by {}",
                id.describe()
            );
            sync(json!({}))
        }
        Err(e) => fail(&e),
    }
}

/// What a successful secret grants.
struct Grant {
    role: Role,
    projects: Vec<String>,
    name: String,
    how: &'static str,
}

/// The caller adds its own TLS certificate with a secret; failures are
/// rate-limited per uid or source address.
async fn self_add(
    shared: &Arc<Shared>,
    id: &Identity,
    cert: &Cert,
    body: CertificatesPost,
) -> Response {
    let token_text = if body.trust_token.is_empty() {
        JoinToken::decode(&body.password).map(|t| t.secret)
    } else {
        Some(
            JoinToken::decode(&body.trust_token)
                .map(|t| t.secret)
                .unwrap_or(body.trust_token.clone()),
        )
    };
    let password = body.password.clone();
    if token_text.is_none() && password.is_empty() {
        return error(403, "not authorized: give a password or a token");
    }
    let stored = match &id.peer {
        Peer::Local(_) => shared.settings().passphrase_hash().map(str::to_string),
        Peer::Remote(_) => shared.settings().trust_password_hash().map(str::to_string),
    };
    if token_text.is_none() && stored.is_none() && matches!(id.peer, Peer::Local(_)) {
        return error(
            403,
            "not authorized: no local passphrase is set; an administrator sets one with \
             `kvmbox config set local.passphrase`",
        );
    }
    let key = id.limiter_key();
    if let Err(wait) = shared.limiter().begin(key.clone(), Instant::now()) {
        log!(
            Warn,
            "trust attempt from {} refused by the rate limiter",
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
    let grant = check_secret(shared, id, token_text, password, stored).await;
    shared
        .limiter()
        .finish(key, matches!(grant, Ok(Some(_))), Instant::now());
    let grant = match grant {
        Ok(Some(g)) => g,
        Ok(None) => {
            log!(Warn, "wrong secret from {}", id.describe());
            return error(
                403,
                match id.peer {
                    Peer::Local(_) => "not authorized: wrong passphrase",
                    Peer::Remote(_) => "not authorized: wrong password or token",
                },
            );
        }
        Err(r) => return r,
    };
    let name = if !body.name.is_empty() {
        body.name
    } else {
        grant.name
    };
    match shared
        .trust()
        .add_scoped(cert, &name, grant.role, &grant.projects)
    {
        Ok(_) => {
            log!(
                Info,
                "certificate {} of {} trusted as {:?} by {}",
                cert.fingerprint(),
                id.describe(),
                grant.role,
                grant.how
            );
            sync(json!({}))
        }
        Err(e) => fail(&e),
    }
}

async fn check_secret(
    shared: &Arc<Shared>,
    id: &Identity,
    token: Option<String>,
    password: String,
    stored: Option<String>,
) -> Result<Option<Grant>, Response> {
    let redeem = |secret: &str| -> Result<Option<Grant>, Response> {
        match shared.tokens().redeem(secret, now()) {
            Ok(Some(p)) => Ok(Some(Grant {
                role: p.role,
                projects: p.projects,
                name: p.name,
                how: "token",
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(fail(&e)),
        }
    };
    if let Some(secret) = token {
        return redeem(&secret);
    }
    let ok = match stored {
        Some(hash) => {
            let given = password.clone();
            smol::unblock(move || crate::server::secret::verify(&given, &hash)).await
        }
        None => false,
    };
    if ok {
        let (name, how) = match &id.peer {
            Peer::Local(c) => (format!("local-uid-{}", c.uid), "passphrase"),
            Peer::Remote(a) => (format!("remote-{}", a.ip()), "trust password"),
        };
        return Ok(Some(Grant {
            role: Role::Admin,
            projects: Vec::new(),
            name,
            how,
        }));
    }
    // lxc 5.0 sends a token's bare secret as the password too.
    redeem(&password)
}
