//! Snapshots of an instance: its config and devices as they were, and the
//! state of its root disk as an internal snapshot inside the qcow2 overlay
//! (`qemu-img snapshot` while it is stopped, QMP while it runs, which
//! keeps the disk as a power cut would leave it). Disks the caller brought
//! (`source=` devices) are the caller's files and are not copied; an
//! instance booted from a kernel, with no root disk, snapshots its config
//! only. Restoring needs the instance stopped.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::record::{Device, Record};
use super::{current, save, Error, Manager};
use crate::hostfile::Pin;
use crate::log::log;

/// Snapshots one instance keeps at most (qcow2 slows down with many).
const MAX_SNAPSHOTS: usize = 64;

/// One snapshot as the record keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Snapshot {
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    pub config: BTreeMap<String, String>,
    pub devices: BTreeMap<String, Device>,
    /// Whether the root disk has an internal snapshot of this name.
    pub disk: bool,
}

/// What `qemu-img snapshot` is asked to do.
#[derive(Clone, Copy)]
enum Act {
    Take,
    Delete,
    Apply,
}

/// Runs `qemu-img snapshot` on the overlay `disk` as the file's owner: a
/// disk a VM has run on is its uid's, and root must not parse a file a
/// guest could have shaped.
fn qemu_img(disk: &Path, act: Act, name: &str) -> Result<(), Error> {
    let owner = std::fs::metadata(disk)
        .map_err(|e| Error::host(format!("read {}", disk.display()), e))?
        .uid();
    let flag = match act {
        Act::Take => "-c",
        Act::Delete => "-d",
        Act::Apply => "-a",
    };
    let mut cmd = Command::new("qemu-img");
    cmd.args(["snapshot", flag, name]).arg(disk);
    if crate::sys::euid() == 0 && owner != 0 {
        cmd.uid(owner).gid(owner);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::host("run qemu-img (is qemu-utils installed?)", e))?;
    if !out.status.success() {
        return Err(Error::host(
            "change the root disk's snapshots",
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// A snapshot's name: what LXD allows in one path segment, without `/`.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid snapshot name {name:?}: use up to 63 letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Manager {
    /// Takes snapshot `snap` of instance `name`, running or not.
    pub(crate) async fn snapshot(&self, name: &str, snap: &str) -> Result<(), Error> {
        check_name(snap)?;
        let host = self.host()?;
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        let mut rec = current(&e)?;
        if rec.snapshots.iter().any(|s| s.name == snap) {
            return Err(Error::Exists(format!("snapshot {name}/{snap}")));
        }
        if rec.snapshots.len() >= MAX_SNAPSHOTS {
            return Err(Error::Refused(format!(
                "instance {name:?} has {MAX_SNAPSHOTS} snapshots: delete one first"
            )));
        }
        let disk = rec.root_disk(&host.state);
        match (&disk, guard.as_mut().filter(|vm| vm.is_running())) {
            (None, _) => {}
            (Some(_), Some(vm)) => vm.disk_snapshot("root", snap, true).await?,
            (Some(d), None) => {
                let d = d.clone();
                let s = snap.to_string();
                smol::unblock(move || qemu_img(&d, Act::Take, &s)).await?;
            }
        }
        rec.snapshots.push(Snapshot {
            name: snap.into(),
            created_at: crate::clock::now(),
            config: rec.config.clone(),
            devices: rec.devices.clone(),
            disk: disk.is_some(),
        });
        save(&rec, &rec.dir(&host.state)).await?;
        e.view.change(|v| v.record = rec);
        log!(Info, "instance {name}: snapshot {snap} taken");
        Ok(())
    }

    /// Deletes snapshot `snap` of instance `name`.
    pub(crate) async fn delete_snapshot(&self, name: &str, snap: &str) -> Result<(), Error> {
        let host = self.host()?;
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        let mut rec = current(&e)?;
        let Some(pos) = rec.snapshots.iter().position(|s| s.name == snap) else {
            return Err(Error::NotFound(format!("snapshot {name}/{snap}")));
        };
        let had_disk = rec.snapshots.get(pos).is_some_and(|s| s.disk);
        if let (true, Some(d)) = (had_disk, rec.root_disk(&host.state)) {
            match guard.as_mut().filter(|vm| vm.is_running()) {
                Some(vm) => vm.disk_snapshot("root", snap, false).await?,
                None => {
                    let s = snap.to_string();
                    smol::unblock(move || qemu_img(&d, Act::Delete, &s)).await?;
                }
            }
        }
        rec.snapshots.remove(pos);
        save(&rec, &rec.dir(&host.state)).await?;
        e.view.change(|v| v.record = rec);
        log!(Info, "instance {name}: snapshot {snap} deleted");
        Ok(())
    }

    /// Puts instance `name` (stopped) back as snapshot `snap` was: root
    /// disk, config and devices. `pins` are the checked files of disks the
    /// snapshot has and the instance no longer does.
    pub(crate) async fn restore(
        &self,
        name: &str,
        snap: &str,
        pins: &BTreeMap<String, Pin>,
    ) -> Result<(), Error> {
        let host = self.host()?;
        let e = self.entry(name)?;
        let guard = e.vm.lock().await;
        if guard.as_ref().is_some_and(|vm| vm.is_running()) {
            return Err(Error::Conflict(format!(
                "instance {name:?} is running: stop it to restore a snapshot"
            )));
        }
        let old = current(&e)?;
        let Some(s) = old.snapshots.iter().find(|s| s.name == snap).cloned() else {
            return Err(Error::NotFound(format!("snapshot {name}/{snap}")));
        };
        let mut new: Record = old.clone();
        new.config = s.config;
        new.devices = s.devices;
        new.take_pins(&old.pins, pins)?;
        new.validate()?;
        if let (true, Some(d)) = (s.disk, new.root_disk(&host.state)) {
            let sn = snap.to_string();
            smol::unblock(move || qemu_img(&d, Act::Apply, &sn)).await?;
        }
        new.release_pins(false);
        save(&new, &new.dir(&host.state)).await?;
        e.view.change(|v| v.record = new);
        drop(guard);
        log!(Info, "instance {name}: snapshot {snap} restored");
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_one_plain_segment() {
        for ok in ["snap0", "before-upgrade", "2026_11_30.1", "S"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(64);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "é",
            "a\n",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
