//! The resources LXD clients look up before they act, of which kvmbox has
//! exactly one or none of its own: the `default` project, a `default`
//! profile with no config and no devices, the image store as the
//! `default` storage pool, and the host's bridges (what a bridged NIC can
//! attach to) as unmanaged networks. All read-only: they describe what
//! the daemon does, and nothing here can change it.

use serde_json::{json, Value};

use crate::http::Response;
use crate::server::reply::{error, sync};
use crate::server::state::Shared;
use crate::wire::{path, DEFAULT_PROJECT};

/// Which list or entry a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Profiles,
    Projects,
    StoragePools,
    Networks,
}

impl Kind {
    fn base(self) -> &'static str {
        match self {
            Kind::Profiles => path::PROFILES,
            Kind::Projects => path::PROJECTS,
            Kind::StoragePools => path::STORAGE_POOLS,
            Kind::Networks => path::NETWORKS,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Profiles => "profile",
            Kind::Projects => "project",
            Kind::StoragePools => "storage pool",
            Kind::Networks => "network",
        }
    }
}

/// Every entry of `kind`, in full.
fn entries(shared: &Shared, kind: Kind) -> Vec<Value> {
    let instances: Vec<String> = shared
        .instances
        .names()
        .iter()
        .map(|n| path::instance(n))
        .collect();
    let images: Vec<String> = shared
        .instances
        .images()
        .unwrap_or_default()
        .iter()
        .map(|i| path::image(&i.fingerprint))
        .collect();
    match kind {
        Kind::Profiles => vec![json!({
            "name": "default",
            "description": "Default kvmbox profile (empty: instances carry their own config)",
            "config": {},
            "devices": {},
            "used_by": instances,
            "project": DEFAULT_PROJECT,
        })],
        Kind::Projects => {
            let mut used_by = instances;
            used_by.extend(images);
            used_by.push(format!("{}/default", path::PROFILES));
            vec![json!({
                "name": DEFAULT_PROJECT,
                "description": "Default kvmbox project (the only one)",
                "config": {
                    "features.images": "true",
                    "features.profiles": "true",
                    "features.storage.volumes": "true",
                    "features.networks": "true",
                },
                "used_by": used_by,
            })]
        }
        Kind::StoragePools => {
            let mut used_by = images;
            used_by.extend(instances);
            vec![json!({
                "name": "default",
                "driver": "dir",
                "description": "kvmbox's state directory: images and instance disks",
                "config": {},
                "used_by": used_by,
                "status": "Created",
                "locations": ["none"],
            })]
        }
        Kind::Networks => bridges()
            .into_iter()
            .map(|name| {
                let used_by: Vec<String> = shared
                    .instances
                    .list(false)
                    .iter()
                    .filter(|i| attached(i, &name))
                    .filter_map(|i| i.get("name").and_then(Value::as_str))
                    .map(path::instance)
                    .collect();
                json!({
                    "name": name,
                    "description": "",
                    "type": "bridge",
                    "managed": false,
                    "status": "",
                    "config": {},
                    "used_by": used_by,
                    "locations": ["none"],
                })
            })
            .collect(),
    }
}

/// Whether instance `i` (as shown) has a bridged NIC on `bridge`.
fn attached(i: &Value, bridge: &str) -> bool {
    i.get("devices")
        .and_then(Value::as_object)
        .is_some_and(|devs| {
            devs.values().any(|d| {
                d.get("nictype").and_then(Value::as_str) == Some("bridged")
                    && d.get("parent").and_then(Value::as_str) == Some(bridge)
            })
        })
}

/// The host's bridges, by name.
fn bridges() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("bridge").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

/// `GET /1.0/<kind>[?recursion=1]`.
pub(crate) fn list(shared: &Shared, kind: Kind, recursion: bool) -> Response {
    let all = entries(shared, kind);
    if recursion {
        return sync(json!(all));
    }
    sync(json!(all
        .iter()
        .filter_map(|e| e.get("name").and_then(Value::as_str))
        .map(|n| format!("{}/{n}", kind.base()))
        .collect::<Vec<_>>()))
}

/// `GET /1.0/<kind>/<name>`.
pub(crate) fn get(shared: &Shared, kind: Kind, name: &str) -> Response {
    match entries(shared, kind)
        .into_iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
    {
        Some(e) => sync(e),
        None => error(404, &format!("{} {name:?} not found", kind.noun())),
    }
}
