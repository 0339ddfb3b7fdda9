//! `/1.0`: what the server is (`GET`), and its configuration (`PUT`,
//! `PATCH`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::log::log;
use crate::server::auth::Identity;
use crate::server::reply::{body, error, fail, sync};
use crate::server::state::Shared;
use crate::sys;
use crate::wire::ServerPut;

/// LXD's API extensions that kvmbox serves, and only those: a client
/// takes each as a promise.
/// - `api_filtering`: `?filter=` on lists (lxc list sends it);
/// - `container_backup`: the backups list, always empty (lxc info reads
///   it; making a backup answers 501);
/// - `container_full`, `instance_get_full`: an instance with its state,
///   snapshots and backups in one request (`recursion=2` on the list,
///   `recursion=1` on one);
/// - `instances`, `virtual-machines`: `/1.0/instances`, of type
///   `virtual-machine` (without them lxc uses `/1.0/containers` and
///   refuses `--vm`);
/// - `image_types`: images say their type;
/// - `projects`, `storage`, `network`: the read-only `default` project and
///   storage pool, and the host's bridges (`handlers/discovery.rs`);
/// - `operation_wait`: `GET /1.0/operations/<id>/wait`;
/// - `console`: `POST /1.0/instances/<name>/console`, a websocket to the
///   serial console (lxc console refuses to run without it); exec and
///   plain files need no extension of their own;
/// - `directory_manipulation`, `file_symlinks`, `file_append`,
///   `file_delete`: guest directories and symlinks read and made, files
///   appended to and removed (`lxc file push -r/-p`, `pull -r`, `delete`);
/// - `certificate_token`: `POST /1.0/certificates` with `token: true`
///   answers an operation whose metadata is the token (an operation that
///   is over at once: a token is revoked by removing it, not by
///   cancelling the operation).
const EXTENSIONS: &[&str] = &[
    "certificate_token",
    "console",
    "api_filtering",
    "container_backup",
    "container_full",
    "instances",
    "image_types",
    "virtual-machines",
    "projects",
    "storage",
    "network",
    "instance_get_full",
    "operation_wait",
    "directory_manipulation",
    "file_symlinks",
    "file_append",
    "file_delete",
];

/// `GET /1.0`: everything for a trusted caller, the bare minimum for others.
pub(crate) fn get(shared: &Shared, id: &Identity) -> Value {
    let mut info = json!({
        "api_extensions": EXTENSIONS,
        "api_status": "stable",
        "api_version": "1.0",
        "auth": if id.role.is_some() { "trusted" } else { "untrusted" },
        "auth_methods": ["tls"],
        "public": false,
    });
    if let (Some(role), Some(obj)) = (id.role, info.as_object_mut()) {
        let (host, release) = sys::names();
        obj.insert("auth_role".into(), json!(role));
        obj.insert("config".into(), json!(shared.settings().public()));
        obj.insert(
            "environment".into(),
            json!({
                "addresses": shared.https_address().map(|a| a.to_string()).into_iter().collect::<Vec<_>>(),
                "architectures": [std::env::consts::ARCH],
                "certificate": shared.cert.to_pem(),
                "certificate_fingerprint": shared.cert.fingerprint(),
                "driver": "qemu",
                "kernel": "Linux",
                "kernel_architecture": std::env::consts::ARCH,
                "kernel_version": release,
                "server": "kvmbox",
                "server_name": host,
                "server_pid": std::process::id(),
                "server_version": env!("CARGO_PKG_VERSION"),
            }),
        );
        if let (Some(env), Value::Object(more)) = (
            obj.get_mut("environment").and_then(Value::as_object_mut),
            shared.instances.environment(),
        ) {
            env.extend(more);
        }
    }
    info
}

pub(crate) async fn put(shared: &Arc<Shared>, req: &Request, replace: bool) -> Response {
    let body: ServerPut = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
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
        Err(e) => fail(&e),
    }
}
