//! The instances endpoints of the REST API, in LXD's shapes
//! (<https://documentation.ubuntu.com/lxd/en/latest/rest-api/>):
//! `/1.0/instances[/<name>[/state|/snapshots]]`.
//!
//! [`handle`] is the one entry point; [`Call`] names the endpoint, so other
//! routes (such as LXD's older `/1.0/containers`) can map onto the same calls.
//! Roles are checked by the route table before any of this runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::hostfile::{self, Need, Pin};
use crate::http::{Request, Response};
use crate::rt::Boxed;
use crate::server::auth::{may_change, opener, Identity};
use crate::server::reply::{body, error, fail, operation, sync, sync_json, told};
use crate::server::settings::INSTANCES_UID_RANGE;
use crate::server::state::Shared;
use crate::vmm::instances::{Device, Error, Expiry, Record, DEFAULT_UID_RANGE};
use crate::wire::{path, InstancePut, InstancesPost, SnapshotPost, SnapshotsPost, StatePut};

/// Which endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `GET /1.0/instances`
    List,
    /// `POST /1.0/instances`
    Create,
    /// `GET /1.0/instances/<name>`
    Get,
    /// `PUT /1.0/instances/<name>`
    Put,
    /// `PATCH /1.0/instances/<name>`
    Patch,
    /// `DELETE /1.0/instances/<name>`
    Delete,
    /// `GET /1.0/instances/<name>/state`
    State,
    /// `PUT /1.0/instances/<name>/state`
    StatePut,
    /// `GET /1.0/instances/<name>/snapshots`
    Snapshots,
    /// `POST /1.0/instances/<name>/snapshots`
    SnapshotAdd,
    /// `GET /1.0/instances/<name>/snapshots/<snapshot>`
    Snapshot,
    /// `POST /1.0/instances/<name>/snapshots/<snapshot>`: a rename
    SnapshotRename,
    /// `DELETE /1.0/instances/<name>/snapshots/<snapshot>`
    SnapshotDelete,
    /// `GET /1.0/instances/<name>/backups`: kvmbox makes none, so the list
    /// of an existing instance is empty (lxc info reads it).
    Backups,
}

/// The default wait for a graceful stop when the request gives none.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers one instances or images request; `name` is the path's `{}`.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    id: &Identity,
    req: &Request,
    call: Call,
    name: &str,
    snap: &str,
) -> Response {
    let m = &shared.instances;
    shared.configure_instances();
    let recursion = req.query_param("recursion").unwrap_or("0");
    match call {
        // Every instance is a VM: a list of containers is empty.
        Call::List
            if !matches!(
                req.query_param("instance-type"),
                None | Some("" | "virtual-machine")
            ) =>
        {
            sync(json!([]))
        }
        Call::List => match recursion {
            "0" => sync(json!(m
                .names()
                .iter()
                .map(|n| path::instance(n))
                .collect::<Vec<_>>())),
            // Without a filter, each instance's JSON as rendered at its last
            // change: the list costs a copy, not a thousand serialisations.
            "1" if req.query_param("filter").unwrap_or("").is_empty() => {
                let shown = m.list_json();
                let mut list =
                    Vec::with_capacity(shown.iter().map(|j| j.len() + 1).sum::<usize>() + 2);
                list.push(b'[');
                for (i, json) in shown.iter().enumerate() {
                    if i > 0 {
                        list.push(b',');
                    }
                    list.extend_from_slice(json);
                }
                list.push(b']');
                sync_json(&list)
            }
            // LXD's api_filtering (lxc list sends `filter=`); a bad filter
            // is an error, as LXD makes it.
            r => {
                match crate::server::filter::Filter::parse(req.query_param("filter").unwrap_or(""))
                {
                    Ok(f) => sync(f.apply(json!(m.list(r == "2")))),
                    Err(e) => fail(&e),
                }
            }
        },
        // LXD's `instance_get_full`: with `recursion=1`, the state too.
        Call::Get => m
            .get(name, recursion != "0")
            .map_or_else(|e| fail(&e), sync),
        Call::State => match m.get(name, true) {
            Ok(v) => sync(v.get("state").cloned().unwrap_or(Value::Null)),
            Err(e) => fail(&e),
        },
        Call::Backups => m
            .get(name, false)
            .map_or_else(|e| fail(&e), |_| sync(json!([]))),
        Call::Snapshots => match m.record(name) {
            Ok(r) if recursion != "0" => sync(json!(r
                .snapshots
                .iter()
                .map(|s| crate::vmm::instances::show_snapshot(&r, s))
                .collect::<Vec<_>>())),
            Ok(r) => sync(json!(r
                .snapshots
                .iter()
                .map(|s| path::instance_snapshot(name, &s.name))
                .collect::<Vec<_>>())),
            Err(e) => fail(&e),
        },
        Call::Snapshot => match m.record(name) {
            Ok(r) => match r.snapshots.iter().find(|s| s.name == snap) {
                Some(s) => sync(crate::vmm::instances::show_snapshot(&r, s)),
                None => error(404, &format!("snapshot {name}/{snap} not found")),
            },
            Err(e) => fail(&e),
        },
        Call::SnapshotAdd => take_snapshot(shared, req, name),
        Call::SnapshotRename => rename_snapshot(shared, req, name, snap),
        Call::SnapshotDelete => {
            if let Err(e) = m.record(name) {
                return fail(&e);
            }
            let (n, sn) = (name.to_string(), snap.to_string());
            spawn(
                shared,
                "Deleting snapshot",
                name,
                "instance-snapshot-deleted",
                move |s| async move { s.instances.delete_snapshot(&n, &sn, None).await },
            )
        }
        Call::Create => create(shared, id, req).await,
        Call::Put | Call::Patch => update(shared, id, req, name, call == Call::Put).await,
        Call::Delete => {
            let force = req
                .query_param("force")
                .is_some_and(|f| f == "true" || f == "1");
            // Refused at once, not in an operation: the caller sees why.
            match m.get(name, false) {
                Err(e) => return fail(&e),
                Ok(v) if !force && v.get("status").is_some_and(|s| s == "Running") => {
                    return error(
                        409,
                        &format!(
                            "instance {name:?} is running: stop it first, or delete it with --force"
                        ),
                    )
                }
                Ok(_) => {}
            }
            let n = name.to_string();
            spawn(
                shared,
                "Deleting instance",
                name,
                "instance-deleted",
                move |s| async move { s.instances.delete(&n, force).await },
            )
        }
        Call::StatePut => state(shared, req, name),
    }
}

/// Runs `work` as an operation on instance `name`; answers 202. Its
/// success is announced as the lifecycle event `action`.
fn spawn<F, Fut>(
    shared: &Arc<Shared>,
    description: &str,
    name: &str,
    action: &'static str,
    work: F,
) -> Response
where
    F: FnOnce(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    run_op(
        shared,
        description,
        name,
        action,
        Box::pin(work(shared.clone())),
    )
}

/// [`spawn`]'s body, once for every kind of work.
fn run_op(
    shared: &Arc<Shared>,
    description: &str,
    name: &str,
    action: &'static str,
    fut: Boxed<'static, Result<(), Error>>,
) -> Response {
    let ex = match shared.instances.executor() {
        Ok(ex) => ex,
        Err(e) => return fail(&e),
    };
    let mut resources = BTreeMap::new();
    resources.insert("instances".to_string(), vec![path::instance(name)]);
    let (events, name) = (shared.events.clone(), name.to_string());
    let op = shared.ops.spawn(&ex, description, resources, async move {
        fut.await.map_err(|e| told(&e))?;
        events.lifecycle(action, &name, json!({}));
        Ok(json!({}))
    });
    operation(&op)
}

/// How long opening the host files of one request may take: a path on a
/// filesystem the caller controls (FUSE) could otherwise hold it for ever.
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that the caller may make a change to an instance (`current`,
/// none when it is made), then opens, as the daemon will use them, the
/// host files `config` and `devices` name.
/// A kernel and initrd must be readable by the caller; a disk, which the
/// daemon hands to the VM's uid and back, must belong to the caller
/// (whatever `readonly` says). Disk sources `current` has keep the pins
/// they were checked with.
async fn check_files(
    id: &Identity,
    config: &BTreeMap<String, String>,
    devices: &BTreeMap<String, Device>,
    current: Option<&Record>,
) -> Result<BTreeMap<String, Pin>, Response> {
    may_change(id, config, current)?;
    let known: Vec<&String> = current.map(|r| r.pins.keys().collect()).unwrap_or_default();
    let files = ["boot.kernel", "boot.initrd"]
        .iter()
        .filter_map(|k| config.get(*k))
        .filter(|v| !v.is_empty())
        .map(|v| (PathBuf::from(v), Need::Read))
        .chain(
            devices
                .values()
                .filter(|d| d.get("type").map(String::as_str) == Some("disk"))
                .filter_map(|d| d.get("source"))
                .filter(|s| !known.contains(s))
                .map(|s| (PathBuf::from(s), Need::Own)),
        )
        .collect::<Vec<_>>();
    if files.is_empty() {
        return Ok(BTreeMap::new());
    }
    let who = opener(id)?;
    let checked = crate::rt::timed(
        OPEN_TIMEOUT,
        smol::unblock(move || {
            let mut pins = BTreeMap::new();
            for (path, need) in files {
                let (_, pin) = hostfile::check(&path, &who, need)?;
                if need == Need::Own {
                    pins.insert(path.display().to_string(), pin);
                }
            }
            Ok::<_, hostfile::Error>(pins)
        }),
    )
    .await;
    match checked {
        Some(Ok(pins)) => Ok(pins),
        Some(Err(e)) => Err(fail(&e)),
        None => Err(too_slow()),
    }
}

pub(super) fn too_slow() -> Response {
    error(
        400,
        &format!("opening the host files named took longer than {OPEN_TIMEOUT:?}"),
    )
}

async fn create(shared: &Arc<Shared>, id: &Identity, req: &Request) -> Response {
    let b: InstancesPost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !b.kind.is_empty() && b.kind != "virtual-machine" {
        return error(400, "only instances of type virtual-machine are supported");
    }
    if b.ephemeral {
        return error(400, "ephemeral instances are not supported");
    }
    if !b.architecture.is_empty() && b.architecture != std::env::consts::ARCH {
        return error(
            400,
            &format!("this server runs {} VMs only", std::env::consts::ARCH),
        );
    }
    if let Err(r) = only_default_profile(b.profiles.as_ref()) {
        return r;
    }
    if !b.instance_type.is_empty() {
        return error(
            400,
            "instance types are not supported: set limits.cpu and limits.memory",
        );
    }
    if b.stateful || !b.restore.is_empty() || b.state.as_ref().is_some_and(|s| !s.is_null()) {
        return error(400, "stateful instances and restores are not supported");
    }
    let _ = &b.description;
    let image = match &b.source {
        None => None,
        Some(s)
            if s.kind == "none"
                || s.kind.is_empty() && s.alias.is_none() && s.fingerprint.is_none() =>
        {
            None
        }
        Some(s) if s.kind == "image" || s.kind.is_empty() => {
            s.alias.clone().or(s.fingerprint.clone())
        }
        Some(s) => {
            return error(
                400,
                &format!("unsupported source type {:?}: use image or none", s.kind),
            )
        }
    };
    let pins = match check_files(id, &b.config, &b.devices, None).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let range = shared
        .settings()
        .get(INSTANCES_UID_RANGE)
        .unwrap_or(DEFAULT_UID_RANGE)
        .to_string();
    if b.source.as_ref().is_some_and(|s| !s.server.is_empty()) {
        return super::pull::launch(shared, b, pins, range);
    }
    // What can be refused is refused at once, so that the caller sees
    // why; making the root disk and the record is the operation's work, as
    // in LXD, whose clients wait on it.
    let reserved = match shared.instances.reserve(
        &b.name,
        image.as_deref(),
        b.config,
        b.devices,
        &pins,
        &range,
    ) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    spawn(
        shared,
        "Creating instance",
        &b.name,
        "instance-created",
        move |s| async move { s.instances.create(reserved).await.map(|_| ()) },
    )
}

/// `PUT /1.0/instances/<name>` with `restore`: the snapshot's config and
/// devices are checked as if the caller put them now (a disk the instance
/// no longer has must be the caller's to use again).
async fn restore(shared: &Arc<Shared>, id: &Identity, current: &Record, snap: String) -> Response {
    // lxc names it `instance/snapshot`.
    let snap = match snap.split_once('/') {
        Some((inst, s)) if inst == current.name => s.to_string(),
        _ => snap,
    };
    let Some(s) = current.snapshots.iter().find(|s| s.name == snap).cloned() else {
        return error(404, &format!("snapshot {}/{snap} not found", current.name));
    };
    let pins = match check_files(id, &s.config, &s.devices, Some(current)).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let n = current.name.clone();
    spawn(
        shared,
        "Restoring snapshot",
        &n.clone(),
        "instance-restored",
        move |sh| async move { sh.instances.restore(&n, &s, &pins).await },
    )
}

/// `POST /1.0/instances/<name>/snapshots` (LXD's `InstanceSnapshotsPost`).
fn take_snapshot(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let b: SnapshotsPost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.stateful {
        return error(400, "stateful snapshots are not supported");
    }
    let expiry = match b.expires_at {
        None | Some(Value::Null) => Expiry::Configured,
        // Go's zero time: what `lxc snapshot --no-expiry` sends.
        Some(Value::String(t)) if t.starts_with("0001-01-01T00:00:00") => Expiry::Never,
        Some(other) => {
            return error(
                400,
                &format!("expires_at {other}: only none is taken; snapshots.expiry sets it"),
            )
        }
    };
    if let Err(e) = shared.instances.record(name) {
        return fail(&e);
    }
    let (n, snap) = (name.to_string(), b.name);
    spawn(
        shared,
        "Snapshotting instance",
        name,
        "instance-snapshot-created",
        move |s| async move { s.instances.snapshot(&n, &snap, expiry).await },
    )
}

/// `POST /1.0/instances/<name>/snapshots/<snapshot>` (LXD's
/// `InstanceSnapshotPost`): a rename on this server.
fn rename_snapshot(shared: &Arc<Shared>, req: &Request, name: &str, snap: &str) -> Response {
    let b: SnapshotPost = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.migration || b.target.as_ref().is_some_and(|t| !t.is_null()) {
        return error(
            400,
            "snapshots cannot be moved to another server: only renamed",
        );
    }
    if let Err(e) = shared.instances.record(name) {
        return fail(&e);
    }
    let (n, sn, to) = (name.to_string(), snap.to_string(), b.name);
    spawn(
        shared,
        "Renaming snapshot",
        name,
        "instance-snapshot-renamed",
        move |s| async move { s.instances.rename_snapshot(&n, &sn, &to).await },
    )
}

/// Refuses a profile list that names anything but the one, empty,
/// `default` profile there is (absent, null or empty means it too).
fn only_default_profile(profiles: Option<&Value>) -> Result<(), Response> {
    match profiles {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(list)) if list.iter().all(|p| p.as_str() == Some("default")) => Ok(()),
        Some(other) => Err(error(
            400,
            &format!("profiles {other}: kvmbox has only the empty default profile"),
        )),
    }
}

async fn update(
    shared: &Arc<Shared>,
    id: &Identity,
    req: &Request,
    name: &str,
    replace: bool,
) -> Response {
    let b: InstancePut = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = only_default_profile(b.profiles.as_ref()) {
        return r;
    }
    // What `GET` shows and only the daemon sets: a PUT of a GET must work.
    let config = b.config.map(|c| {
        c.into_iter()
            .filter(|(k, _)| !k.starts_with("volatile.") && k != "image.alias")
            .collect::<BTreeMap<_, _>>()
    });
    // Disks the instance has already keep the pins they were checked with:
    // the VM's uid may own them by now.
    let current = match shared.instances.record(name) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let (true, Some(snap)) = (replace, b.restore) {
        return restore(shared, id, &current, snap).await;
    }
    let pins = match check_files(
        id,
        config.as_ref().unwrap_or(&BTreeMap::new()),
        b.devices.as_ref().unwrap_or(&BTreeMap::new()),
        Some(&current),
    )
    .await
    {
        Ok(p) => p,
        Err(r) => return r,
    };
    // LXD answers a PUT with an operation (its clients wait on one) and a
    // PATCH at once.
    if replace {
        let n = name.to_string();
        return spawn(
            shared,
            "Updating instance",
            name,
            "instance-updated",
            move |s| async move { s.instances.update(&n, config, b.devices, true, &pins).await },
        );
    }
    match shared
        .instances
        .update(name, config, b.devices, false, &pins)
        .await
    {
        Ok(()) => {
            shared.events.lifecycle("instance-updated", name, json!({}));
            sync(json!({}))
        }
        Err(e) => fail(&e),
    }
}

fn state(shared: &Arc<Shared>, req: &Request, name: &str) -> Response {
    let b: StatePut = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.stateful {
        return error(400, "stateful snapshots are not supported");
    }
    if let Err(e) = shared.instances.get(name, false) {
        return fail(&e);
    }
    let timeout = u64::try_from(b.timeout).map_or(STOP_TIMEOUT, Duration::from_secs);
    let (force, n) = (b.force, name.to_string());
    match b.action.as_str() {
        "start" => spawn(
            shared,
            "Starting instance",
            name,
            "instance-started",
            move |s| async move { s.instances.start(&n).await },
        ),
        "stop" => spawn(
            shared,
            "Stopping instance",
            name,
            "instance-stopped",
            move |s| async move { s.instances.stop(&n, force, timeout).await },
        ),
        "restart" => spawn(
            shared,
            "Restarting instance",
            name,
            "instance-restarted",
            move |s| async move { s.instances.restart(&n, force, timeout).await },
        ),
        a => error(
            400,
            &format!("unknown action {a:?}: use start, stop or restart"),
        ),
    }
}
