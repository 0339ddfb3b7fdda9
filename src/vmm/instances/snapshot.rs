//! Snapshots of an instance: its config and devices as they were, and the
//! state of its root disk as an internal snapshot inside the qcow2 overlay
//! (`qemu-img snapshot` while it is stopped, QMP while it runs, with the
//! guest's filesystems frozen through its agent when one answers, or else
//! as a power cut would leave them). Disks the caller brought (`source=`
//! devices) are the caller's files and are not copied; an instance booted
//! from a kernel, with no root disk, snapshots its config only.
//!
//! Each change that touches the disk is written into the record first
//! ([`Pending`]), so that a daemon killed in the middle finishes it when it
//! starts again, after looking at what the disk holds: the snapshot list
//! and the disk never disagree for long.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::guest::agent_of;
use super::record::{Device, Record};
use super::{current, save, schedule, Entry, Error, Manager};
use crate::hostfile::Pin;
use crate::log::log;
use crate::vmm::qga;

/// Snapshots one instance keeps at most (qcow2 slows down with many).
pub(crate) const MAX_SNAPSHOTS: usize = 64;
/// How long a snapshot of a running VM waits for its guest agent to answer
/// at all before it goes on without freezing the guest's filesystems.
const AGENT_ANSWER: Duration = Duration::from_secs(2);

/// One snapshot as the record keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Snapshot {
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    pub config: BTreeMap<String, String>,
    pub devices: BTreeMap<String, Device>,
    /// Whether the root disk has an internal snapshot for this one.
    pub disk: bool,
    /// That internal snapshot's name, when it is not the snapshot's: qcow2
    /// cannot rename one, so a renamed snapshot keeps its first name there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl Snapshot {
    fn tag(&self) -> &str {
        self.tag.as_deref().unwrap_or(&self.name)
    }
}

/// A change to the root disk's snapshots, recorded before it is made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Pending {
    /// Taking this snapshot: it is kept if the disk has its tag.
    Take(Snapshot),
    /// Deleting this tag (the snapshot is out of the list already).
    Delete(String),
    /// Putting the disk back to this tag (the config is back already).
    Restore(String),
}

/// When a new snapshot expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// As the instance's `snapshots.expiry` says.
    Configured,
    Never,
    /// At these Unix seconds.
    At(u64),
}

/// What `qemu-img snapshot` is asked to do.
#[derive(Clone, Copy)]
enum Act {
    Take,
    Delete,
    Apply,
}

/// Runs `qemu-img ARGS… disk` as the file's owner, for its output: a disk
/// a VM has run on is its uid's, and root must not parse a file a guest
/// could have shaped.
fn qemu_img(disk: &Path, args: &[&str]) -> Result<Vec<u8>, Error> {
    let owner = std::fs::metadata(disk)
        .map_err(|e| Error::host(format!("read {}", disk.display()), e))?
        .uid();
    let mut cmd = Command::new("qemu-img");
    cmd.args(args).arg(disk);
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
    Ok(out.stdout)
}

/// `qemu-img snapshot` on the overlay `disk`.
async fn snapshot_disk(disk: &Path, act: Act, tag: &str) -> Result<(), Error> {
    let flag = match act {
        Act::Take => "-c",
        Act::Delete => "-d",
        Act::Apply => "-a",
    };
    let (disk, tag) = (disk.to_path_buf(), tag.to_string());
    smol::unblock(move || qemu_img(&disk, &["snapshot", flag, &tag]).map(drop)).await
}

/// The internal snapshots `disk` holds, by name. Read with the image shared
/// (`-U`): a running QEMU keeps it locked.
async fn disk_tags(disk: &Path) -> Result<Vec<String>, Error> {
    let disk = disk.to_path_buf();
    let out = smol::unblock(move || qemu_img(&disk, &["info", "-U", "--output=json"])).await?;
    let info: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    let names = info
        .get("snapshots")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(|n| n.as_str()))
        .map(str::to_string);
    Ok(names.collect())
}

/// A snapshot's name: what LXD allows in one path segment, without `/`.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
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

/// The disk tag for a new snapshot `name`: its name, unless a renamed
/// snapshot still has that tag.
fn new_tag(rec: &Record, name: &str) -> String {
    let used = |t: &str| rec.snapshots.iter().any(|s| s.tag() == t);
    if !used(name) {
        return name.into();
    }
    (1..=MAX_SNAPSHOTS)
        .map(|i| format!("{name}~{i}"))
        .find(|t| !used(t))
        .unwrap_or_else(|| name.into())
}

impl Manager {
    /// Takes snapshot `snap` of instance `name`, running or not.
    pub(crate) async fn snapshot(
        &self,
        name: &str,
        snap: &str,
        expiry: Expiry,
    ) -> Result<(), Error> {
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
        let created_at = crate::clock::now();
        let expires_at = match expiry {
            Expiry::Configured => {
                schedule::expiry(rec.get("snapshots.expiry").unwrap_or(""), created_at)?
            }
            Expiry::Never => None,
            Expiry::At(t) => Some(t),
        };
        let disk = rec.root_disk(&host.state);
        let mut taken = Snapshot {
            name: snap.into(),
            created_at,
            expires_at,
            config: rec.config.clone(),
            devices: rec.devices.clone(),
            disk: disk.is_some(),
            tag: None,
        };
        let dir = rec.dir(&host.state);
        let mut how = "";
        if let Some(d) = disk {
            let tag = new_tag(&rec, snap);
            taken.tag = (tag != snap).then(|| tag.clone());
            rec.pending = Some(Pending::Take(taken.clone()));
            save(&rec, &dir).await?;
            let done = match guard.as_mut().filter(|vm| vm.is_running()) {
                Some(vm) => {
                    let agent = agent_of(&e);
                    let frozen = match &agent {
                        Some(a) => a.freeze(AGENT_ANSWER).await,
                        None => Err(qga::Error::NoAgent(0)),
                    };
                    how = match &frozen {
                        Ok(_) => " with the guest's filesystems frozen",
                        Err(_) => " without the guest agent (as a power cut leaves the disk)",
                    };
                    let done = vm.disk_snapshot("root", &tag, true).await;
                    // A freeze that was sent, answered or not, is undone.
                    if let (Some(a), Ok(_) | Err(qga::Error::Timeout { .. })) = (&agent, &frozen) {
                        if let Err(why) = a.thaw().await {
                            log!(
                                Warn,
                                "instance {name}: thawing the guest's filesystems failed: {why}"
                            );
                        }
                    }
                    done.map_err(Error::from)
                }
                None => snapshot_disk(&d, Act::Take, &tag).await,
            };
            rec.pending = None;
            if done.is_err() {
                save(&rec, &dir).await?;
                e.view.change(|v| v.record = rec);
                return done;
            }
        }
        rec.snapshots.push(taken);
        save(&rec, &dir).await?;
        e.view.change(|v| v.record = rec);
        log!(Info, "instance {name}: snapshot {snap} taken{how}");
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
        let gone = rec.snapshots.remove(pos);
        let dir = rec.dir(&host.state);
        if let (true, Some(d)) = (gone.disk, rec.root_disk(&host.state)) {
            rec.pending = Some(Pending::Delete(gone.tag().into()));
            save(&rec, &dir).await?;
            e.view.change(|v| v.record = rec.clone());
            match guard.as_mut().filter(|vm| vm.is_running()) {
                Some(vm) => vm.disk_snapshot("root", gone.tag(), false).await?,
                None => snapshot_disk(&d, Act::Delete, gone.tag()).await?,
            }
            rec.pending = None;
        }
        save(&rec, &dir).await?;
        e.view.change(|v| v.record = rec);
        log!(Info, "instance {name}: snapshot {snap} deleted");
        Ok(())
    }

    /// Renames snapshot `snap` of instance `name` to `to`.
    pub(crate) async fn rename_snapshot(
        &self,
        name: &str,
        snap: &str,
        to: &str,
    ) -> Result<(), Error> {
        check_name(to)?;
        let host = self.host()?;
        let e = self.entry(name)?;
        let _guard = e.vm.lock().await;
        let mut rec = current(&e)?;
        if rec.snapshots.iter().any(|s| s.name == to) {
            return Err(Error::Exists(format!("snapshot {name}/{to}")));
        }
        let Some(s) = rec.snapshots.iter_mut().find(|s| s.name == snap) else {
            return Err(Error::NotFound(format!("snapshot {name}/{snap}")));
        };
        let tag = s.tag().to_string();
        s.name = to.into();
        s.tag = (s.disk && tag != to).then_some(tag);
        save(&rec, &rec.dir(&host.state)).await?;
        e.view.change(|v| v.record = rec);
        log!(Info, "instance {name}: snapshot {snap} renamed {to}");
        Ok(())
    }

    /// Puts instance `name` back as snapshot `snap` was: root disk, config
    /// and devices. A running instance is stopped at once (what it wrote
    /// since the snapshot is being thrown away) and started again after.
    /// `pins` are the checked files of disks the snapshot has and the
    /// instance no longer does.
    pub(crate) async fn restore(
        &self,
        name: &str,
        snap: &str,
        pins: &BTreeMap<String, Pin>,
    ) -> Result<(), Error> {
        let host = self.host()?;
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        let old = current(&e)?;
        let Some(s) = old.snapshots.iter().find(|s| s.name == snap).cloned() else {
            return Err(Error::NotFound(format!("snapshot {name}/{snap}")));
        };
        let mut new: Record = old.clone();
        new.config.clone_from(&s.config);
        new.devices.clone_from(&s.devices);
        new.take_pins(&old.pins, pins)?;
        new.validate()?;
        let was_running = guard.as_ref().is_some_and(|vm| vm.is_running());
        if guard.is_some() {
            self.stop_locked(&e, &mut guard, true, Duration::ZERO)
                .await?;
        }
        let dir = new.dir(&host.state);
        if let (true, Some(d)) = (s.disk, new.root_disk(&host.state)) {
            new.pending = Some(Pending::Restore(s.tag().into()));
            save(&new, &dir).await?;
            e.view.change(|v| v.record = new.clone());
            if let Err(err) = snapshot_disk(&d, Act::Apply, s.tag()).await {
                save(&old, &dir).await?;
                e.view.change(|v| v.record = old);
                return Err(err);
            }
            new.pending = None;
        }
        new.release_pins(false);
        save(&new, &dir).await?;
        e.view.change(|v| v.record = new);
        log!(Info, "instance {name}: snapshot {snap} restored");
        if was_running {
            self.start_locked(&e, &mut guard).await?;
        }
        Ok(())
    }

    /// Finishes the snapshot change a daemon that died left in `e`'s
    /// record, by what the root disk holds: a snapshot taken is kept if
    /// the disk has it, a deletion or a restore is done again. A freeze
    /// that may still hold the guest is undone. Called as the daemon opens
    /// its instances, after their QEMUs are re-adopted.
    pub(super) async fn finish_pending(&self, e: &Entry) {
        let Ok(host) = self.host() else { return };
        let mut guard = e.vm.lock().await;
        let Ok(mut rec) = current(e) else { return };
        let Some(pending) = rec.pending.clone() else {
            return;
        };
        let name = rec.name.clone();
        let running = guard.as_mut().filter(|vm| vm.is_running());
        let done = match (&pending, rec.root_disk(&host.state)) {
            (_, None) => Ok(()),
            (Pending::Take(s), Some(d)) => {
                if let (Some(a), true) = (agent_of(e), running.is_some()) {
                    host.ex.spawn(async move { drop(a.thaw().await) }).detach();
                }
                disk_tags(&d).await.map(|tags| {
                    if tags.iter().any(|t| t == s.tag()) {
                        rec.snapshots.push(s.clone());
                    }
                })
            }
            (Pending::Delete(tag), Some(d)) => match disk_tags(&d).await {
                Ok(tags) if !tags.contains(tag) => Ok(()),
                Ok(_) => match running {
                    Some(vm) => vm
                        .disk_snapshot("root", tag, false)
                        .await
                        .map_err(Error::from),
                    None => snapshot_disk(&d, Act::Delete, tag).await,
                },
                Err(why) => Err(why),
            },
            // A restore runs on a stopped VM and starts it after it is done.
            (Pending::Restore(tag), Some(d)) => snapshot_disk(&d, Act::Apply, tag).await,
        };
        if let Err(why) = done {
            log!(
                Warn,
                "instance {name}: the snapshot change cut off earlier is not finished: {}",
                crate::error_chain(&why)
            );
            return;
        }
        rec.pending = None;
        let dir = rec.dir(&host.state);
        if let Err(why) = save(&rec, &dir).await {
            log!(Warn, "instance {name}: {}", crate::error_chain(&why));
            return;
        }
        log!(
            Info,
            "instance {name}: finished the snapshot change cut off earlier ({pending:?})"
        );
        e.view.change(|v| v.record = rec);
    }

    /// The snapshots past their expiry at `now`, as (instance, snapshot).
    pub(crate) fn expired(&self, now: u64) -> Vec<(String, String)> {
        self.records()
            .into_iter()
            .flat_map(|(r, _)| {
                r.snapshots
                    .iter()
                    .filter(|s| s.expires_at.is_some_and(|t| t <= now))
                    .map(|s| (r.name.clone(), s.name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The instances whose `snapshots.schedule` names the minute of `now`,
    /// with the name their snapshot gets (`snapshots.pattern`). A stopped
    /// instance only with `snapshots.schedule.stopped`.
    pub(crate) fn scheduled(&self, now: u64) -> Vec<(String, Result<String, Error>)> {
        let mut due = Vec::new();
        for (r, running) in self.records() {
            let Some(Ok(s)) = r.get("snapshots.schedule").map(schedule::Schedule::parse) else {
                continue;
            };
            if !s.fires(now) || !(running || r.get("snapshots.schedule.stopped") == Some("true")) {
                continue;
            }
            let pattern = r
                .get("snapshots.pattern")
                .filter(|p| !p.is_empty())
                .unwrap_or("snap%d");
            let names = r.snapshots.iter().map(|s| s.name.as_str());
            let name = schedule::next_name(pattern, names).ok_or_else(|| {
                Error::Exists(format!("snapshot {}/{pattern} (snapshots.pattern)", r.name))
            });
            due.push((r.name.clone(), name));
        }
        due
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
