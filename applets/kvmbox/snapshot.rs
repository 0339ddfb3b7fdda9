//! `kvmbox snapshot`, `kvmbox restore` and `kvmbox rename`, as `lxc
//! snapshot`, `lxc restore` and `lxc rename` of a snapshot; a snapshot is
//! deleted with `kvmbox delete NAME/SNAPSHOT`.

use argh::FromArgs;
use kvmbox::{api_path as path, InstancePut, SnapshotPost, SnapshotsPost};

use super::{Ctx, Error};

/// Snapshot an instance: its root disk (running or not), config and devices.
#[derive(FromArgs)]
#[argh(subcommand, name = "snapshot")]
pub(crate) struct Snapshot {
    #[argh(positional)]
    /// the instance ([REMOTE:]NAME)
    name: String,
    #[argh(positional)]
    /// the snapshot's name
    snapshot: String,
    #[argh(switch)]
    /// keep it whatever the instance's snapshots.expiry says
    no_expiry: bool,
}

/// Put an instance back as one of its snapshots was (a running one is
/// stopped at once and started again after).
#[derive(FromArgs)]
#[argh(subcommand, name = "restore")]
pub(crate) struct Restore {
    #[argh(positional)]
    /// the instance ([REMOTE:]NAME)
    name: String,
    #[argh(positional)]
    /// the snapshot's name
    snapshot: String,
}

pub(crate) fn snapshot(ctx: &Ctx, a: &Snapshot) -> Result<(), Error> {
    let (mut c, name) = ctx.target(&a.name)?;
    let body = SnapshotsPost {
        name: a.snapshot.clone(),
        // Go's zero time: what lxc sends for --no-expiry.
        expires_at: a.no_expiry.then(|| "0001-01-01T00:00:00Z".into()),
        ..SnapshotsPost::default()
    };
    let answer = c.send("POST", &path::instance_snapshots(&name), &body)?;
    c.wait(answer)?;
    Ok(())
}

pub(crate) fn restore(ctx: &Ctx, a: &Restore) -> Result<(), Error> {
    let (mut c, name) = ctx.target(&a.name)?;
    let body = InstancePut {
        restore: Some(a.snapshot.clone()),
        ..InstancePut::default()
    };
    let answer = c.send("PUT", &path::instance(&name), &body)?;
    c.wait(answer)?;
    Ok(())
}

/// Rename a snapshot.
#[derive(FromArgs)]
#[argh(subcommand, name = "rename")]
pub(crate) struct Rename {
    #[argh(positional)]
    /// the snapshot ([REMOTE:]NAME/SNAPSHOT)
    snapshot: String,
    #[argh(positional)]
    /// its new name (a name alone: a snapshot stays with its instance)
    new: String,
}

pub(crate) fn rename(ctx: &Ctx, a: &Rename) -> Result<(), Error> {
    let (mut c, name) = ctx.target(&a.snapshot)?;
    let Some(at) = path_of(&name) else {
        return Err(Error::Usage(
            "only snapshots are renamed: give NAME/SNAPSHOT".into(),
        ));
    };
    let body = SnapshotPost {
        name: a.new.clone(),
        ..SnapshotPost::default()
    };
    let answer = c.send("POST", &at, &body)?;
    c.wait(answer)?;
    Ok(())
}

/// `kvmbox delete NAME/SNAPSHOT`: the path of that snapshot.
pub(crate) fn path_of(name: &str) -> Option<String> {
    let (instance, snap) = name.split_once('/')?;
    // `vm/` would name the snapshots' list, where a POST takes one.
    (!instance.is_empty() && !snap.is_empty() && !snap.contains('/'))
        .then(|| path::instance_snapshot(instance, snap))
}
