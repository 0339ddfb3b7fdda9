//! How an instance is shown: LXD's instance object (`GET /1.0/instances/<name>`).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::confine;
use super::record::{AaMode, Record};
use super::Snapshot;
use super::{profile_name, View};
use crate::rt::lock;

use crate::clock::rfc3339;

/// LXD's instance object, plus the profile and confinement (libvirt's
/// seclabel) and the QEMU pid.
pub(super) fn show(v: &View, with_state: bool) -> Value {
    let r = &v.record;
    let error = v.orphan.as_ref().or(v.failure.as_ref());
    let (status, code) = match (v.pid, error) {
        (Some(_), _) => ("Running", 103),
        (None, Some(_)) => ("Error", 112),
        (None, None) => ("Stopped", 102),
    };
    let mut config = r.config.clone();
    config.insert("volatile.uuid".into(), r.uuid.clone());
    config.insert("volatile.idmap.base".into(), r.uid.to_string());
    if let Some(img) = &r.image {
        config.insert("image.alias".into(), img.alias.clone());
        config.insert("volatile.base_image".into(), img.fingerprint.clone());
    }
    let model = match confine::kernel() {
        kvmbox_aa::Kernel::Enabled if r.apparmor() != AaMode::Off => "apparmor",
        _ => "none",
    };
    let mut out = json!({
        "name": r.name,
        "description": "",
        "type": "virtual-machine",
        "architecture": std::env::consts::ARCH,
        "created_at": rfc3339(r.created_at),
        "last_used_at": rfc3339(r.created_at),
        "status": status,
        "status_code": code,
        "stateful": false,
        "ephemeral": false,
        "project": "default",
        // The one profile there is, empty: see `server/handlers/discovery.rs`.
        "profiles": ["default"],
        "location": "none",
        "config": config,
        "devices": r.devices,
        "expanded_config": config,
        "expanded_devices": r.devices,
        "pid": v.pid.unwrap_or(0),
        "accelerator": v.accel.map(|a| a.to_string()).unwrap_or_default(),
        "seclabel": {
            "model": model,
            "label": profile_name(&r.uuid),
            "mode": match r.apparmor() { AaMode::Auto => "auto", AaMode::Required => "required", AaMode::Off => "off" },
            "loaded": v.seclabel.loaded,
            "confined": v.seclabel.confined,
            "reason": v.seclabel.reason,
        },
    });
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    if let Some(why) = error.filter(|_| v.pid.is_none()) {
        obj.insert("error".into(), json!(why));
    }
    if with_state {
        obj.insert(
            "state".into(),
            json!({
                "status": status,
                "status_code": code,
                "pid": v.pid.unwrap_or(0),
                "processes": if v.pid.is_some() { 1 } else { 0 },
            }),
        );
        // LXD's full form has them; kvmbox makes no backups.
        obj.insert(
            "snapshots".into(),
            json!(r
                .snapshots
                .iter()
                .map(|s| snapshot(r, s))
                .collect::<Vec<_>>()),
        );
        obj.insert("backups".into(), json!([]));
    }
    out
}

/// An instance's [`View`] and its JSON as `GET` shows it (without `state`),
/// rendered again at every change and only then: listing a thousand
/// instances copies their bytes instead of building and serialising a
/// thousand JSON objects for every request.
#[derive(Debug)]
pub(super) struct Shown(Mutex<(View, Arc<[u8]>)>);

fn render(v: &View) -> Arc<[u8]> {
    serde_json::to_vec(&show(v, false))
        .unwrap_or_default()
        .into()
}

impl Shown {
    pub(super) fn new(v: View) -> Shown {
        let json = render(&v);
        Shown(Mutex::new((v, json)))
    }

    /// Reads the view.
    pub(super) fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&lock(&self.0).0)
    }

    /// Changes the view; its JSON follows.
    pub(super) fn change<R>(&self, f: impl FnOnce(&mut View) -> R) -> R {
        let mut g = lock(&self.0);
        let r = f(&mut g.0);
        g.1 = render(&g.0);
        r
    }

    /// The JSON of the view as it is now.
    pub(super) fn json(&self) -> Arc<[u8]> {
        lock(&self.0).1.clone()
    }
}

/// Snapshot `s` of instance `r` as LXD shows one.
pub(crate) fn snapshot(r: &Record, s: &Snapshot) -> Value {
    json!({
        "name": s.name,
        "created_at": rfc3339(s.created_at),
        "last_used_at": rfc3339(s.created_at),
        // 1970 when it never expires: lxc shows no expiry for a time at or
        // before the epoch.
        "expires_at": rfc3339(s.expires_at.unwrap_or(0)),
        "stateful": false,
        "ephemeral": false,
        "architecture": std::env::consts::ARCH,
        "profiles": ["default"],
        "config": s.config,
        "devices": s.devices,
        "expanded_config": s.config,
        "expanded_devices": s.devices,
        "size": -1,
        "instance": r.name,
    })
}
