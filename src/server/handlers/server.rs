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

/// `GET /1.0`: everything for a trusted caller, the bare minimum for others.
pub(crate) fn get(shared: &Shared, id: &Identity) -> Value {
    let mut info = json!({
        // Only what is implemented: `?filter=` on lists (lxc list needs it).
        // Only what is served: `api_filtering` (lxc list needs it) and
        // `container_backup`, whose list lxc info reads (kvmbox makes no
        // backups, so it is always empty; making one answers 501).
        "api_extensions": ["api_filtering", "container_backup"],
        "api_status": "stable",
        "api_version": "1.0",
        "auth": if id.role.is_some() { "trusted" } else { "untrusted" },
        "auth_methods": ["tls"],
        "public": false,
    });
    // The guest endpoints' extensions join the list, once each.
    if let Some(list) = info.get_mut("api_extensions").and_then(Value::as_array_mut) {
        for e in crate::server::handlers::guest::EXTENSIONS {
            if !list.iter().any(|x| x == e) {
                list.push(json!(e));
            }
        }
    }
    if let (Some(role), Some(obj)) = (id.role, info.as_object_mut()) {
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
                "kernel_version": sys::kernel_release(),
                "server": "kvmbox",
                "server_name": sys::hostname(),
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
