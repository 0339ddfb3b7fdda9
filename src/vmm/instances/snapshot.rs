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
use crate::rt::Boxed;
use crate::vmm::qga;
use crate::vmm::vm::Vm;

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
#[serde(rename_all = "snake_case")]
pub(crate) enum Pending {
    /// This tag is to go from the disk if it is there: a snapshot being
    /// taken (nobody was told it was) or deleted (it is out of the list).
    Remove(String),
    /// Putting the disk back to `tag`. The config and devices are the
    /// snapshot's already; these are the ones before, put back if the
    /// disk cannot be.
    Restore {
        tag: String,
        config: BTreeMap<String, String>,
        devices: BTreeMap<String, Device>,
    },
}

/// When a new snapshot expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// As the instance's `snapshots.expiry` says.
    Configured,
    Never,
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
/// could have shaped. It dies with the daemon: a change cut off is then
/// finished or undone by the next daemon alone, not raced by the old one.
fn qemu_img(disk: &Path, args: &[&str]) -> Result<Vec<u8>, Error> {
    let owner = std::fs::metadata(disk)
        .map_err(|e| Error::host(format!("read {}", disk.display()), e))?
        .uid();
    let mut cmd = Command::new("qemu-img");
    cmd.args(args).arg(disk);
    if crate::sys::euid() == 0 && owner != 0 {
        cmd.uid(owner).gid(owner);
    }
    crate::sys::process::die_with_parent(&mut cmd);
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
    let info: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        Error::host(
            "read the root disk's snapshots (qemu-img info)",
            std::io::Error::other(e),
        )
    })?;
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

/// The disk tag for a new snapshot `name`: its name, unless that is taken
/// by a snapshot of the record (a renamed one keeps its first), by the
/// change in `pending`, or on the disk (`on_disk`: left by a change the
/// daemon gave up on), or is all digits (qemu-img takes a number for a
/// snapshot's id before its name).
fn new_tag(rec: &Record, name: &str, on_disk: &[String]) -> String {
    let pending = match &rec.pending {
        Some(Pending::Remove(t) | Pending::Restore { tag: t, .. }) => Some(t.as_str()),
        None => None,
    };
    let free = |t: &str| {
        !t.bytes().all(|b| b.is_ascii_digit())
            && !rec.snapshots.iter().any(|s| s.tag() == t)
            && pending != Some(t)
            && !on_disk.iter().any(|d| d == t)
    };
    if free(name) {
        return name.into();
    }
    (1..)
        .map(|i| format!("{name}~{i}"))
        .find(|t| free(t))
        .unwrap_or_else(|| name.into())
}

/// The guest agent's thaw: a guest left frozen stops writing until
/// someone thaws it, so a failure is worth a warning.
async fn thaw(agent: &qga::Agent, name: &str) {
    if let Err(why) = agent.thaw().await {
        log!(
            Warn,
            "instance {name}: thawing the guest's filesystems failed: {why}"
        );
    }
}

impl Manager {
    /// Finishes the change `rec.pending` records, by what the root disk
    /// holds: a snapshot being taken is undone if the disk has it (nobody
    /// was told it was taken), a deletion is done if its tag is still
    /// there, a restore is done if its tag is there and undone (the config
    /// put back) if not; a freeze that may still hold the guest is undone. `rec` is saved; an error leaves the
    /// change recorded, for the next try.
    async fn settle(
        &self,
        e: &Entry,
        slot: &mut Option<Vm>,
        rec: &mut Record,
        state: &Path,
    ) -> Result<(), Error> {
        let Some(pending) = rec.pending.clone() else {
            return Ok(());
        };
        let name = rec.name.clone();
        let running = slot.as_mut().filter(|vm| vm.is_running());
        if let Some(d) = rec.root_disk(state) {
            let tags = disk_tags(&d).await?;
            let has = |t: &str| tags.iter().any(|d| d == t);
            // The freeze of a snapshot cut off may still hold the guest.
            if let (Pending::Remove(_), true, Some(a)) = (&pending, running.is_some(), agent_of(e))
            {
                thaw(&a, &name).await;
            }
            // A snapshot cut off is undone, a deletion done.
            match &pending {
                Pending::Remove(tag) if has(tag) => match running {
                    Some(vm) => vm.disk_snapshot("root", tag, false).await?,
                    None => snapshot_disk(&d, Act::Delete, tag).await?,
                },
                Pending::Remove(_) => {}
                Pending::Restore { tag, .. } if running.is_some() => {
                    return Err(Error::Conflict(format!(
                        "instance {name:?} runs with the restore of {tag} unfinished: stop it"
                    )));
                }
                Pending::Restore { tag, .. } if has(tag) => {
                    snapshot_disk(&d, Act::Apply, tag).await?;
                }
                Pending::Restore {
                    tag,
                    config,
                    devices,
                } => {
                    log!(
                        Warn,
                        "instance {name}: the disk has no {tag} to restore: config put back"
                    );
                    rec.config.clone_from(config);
                    rec.devices.clone_from(devices);
                }
            }
        }
        rec.pending = None;
        save(rec, &rec.dir(state)).await?;
        let (what, tag) = match &pending {
            Pending::Remove(t) => ("removed", t.as_str()),
            Pending::Restore { tag, .. } => ("restored", tag.as_str()),
        };
        log!(
            Info,
            "instance {name}: {what} disk snapshot {tag}, a change cut off earlier"
        );
        Ok(())
    }

    /// Instance `e` as stored, its lock held by the caller (`slot`), with
    /// any change left pending finished first.
    /// Boxed: it is awaited from every change, each of which would
    /// otherwise carry a copy of it.
    pub(super) fn settled<'a>(
        &'a self,
        e: &'a Entry,
        slot: &'a mut Option<Vm>,
    ) -> Boxed<'a, Result<Record, Error>> {
        Box::pin(async move {
            let host = self.host()?;
            let mut rec = current(e)?;
            if rec.pending.is_some() {
                let settled = self.settle(e, slot, &mut rec, &host.state).await;
                e.view.change(|v| v.record = rec.clone());
                settled?;
            }
            Ok(rec)
        })
    }

    /// A snapshot of the running `vm`'s root disk as tag `tag`, the
    /// guest's filesystems frozen if its agent answers; how it was taken.
    async fn live_snapshot(
        e: &Entry,
        vm: &mut Vm,
        tag: &str,
        name: &str,
    ) -> Result<&'static str, Error> {
        let agent = agent_of(e);
        let answers = match &agent {
            Some(a) => a.ping_within(AGENT_ANSWER).await.is_ok(),
            None => false,
        };
        let frozen = match (&agent, answers) {
            (Some(a), true) => a.freeze().await.is_ok(),
            _ => false,
        };
        let done = vm.disk_snapshot("root", tag, true).await;
        // A freeze that was sent, answered or not, is undone.
        if let (Some(a), true) = (&agent, answers) {
            thaw(a, name).await;
        }
        done?;
        Ok(match frozen {
            true => " with the guest's filesystems frozen",
            false => " without a guest agent to freeze it",
        })
    }

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
        let mut rec = self.settled(&e, &mut guard).await?;
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
            let tag = new_tag(&rec, snap, &disk_tags(&d).await?);
            taken.tag = (tag != snap).then(|| tag.clone());
            rec.pending = Some(Pending::Remove(tag.clone()));
            save(&rec, &dir).await?;
            let done = match guard.as_mut().filter(|vm| vm.is_running()) {
                Some(vm) => Self::live_snapshot(&e, vm, &tag, name).await,
                None => snapshot_disk(&d, Act::Take, &tag).await.map(|()| ""),
            };
            match done {
                Ok(h) => how = h,
                // Left pending: QEMU may yet finish a snapshot its client
                // gave up waiting for, and the next change of the instance
                // undoes whatever the disk then has (see `settle`).
                Err(err) => {
                    e.view.change(|v| v.record = rec);
                    return Err(err);
                }
            }
            rec.pending = None;
        }
        rec.snapshots.push(taken);
        let saved = save(&rec, &dir).await;
        if saved.is_err() {
            // instance.json still has the change as pending, if any.
            let last = rec.snapshots.pop();
            rec.pending = last
                .filter(|s| s.disk)
                .map(|s| Pending::Remove(s.tag().into()));
        }
        e.view.change(|v| v.record = rec);
        saved?;
        log!(Info, "instance {name}: snapshot {snap} taken{how}");
        Ok(())
    }

    /// Deletes snapshot `snap` of instance `name`; with `expired_by`, only
    /// if it has expired by then (checked under the instance's lock, so a
    /// snapshot made again under that name is not taken for it).
    pub(crate) async fn delete_snapshot(
        &self,
        name: &str,
        snap: &str,
        expired_by: Option<u64>,
    ) -> Result<(), Error> {
        let host = self.host()?;
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        let mut rec = self.settled(&e, &mut guard).await?;
        let Some(pos) = rec.snapshots.iter().position(|s| {
            s.name == snap && expired_by.is_none_or(|now| s.expires_at.is_some_and(|t| t <= now))
        }) else {
            return Err(Error::NotFound(format!("snapshot {name}/{snap}")));
        };
        let gone = rec.snapshots.remove(pos);
        let dir = rec.dir(&host.state);
        if let (true, Some(d)) = (gone.disk, rec.root_disk(&host.state)) {
            rec.pending = Some(Pending::Remove(gone.tag().into()));
            save(&rec, &dir).await?;
            e.view.change(|v| v.record = rec.clone());
            // Not on the disk (a change given up on): nothing to delete.
            if disk_tags(&d).await?.iter().any(|t| t == gone.tag()) {
                match guard.as_mut().filter(|vm| vm.is_running()) {
                    Some(vm) => vm.disk_snapshot("root", gone.tag(), false).await?,
                    None => snapshot_disk(&d, Act::Delete, gone.tag()).await?,
                }
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
        let mut guard = e.vm.lock().await;
        let mut rec = self.settled(&e, &mut guard).await?;
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
    /// and devices. `checked` is the snapshot as the caller's request was
    /// checked against: if `snap` is another one now (renamed meanwhile),
    /// nothing is done. A running instance is stopped at once (what it
    /// wrote since the snapshot is being thrown away) and started again
    /// after. `pins` are the checked files of disks the snapshot has and
    /// the instance no longer does.
    pub(crate) async fn restore(
        &self,
        name: &str,
        checked: &Snapshot,
        pins: &BTreeMap<String, Pin>,
    ) -> Result<(), Error> {
        let host = self.host()?;
        let snap = checked.name.as_str();
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        let old = self.settled(&e, &mut guard).await?;
        let Some(s) = old.snapshots.iter().find(|s| s.name == snap).cloned() else {
            return Err(Error::NotFound(format!("snapshot {name}/{snap}")));
        };
        if (s.created_at, &s.config, &s.devices)
            != (checked.created_at, &checked.config, &checked.devices)
        {
            return Err(Error::Conflict(format!(
                "snapshot {name}/{snap} changed while the request was checked: ask again"
            )));
        }
        let mut new: Record = old.clone();
        new.config.clone_from(&s.config);
        new.devices.clone_from(&s.devices);
        new.take_pins(&old.pins, pins)?;
        new.validate()?;
        let disk = match (s.disk, new.root_disk(&host.state)) {
            (true, Some(d)) => Some(d),
            _ => None,
        };
        if let Some(d) = &disk {
            if !disk_tags(d).await?.iter().any(|t| t == s.tag()) {
                return Err(Error::NotFound(format!(
                    "the root disk's state of snapshot {name}/{snap}"
                )));
            }
        }
        let was_running = guard.as_ref().is_some_and(|vm| vm.is_running());
        if guard.is_some() {
            self.stop_locked(&e, &mut guard, true, Duration::ZERO)
                .await?;
        }
        let dir = new.dir(&host.state);
        let applied = match &disk {
            Some(d) => {
                new.pending = Some(Pending::Restore {
                    tag: s.tag().into(),
                    config: old.config.clone(),
                    devices: old.devices.clone(),
                });
                save(&new, &dir).await?;
                e.view.change(|v| v.record = new.clone());
                snapshot_disk(d, Act::Apply, s.tag()).await
            }
            None => Ok(()),
        };
        let restored = match applied {
            Ok(()) => {
                new.pending = None;
                new.release_pins(false);
                save(&new, &dir).await?;
                e.view.change(|v| v.record = new);
                log!(Info, "instance {name}: snapshot {snap} restored");
                Ok(())
            }
            // As it was: the config too, and running if it ran.
            Err(err) => {
                save(&old, &dir).await?;
                e.view.change(|v| v.record = old);
                Err(err)
            }
        };
        if was_running {
            let started = self.start_locked(&e, &mut guard).await;
            match (&restored, started) {
                (Ok(()), started) => started?,
                (Err(_), Err(why)) => {
                    log!(Warn, "instance {name}: starting it again failed: {why}")
                }
                (Err(_), Ok(())) => {}
            }
        }
        restored
    }

    /// Finishes the snapshot change a daemon that died left in `e`'s
    /// record (see [`Manager::settle`]); called as the daemon opens its
    /// instances, after their QEMUs are re-adopted. A failure is logged and
    /// the change stays recorded: the instance's next change tries again.
    pub(super) async fn finish_pending(&self, e: &Entry) {
        let mut guard = e.vm.lock().await;
        if let Err(why) = self.settled(e, &mut guard).await {
            log!(
                Warn,
                "instance {}: the snapshot change cut off earlier is not finished: {}",
                e.view.read(|v| v.record.name.clone()),
                crate::error_chain(&why)
            );
        }
    }

    /// The instances with a snapshot past its expiry at `now`.
    pub(crate) fn expired(&self, now: u64) -> Vec<String> {
        self.records()
            .into_iter()
            .filter(|(r, _)| {
                r.snapshots
                    .iter()
                    .any(|s| s.expires_at.is_some_and(|t| t <= now))
            })
            .map(|(r, _)| r.name)
            .collect()
    }

    /// Deletes instance `name`'s snapshots past their expiry at `now`, each
    /// checked again under the instance's lock: `Some` if there were any.
    pub(crate) async fn delete_expired(&self, name: &str, now: u64) -> Option<Result<(), Error>> {
        let mut any = None;
        loop {
            let rec = match self.record(name) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            let Some(s) = rec
                .snapshots
                .iter()
                .find(|s| s.expires_at.is_some_and(|t| t <= now))
            else {
                return any;
            };
            if let Err(e) = self.delete_snapshot(name, &s.name, Some(now)).await {
                return Some(Err(e));
            }
            any = Some(Ok(()));
        }
    }

    /// The instances whose `snapshots.schedule` names any of `minutes`
    /// (Unix seconds in each), with the name their snapshot gets
    /// (`snapshots.pattern`). A stopped instance only with
    /// `snapshots.schedule.stopped`.
    pub(crate) fn scheduled(&self, minutes: &[u64]) -> Vec<(String, String)> {
        let mut due = Vec::new();
        for (r, running) in self.records() {
            let Some(Ok(s)) = r.get("snapshots.schedule").map(schedule::Schedule::parse) else {
                continue;
            };
            let fires = minutes.iter().any(|m| s.fires(*m));
            if !fires || !(running || r.get("snapshots.schedule.stopped") == Some("true")) {
                continue;
            }
            let pattern = r
                .get("snapshots.pattern")
                .filter(|p| !p.is_empty())
                .unwrap_or("snap%d");
            let names = r.snapshots.iter().map(|s| s.name.as_str());
            // None only once NAME-4294967295 is taken: nothing to take.
            if let Some(name) = schedule::next_name(pattern, names) {
                due.push((r.name.clone(), name));
            }
        }
        due
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_never_a_number_nor_one_in_use() {
        let json = br#"{"name":"v","uuid":"u","created_at":0,"uid":0,"config":{},"devices":{}}"#;
        let mut rec = Record::from_json(json).unwrap();
        let snap = |name: &str, tag: Option<&str>| Snapshot {
            name: name.into(),
            created_at: 0,
            expires_at: None,
            config: BTreeMap::new(),
            devices: BTreeMap::new(),
            disk: true,
            tag: tag.map(str::to_string),
        };
        // qemu-img would take "7" for the id of another snapshot.
        assert_eq!(new_tag(&rec, "7", &[]), "7~1");
        assert_eq!(new_tag(&rec, "s1", &[]), "s1");
        // Renamed s1b keeps tag s1; a tag the disk has but no record names.
        rec.snapshots.push(snap("s1b", Some("s1")));
        assert_eq!(new_tag(&rec, "s1", &[]), "s1~1");
        assert_eq!(new_tag(&rec, "s2", &["s2".into(), "s2~1".into()]), "s2~2");
        rec.pending = Some(Pending::Remove("s3".into()));
        assert_eq!(new_tag(&rec, "s3", &[]), "s3~1");
    }

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
