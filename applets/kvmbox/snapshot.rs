//! `kvmbox snapshot` and `kvmbox restore`, as `lxc snapshot` and `lxc
//! restore`; a snapshot is deleted with `kvmbox delete NAME/SNAPSHOT`.

use argh::FromArgs;
use kvmbox::{api_path as path, InstancePut, SnapshotsPost};

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
}

/// Put a stopped instance back as one of its snapshots was.
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

/// `kvmbox delete NAME/SNAPSHOT`: the path of that snapshot.
pub(crate) fn path_of(name: &str) -> Option<String> {
    let (instance, snap) = name.split_once('/')?;
    Some(path::instance_snapshot(instance, snap))
}
