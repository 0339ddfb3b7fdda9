//! Instances: the daemon's VMs, their state on disk and their lifecycle.
//!
//! Each instance lives in `STATE/instances/<name>/`: `instance.json` (the
//! [`Record`], written crash-safe), `root.qcow2` (the overlay on its image,
//! if any) and `vm/` (the VM layer's run directory: pid record, QMP socket,
//! console log). Operations on one instance are serialised by its own async
//! lock, which also holds the running [`Vm`]: a second request on the same
//! instance waits for the first to finish (it is not refused), then acts on
//! the state the first left. Reads (`GET`) never wait: they see a snapshot
//! updated by whoever holds the lock. Nor do the ways into a running guest
//! (exec, files, console: see `guest`).

mod confine;
mod guest;
mod image;
mod record;
mod schedule;
mod seed;
mod snapshot;
mod update;
pub(crate) mod upload;
mod view;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use smol::lock::Mutex as AsyncMutex;

use crate::fault::{Blame, Fault};
use crate::hostfile::Pin;
use crate::log::log;
use crate::rt::lock;
use crate::store::{write_atomic, Overwrite};
use crate::sys::IdInUse;
use crate::vmm::accel::{self, Accel, AccelChoice, AccelMode};
use crate::vmm::vm::{self, RunAs, Vm, PRIVILEGED_WARNING};
use crate::vmm::{console, qga};
use kvmbox_aa::Kernel;

use guest::Guest;
pub(crate) use guest::{Content, Owner, Put, Started};
pub(crate) use image::{
    free_space as image_free_space, AliasChange, Aliases as ImageAliases, Image, Staged,
};
use record::AaMode;
pub(crate) use record::{check_config, check_device, Device, Record};
pub(crate) use snapshot::{Expiry, Snapshot};
pub(crate) use view::snapshot as show_snapshot;
use view::{show, Shown};

/// `instances.uid_range` when unset.
pub(crate) const DEFAULT_UID_RANGE: &str = "1000000:65536";
/// How much of the console log `GET …/console` returns.
const CONSOLE_LIMIT: u64 = 1 << 20;

/// Why an instance call failed; [`Blame`] says whose fault.
#[derive(thiserror::Error)]
pub(crate) enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    /// A request that fails one of the checks here; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// A request that clashes with the instance's state; the message says how.
    #[error("{0}")]
    Conflict(String),
    /// A request this daemon does not carry out as it is set up; the
    /// message says why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Config(#[from] crate::vmm::qemu::Error),
    #[error(transparent)]
    UidRange(#[from] vm::InvalidIdRange),
    #[error("instances.uid_range {range} cannot be used")]
    UidRangeInUse {
        range: String,
        #[source]
        source: IdInUse,
    },
    #[error("instance {name:?} cannot run as uid {uid}")]
    UidInUse {
        name: String,
        uid: u32,
        #[source]
        source: IdInUse,
    },
    #[error("invalid value for limits.memory")]
    Memory(#[source] crate::vmm::qemu::Error),
    #[error("invalid value for limits.accel")]
    Accel(#[source] accel::Error),
    #[error("device {name}")]
    Device {
        name: String,
        #[source]
        source: crate::vmm::qemu::Error,
    },
    #[error("cannot put a tap {tap} on bridge {bridge}")]
    Tap {
        tap: String,
        bridge: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "security.apparmor=required but the kernel has no AppArmor ({why}): refusing to start \
         {name} unconfined"
    )]
    NoAppArmor { name: String, why: String },
    #[error("AppArmor profile of {name}")]
    AppArmor {
        name: String,
        #[source]
        source: confine::HelperError,
    },
    #[error("qemu-img info gave an answer that is not JSON")]
    ImageInfo(#[source] serde_json::Error),
    #[error("{} is not an instance record", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    HostFile(#[from] crate::hostfile::Error),
    #[error(transparent)]
    Agent(#[from] qga::Error),
    #[error(transparent)]
    Console(#[from] console::Error),
    /// A tool in the guest, run through the agent for what the agent has
    /// no call for, said no.
    #[error("{tool} in the guest exited {status}: {said}")]
    GuestTool {
        tool: String,
        status: i32,
        said: String,
    },
    #[error(transparent)]
    Fetch(#[from] crate::fetch::Error),
    #[error("cannot {what}")]
    Host {
        what: String,
        #[source]
        source: io::Error,
    },
}

crate::debug_as_display!(Error);

impl Error {
    pub(crate) fn host(what: impl Into<String>, source: io::Error) -> Error {
        Error::Host {
            what: what.into(),
            source,
        }
    }
}

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::NotFound(_) => Fault::Missing,
            Error::Exists(_) | Error::Conflict(_) => Fault::Conflict,
            Error::Invalid(_)
            | Error::Refused(_)
            | Error::Config(_)
            | Error::UidRange(_)
            | Error::UidRangeInUse { .. }
            | Error::UidInUse { .. }
            | Error::Memory(_)
            | Error::Accel(_)
            | Error::Device { .. }
            | Error::Tap { .. }
            | Error::NoAppArmor { .. }
            | Error::GuestTool { .. } => Fault::Input,
            Error::AppArmor { source, .. } => source.fault(),
            Error::ImageInfo(_) => Fault::Peer,
            Error::Vm(e) => e.fault(),
            Error::Agent(e) => e.fault(),
            Error::Console(e) => e.fault(),
            Error::Fetch(e) => e.fault(),
            Error::HostFile(e) => e.fault(),
            Error::Record { .. } | Error::Host { .. } => Fault::Host,
        }
    }
}

/// The AppArmor state of one instance (libvirt's `seclabel`).
#[derive(Clone, Debug, Default)]
struct SecLabel {
    /// The helper loaded (or, with a test parser, compiled) the profile.
    loaded: bool,
    /// QEMU runs under the profile (the kernel has AppArmor and applied it).
    confined: bool,
    /// Why not, when not.
    reason: String,
}

/// What `GET` shows, kept current by whoever holds the instance's lock.
#[derive(Clone, Debug)]
struct View {
    record: Record,
    pid: Option<u32>,
    /// QEMU runs but could not be taken over (shown as Error, never killed).
    orphan: Option<String>,
    /// Why QEMU ended by itself (killed, an error exit), until the next
    /// start: shown as Error. Kept in memory only.
    failure: Option<String>,
    accel: Option<Accel>,
    seclabel: SecLabel,
    deleted: bool,
}

#[derive(Debug)]
struct Entry {
    /// Serialises operations; holds the running QEMU.
    vm: AsyncMutex<Option<Vm>>,
    view: Shown,
    /// The running VM's ways in, set and cleared with `vm` but read without
    /// its lock.
    guest: Mutex<Option<Guest>>,
}

/// Set once at daemon start.
#[derive(Debug)]
struct Host {
    state: PathBuf,
    ex: Arc<smol::Executor<'static>>,
    helper: confine::Helper,
    accel_mode: AccelMode,
}

/// Every instance of this daemon.
/// An instance whose name, uid and image are taken: what
/// [`Manager::create`] makes.
#[derive(Debug)]
pub(crate) struct Reserved(Record);

/// A name taken by a creation under way: its uid, and the image it
/// overlays (which must not be deleted meanwhile).
#[derive(Debug)]
struct Reservation {
    uid: u32,
    image: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Manager {
    host: OnceLock<Host>,
    accel: smol::lock::OnceCell<AccelChoice>,
    /// The accelerator probe's QEMU while it runs.
    probe: Arc<accel::Probe>,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Names and uids taken by creations under way.
    reserved: Mutex<BTreeMap<String, Reservation>>,
    /// `security.apparmor_profile_dir`, as last configured.
    profile_dir: Mutex<Option<PathBuf>>,
    /// Where the names of instances whose QEMU exited by itself are told
    /// (the server announces them); unbounded, as exits are few.
    exited: OnceLock<smol::channel::Sender<String>>,
}

/// Daemon start-up settings for [`Manager::open`].
#[derive(Debug)]
pub(crate) struct Setup {
    pub state: PathBuf,
    pub ex: Arc<smol::Executor<'static>>,
    pub accel_mode: AccelMode,
    /// `KVMBOX_AA_PARSER`: a stand-in for apparmor_parser.
    pub aa_parser: Option<String>,
}

impl Manager {
    fn host(&self) -> Result<&Host, Error> {
        self.host
            .get()
            .ok_or_else(|| Error::Refused("instances are not available in this daemon".into()))
    }

    /// Loads every instance and re-adopts the QEMUs that still run; a QEMU
    /// that died while nobody watched is shown Stopped. Then starts the
    /// accelerator probe and the reaper.
    pub(crate) async fn open(self: &Arc<Self>, setup: Setup) -> Result<(), Error> {
        let dir = setup.state.join("instances");
        mkdir(&dir, 0o711)?;
        let host = Host {
            helper: confine::Helper {
                program: confine::find_helper(),
                state_dir: setup.state.clone(),
                cache_dir: setup.state.join("apparmor-cache"),
                parser: setup.aa_parser,
            },
            state: setup.state,
            ex: setup.ex,
            accel_mode: setup.accel_mode,
        };
        let _ = self.host.set(host);
        let host = self.host()?;
        crate::store::sweep(&host.state);
        for e in fs::read_dir(&dir)
            .map_err(|e| Error::host("list instances", e))?
            .flatten()
        {
            let path = e.path().join("instance.json");
            if !path.exists() && e.file_type().is_ok_and(|t| t.is_dir()) {
                // Left by a creation or deletion the daemon did not finish:
                // the record is written last and removed first, so without
                // one nothing here belongs to anybody.
                log!(Info, "removing {}: it has no record", e.path().display());
                if let Err(why) = fs::remove_dir_all(e.path()) {
                    log!(Warn, "cannot remove {}: {why}", e.path().display());
                }
                continue;
            }
            crate::store::sweep(&e.path());
            crate::store::sweep(&e.path().join("vm"));
            let rec = match fs::read(&path)
                .map_err(|e| Error::host(format!("read {}", path.display()), e))
                .and_then(|b| {
                    Record::from_json(&b).map_err(|source| Error::Record { path, source })
                }) {
                Ok(r) => r,
                Err(why) => {
                    // A record that cannot be read is kept for its owner to
                    // look at, not taken for one that was never written.
                    log!(
                        Warn,
                        "ignoring {}: {}",
                        e.path().display(),
                        crate::error_chain(&why)
                    );
                    continue;
                }
            };
            let entry = Arc::new(Entry {
                vm: AsyncMutex::new(None),
                guest: Mutex::new(None),
                view: Shown::new(View {
                    record: rec.clone(),
                    pid: None,
                    orphan: None,
                    failure: None,
                    accel: None,
                    seclabel: SecLabel::default(),
                    deleted: false,
                }),
            });
            let run_as = self.run_as(&rec);
            let vmdir = rec.dir(&host.state).join("vm");
            // Boxed: its polling stays out of this long future.
            let adopt: crate::rt::Boxed<'_, _> = Box::pin(Vm::adopt(&vmdir, &rec.uuid, run_as));
            match adopt.await {
                Ok(vm) => {
                    log!(
                        Info,
                        "instance {}: re-adopted QEMU pid {}",
                        rec.name,
                        vm.pid()
                    );
                    let label = self.label_of_running(&rec, vm.pid());
                    entry.view.change(|v| {
                        v.pid = Some(vm.pid());
                        v.seclabel = label;
                    });
                    self.open_guest(&entry, &vm, &rec.name).await;
                    *entry.vm.lock().await = Some(vm);
                }
                Err(vm::Error::NotRunning) => {
                    if vmdir.join("qemu").exists() {
                        remove_taps(&rec);
                        // It was running when the daemon went away: its
                        // profile must not outlive it.
                        self.unload(&rec).await;
                    }
                }
                Err(e) => {
                    let why = crate::error_chain(&e);
                    log!(
                        Error,
                        "instance {}: cannot take over its QEMU: {why}",
                        rec.name
                    );
                    entry.view.change(|v| v.orphan = Some(why));
                }
            }
            self.finish_pending(&entry).await;
            lock(&self.entries).insert(rec.name.clone(), entry);
        }
        let used: Vec<PathBuf> = lock(&self.entries)
            .values()
            .filter_map(|e| {
                e.view
                    .read(|v| v.record.image.as_ref().map(|i| i.path.clone()))
            })
            .collect();
        image::tidy(&host.state, &used);
        let me = self.clone();
        host.ex
            .spawn(async move {
                me.accel().await;
            })
            .detach();
        let me = self.clone();
        host.ex.spawn(async move { me.reap().await }).detach();
        Ok(())
    }

    /// The server's accelerator choice (the probe runs once, off the executor).
    async fn accel(&self) -> AccelChoice {
        let mode = self.host.get().map_or(AccelMode::Tcg, |h| h.accel_mode);
        let scratch = self
            .host
            .get()
            .map(|h| h.state.join("accel-probe"))
            .unwrap_or_default();
        let probe = self.probe.clone();
        self.accel
            .get_or_init(|| async move {
                let qemu = PathBuf::from(format!("qemu-system-{}", std::env::consts::ARCH));
                let choice = smol::unblock(move || {
                    let _ = fs::DirBuilder::new().mode(0o700).create(&scratch);
                    probe.choose(mode, &qemu, &scratch)
                })
                .await;
                log!(Info, "accelerator: {} ({})", choice.accel, choice.reason);
                choice
            })
            .await
            .clone()
    }

    /// Ends a running accelerator probe when dropped: the daemon holds it
    /// while it runs, so that no way out leaves the probe QEMU behind.
    pub(crate) fn probe_guard(&self) -> accel::StopOnDrop {
        accel::StopOnDrop(self.probe.clone())
    }

    /// What `GET /1.0` adds to `environment`.
    pub(crate) fn environment(&self) -> Value {
        let (accel, accel_reason) = match self.accel.get() {
            Some(c) => (c.accel.to_string(), c.reason.clone()),
            None => ("probing".into(), "the accelerator probe is running".into()),
        };
        let (driver, why) = match confine::kernel() {
            Kernel::Enabled => ("apparmor", "the kernel has AppArmor".to_string()),
            Kernel::Absent(why) => ("none", format!("the kernel has no AppArmor: {why}")),
        };
        json!({
            "accelerator": accel,
            "accelerator_reason": accel_reason,
            "security_driver": driver,
            "security_driver_reason": why,
        })
    }

    /// Collects QEMUs that exited by themselves (guest power-off, crash):
    /// their instances become Stopped and their profiles are unloaded.
    async fn reap(self: Arc<Self>) {
        loop {
            smol::Timer::after(Duration::from_millis(500)).await;
            let entries: Vec<Arc<Entry>> = lock(&self.entries).values().cloned().collect();
            for e in entries {
                let Some(mut guard) = e.vm.try_lock() else {
                    continue;
                };
                if guard.as_ref().is_none_or(Vm::is_running) {
                    continue;
                }
                *lock(&e.guest) = None;
                let mut failure = None;
                if let Some(vm) = guard.take() {
                    failure = vm.failure();
                    // Nothing to wait for: this only tidies its run files.
                    let _ = vm.stop(Duration::ZERO).await;
                }
                let rec = e.view.change(|v| {
                    v.pid = None;
                    v.failure.clone_from(&failure);
                    v.record.clone()
                });
                match &failure {
                    Some(why) => log!(Warn, "instance {}: {why}", rec.name),
                    None => log!(Info, "instance {}: QEMU exited", rec.name),
                }
                if let Some(tx) = self.exited.get() {
                    let _ = tx.try_send(rec.name.clone());
                }
                remove_taps(&rec);
                rec.give_disks_back();
                self.unload(&rec).await;
                e.view.change(|v| v.seclabel = SecLabel::default());
            }
        }
    }

    /// The names of instances whose QEMU exits by itself from now on (a
    /// guest powering off, a crash), as the reaper notices them. Only the
    /// first caller is told.
    pub(crate) fn exits(&self) -> smol::channel::Receiver<String> {
        let (tx, rx) = smol::channel::unbounded();
        let _ = self.exited.set(tx);
        rx
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, Error> {
        lock(&self.entries)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("instance {name:?}")))
    }

    fn run_as(&self, rec: &Record) -> RunAs {
        if rec.privileged() || crate::sys::euid() != 0 {
            RunAs::Privileged
        } else {
            RunAs::Isolated {
                uid: rec.uid,
                gid: rec.uid,
            }
        }
    }

    /// Every instance as `GET /1.0/instances/<name>` shows it.
    pub(crate) fn list(&self, state: bool) -> Vec<Value> {
        let entries: Vec<Arc<Entry>> = lock(&self.entries).values().cloned().collect();
        entries
            .iter()
            .map(|e| e.view.read(|v| show(v, state)))
            .collect()
    }

    /// Every instance's JSON as `GET /1.0/instances?recursion=1` shows it,
    /// as rendered at its last change.
    pub(crate) fn list_json(&self) -> Vec<Arc<[u8]>> {
        let entries: Vec<Arc<Entry>> = lock(&self.entries).values().cloned().collect();
        entries.iter().map(|e| e.view.json()).collect()
    }

    /// Every instance's record, and whether its QEMU runs.
    fn records(&self) -> Vec<(Record, bool)> {
        let entries: Vec<Arc<Entry>> = lock(&self.entries).values().cloned().collect();
        entries
            .iter()
            .filter_map(|e| {
                e.view
                    .read(|v| (!v.deleted).then(|| (v.record.clone(), v.pid.is_some())))
            })
            .collect()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        lock(&self.entries).keys().cloned().collect()
    }

    /// Instance `name` as stored now.
    pub(crate) fn record(&self, name: &str) -> Result<Record, Error> {
        current(&*self.entry(name)?)
    }

    pub(crate) fn get(&self, name: &str, state: bool) -> Result<Value, Error> {
        Ok(self.entry(name)?.view.read(|v| show(v, state)))
    }

    /// Creates an instance (stopped). Nothing is left behind on failure.
    /// The first half of a creation, which takes no time: checks
    /// everything, and takes the name, a uid and the image, so that what
    /// is refused is refused at once and the rest ([`Manager::create`])
    /// cannot clash with another creation or an image's deletion.
    pub(crate) fn reserve(
        &self,
        name: &str,
        image: Option<&str>,
        config: BTreeMap<String, String>,
        devices: BTreeMap<String, Device>,
        pins: &BTreeMap<String, Pin>,
        uid_range: &str,
    ) -> Result<Reserved, Error> {
        let host = self.host()?;
        let range: vm::IdRange = uid_range.parse()?;
        // Again here, not only when the range was set: accounts come later.
        range.unused().map_err(|source| Error::UidRangeInUse {
            range: uid_range.to_string(),
            source,
        })?;
        crate::vmm::qemu::validate_name(name)?;
        // Found again under the locks below: that is the one that counts.
        let image_ref = match image {
            Some(alias) => Some(image::find(&host.state, alias)?),
            None => None,
        };
        let mut rec = Record {
            name: name.into(),
            uuid: crate::uuid::new(),
            created_at: crate::clock::now(),
            uid: 0,
            image: image_ref,
            config,
            devices,
            pins: BTreeMap::new(),
            snapshots: Vec::new(),
            pending: None,
        };
        if rec.image.is_some() && !rec.devices.contains_key("root") {
            let mut root = Device::new();
            root.insert("type".into(), "disk".into());
            root.insert("path".into(), "/".into());
            rec.devices.insert("root".into(), root);
        }
        rec.take_pins(&BTreeMap::new(), pins)?;
        rec.validate()?;
        {
            let entries = lock(&self.entries);
            let mut reserved = lock(&self.reserved);
            if entries.contains_key(name) || reserved.contains_key(name) {
                return Err(Error::Exists(format!("instance {name:?}")));
            }
            // Under the locks an image deletion takes: the image cannot go
            // between this look-up and the instance's entry.
            if let Some(alias) = image {
                rec.image = Some(image::find(&host.state, alias)?);
            }
            let used: Vec<u32> = entries
                .values()
                .map(|e| e.view.read(|v| v.record.uid))
                .chain(reserved.values().map(|r| r.uid))
                .collect();
            rec.uid = match range.pick(&used) {
                Some(RunAs::Isolated { uid, .. }) => uid,
                _ => {
                    return Err(Error::Refused(format!(
                        "no free uid left in instances.uid_range {uid_range}"
                    )))
                }
            };
            reserved.insert(
                name.into(),
                Reservation {
                    uid: rec.uid,
                    image: rec.image.as_ref().map(|i| i.fingerprint.clone()),
                },
            );
        }
        Ok(Reserved(rec))
    }

    /// Creates the instance [`Manager::reserve`] made room for (stopped).
    /// Nothing is left behind on failure.
    pub(crate) async fn create(&self, reserved: Reserved) -> Result<Value, Error> {
        let Reserved(rec) = reserved;
        let name = rec.name.as_str();
        let dir = rec.dir(&self.host()?.state);
        if let Err(e) = self.materialise(&rec, &dir).await {
            lock(&self.reserved).remove(name);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let view = View {
            record: rec.clone(),
            pid: None,
            orphan: None,
            failure: None,
            accel: None,
            seclabel: SecLabel::default(),
            deleted: false,
        };
        let shown = show(&view, false);
        // The entry takes over from the reservation with no gap between.
        let mut entries = lock(&self.entries);
        entries.insert(
            rec.name.clone(),
            Arc::new(Entry {
                vm: AsyncMutex::new(None),
                guest: Mutex::new(None),
                view: Shown::new(view),
            }),
        );
        lock(&self.reserved).remove(name);
        drop(entries);
        log!(Info, "instance {name} created (uid {})", rec.uid);
        Ok(shown)
    }

    async fn materialise(&self, rec: &Record, dir: &Path) -> Result<(), Error> {
        match fs::DirBuilder::new().mode(0o711).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left by a creation that crashed: no record, so nobody's.
                if dir.join("instance.json").exists() {
                    return Err(Error::Exists(format!("instance {:?}", rec.name)));
                }
                fs::remove_dir_all(dir).map_err(|e| Error::host("clear a stale directory", e))?;
                mkdir(dir, 0o711)?;
            }
            Err(e) => return Err(Error::host(format!("create {}", dir.display()), e)),
        }
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o711));
        if let (Some(img), Some(root)) = (
            rec.image.clone(),
            rec.root_disk(self.host()?.state.as_path()),
        ) {
            smol::unblock(move || image::overlay(&img, &root)).await?;
        }
        save(rec, dir).await
    }

    /// Starts a stopped instance.
    pub(crate) async fn start(&self, name: &str) -> Result<(), Error> {
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        self.start_locked(&e, &mut guard).await
    }

    async fn start_locked(&self, e: &Entry, slot: &mut Option<Vm>) -> Result<(), Error> {
        let host = self.host()?;
        // Never on a disk a snapshot change left half-done.
        let rec = self.settled(e, slot).await?;
        if let Some(vm) = slot.as_ref().filter(|vm| vm.is_running()) {
            return Err(Error::Conflict(format!(
                "instance {:?} is already running (pid {})",
                rec.name,
                vm.pid()
            )));
        }
        if let Some(why) = e.view.read(|v| v.orphan.clone()) {
            return Err(Error::Conflict(format!(
                "instance {:?} has a QEMU the daemon could not take over ({why}); end it first",
                rec.name
            )));
        }
        let run_as = self.run_as(&rec);
        if let RunAs::Isolated { uid, .. } = run_as {
            // Again at each start, not only at creation: an account or a
            // subordinate range given out since then owns the id now.
            crate::sys::ids_unused(uid..=uid).map_err(|source| Error::UidInUse {
                name: rec.name.clone(),
                uid,
                source,
            })?;
        }
        let accel = match rec.accel_mode() {
            AccelMode::Kvm => Accel::Kvm,
            AccelMode::Tcg => Accel::Tcg,
            AccelMode::Auto => self.accel().await.accel,
        };
        let mut spec = rec.spec(&host.state, run_as, accel)?;
        if run_as == RunAs::Privileged {
            if rec.privileged() {
                log!(Warn, "instance {}: {PRIVILEGED_WARNING}", rec.name);
            } else {
                log!(
                    Info,
                    "instance {}: the daemon is not root, so QEMU runs as its uid {}",
                    rec.name,
                    crate::sys::euid()
                );
            }
        }
        // The helper resolves the run files' directories: they must exist.
        mkdir(&spec.dir, 0o711)?;
        mkdir(&spec.dir.join("qemu"), 0o700)?;
        let label = self.load(&rec).await?;
        if label.confined {
            spec.apparmor = Some(vm::AppArmor {
                profile: profile_name(&rec.uuid),
                required: rec.apparmor() == AaMode::Required,
            });
        }
        let taps = rec.bridged();
        for (i, (tap, (_, bridge))) in taps.iter().enumerate() {
            if let Err(source) = crate::sys::process::create_tap(tap, bridge) {
                for (t, _) in taps.iter().take(i) {
                    let _ = crate::sys::process::delete_tap(t);
                }
                self.unload(&rec).await;
                return Err(Error::Tap {
                    tap: tap.clone(),
                    bridge: bridge.clone(),
                    source,
                });
            }
        }
        match Vm::spawn(&spec).await {
            Ok(vm) => {
                e.view.change(|v| {
                    v.pid = Some(vm.pid());
                    v.accel = Some(accel);
                    v.seclabel = label;
                    v.failure = None;
                });
                log!(
                    Info,
                    "instance {} started (pid {}, {accel})",
                    rec.name,
                    vm.pid()
                );
                self.open_guest(e, &vm, &rec.name).await;
                *slot = Some(vm);
                Ok(())
            }
            Err(err) => {
                // A failed start leaves no profile loaded (libvirt does),
                // no tap, and no disk handed over.
                remove_taps(&rec);
                rec.give_disks_back();
                self.unload(&rec).await;
                Err(err.into())
            }
        }
    }

    /// Stops a running instance: ACPI power button, then after `timeout`
    /// (or at once with `force`) QEMU is ended.
    pub(crate) async fn stop(
        &self,
        name: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(), Error> {
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        self.stop_locked(&e, &mut guard, force, timeout).await
    }

    async fn stop_locked(
        &self,
        e: &Entry,
        slot: &mut Option<Vm>,
        force: bool,
        timeout: Duration,
    ) -> Result<(), Error> {
        let rec = current(e)?;
        let Some(vm) = slot.take() else {
            return Err(Error::Conflict(format!(
                "instance {:?} is not running",
                rec.name
            )));
        };
        *lock(&e.guest) = None;
        let how = if force {
            vm.kill().await.map(|()| "forced")
        } else {
            vm.stop(timeout).await.map(|s| match s {
                vm::Stopped::Graceful => "graceful",
                vm::Stopped::Forced => "forced after the timeout",
            })
        };
        e.view.change(|v| v.pid = None);
        remove_taps(&rec);
        rec.give_disks_back();
        self.unload(&rec).await;
        e.view.change(|v| v.seclabel = SecLabel::default());
        let how = how?;
        log!(Info, "instance {} stopped ({how})", rec.name);
        Ok(())
    }

    pub(crate) async fn restart(
        &self,
        name: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(), Error> {
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        if guard.is_some() {
            self.stop_locked(&e, &mut guard, force, timeout).await?;
        }
        self.start_locked(&e, &mut guard).await
    }

    /// Deletes an instance; a running one only with `force`.
    pub(crate) async fn delete(&self, name: &str, force: bool) -> Result<(), Error> {
        let host = self.host()?;
        let e = self.entry(name)?;
        let mut guard = e.vm.lock().await;
        let rec = current(&e)?;
        if guard.is_some() {
            if !force {
                return Err(Error::Conflict(format!(
                    "instance {name:?} is running: stop it first, or delete it with --force"
                )));
            }
            self.stop_locked(&e, &mut guard, true, Duration::ZERO)
                .await?;
        }
        if rec.apparmor() != AaMode::Off {
            let profile_dir = self.profile_dir();
            let helper = host.helper.clone();
            let uuid = rec.uuid.clone();
            let r =
                smol::unblock(move || helper.run("delete", &[], &uuid, &profile_dir, false, None))
                    .await;
            if let Err(why) = r {
                log!(
                    Warn,
                    "instance {name}: removing its AppArmor profile failed: {}",
                    crate::error_chain(&why)
                );
            }
        }
        let mut rec = rec;
        rec.release_pins(true);
        let dir = rec.dir(&host.state);
        // The record goes first: a crash half-way leaves a directory
        // without one, which the next start ignores and creation clears.
        let _ = fs::remove_file(dir.join("instance.json"));
        smol::unblock(move || fs::remove_dir_all(&dir))
            .await
            .map_err(|e| Error::host("remove the instance's directory", e))?;
        e.view.change(|v| v.deleted = true);
        lock(&self.entries).remove(name);
        log!(Info, "instance {name} deleted");
        Ok(())
    }

    /// The tail of the serial console log.
    pub(crate) fn console(&self, name: &str) -> Result<String, Error> {
        let rec = current(&*self.entry(name)?)?;
        let host = self.host()?;
        match vm::read_console(&rec.dir(&host.state).join("vm"), CONSOLE_LIMIT) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::host("read the console log", e)),
        }
    }

    /// Empties the serial console log.
    pub(crate) fn clear_console(&self, name: &str) -> Result<(), Error> {
        let rec = current(&*self.entry(name)?)?;
        let host = self.host()?;
        match vm::clear_console(&rec.dir(&host.state).join("vm")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(Error::host("clear the console log", e))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn images(&self) -> Result<Vec<Image>, Error> {
        image::list(&self.host()?.state)
    }

    /// Every image alias, by name.
    pub(crate) fn image_aliases(&self) -> Result<ImageAliases, Error> {
        image::aliases(&self.host()?.state)
    }

    /// Changes the image alias table.
    pub(crate) fn change_alias(&self, change: AliasChange) -> Result<(), Error> {
        image::change_alias(&self.host()?.state, change)
    }

    /// Where the image store is (for staging a new image in it).
    pub(crate) fn state_dir(&self) -> Result<PathBuf, Error> {
        Ok(self.host()?.state.clone())
    }

    /// The image whose fingerprint starts with `prefix` (LXD takes any
    /// unique prefix).
    pub(crate) fn image(&self, prefix: &str) -> Result<Image, Error> {
        image::by_prefix(&self.host()?.state, prefix)
    }

    /// Deletes the image whose fingerprint starts with `prefix`, unless an
    /// instance (or one being created) overlays it.
    pub(crate) fn delete_image(&self, prefix: &str) -> Result<Image, Error> {
        let state = self.host()?.state.clone();
        let entries = lock(&self.entries);
        let reserved = lock(&self.reserved);
        let img = image::by_prefix(&state, prefix)?;
        let fp = Some(img.fingerprint.as_str());
        let user = entries
            .iter()
            .find(|(_, e)| {
                e.view
                    .read(|v| v.record.image.as_ref().map(|i| i.fingerprint.as_str()) == fp)
            })
            .map(|(n, _)| n.clone())
            .or_else(|| {
                reserved
                    .iter()
                    .find(|(_, r)| r.image.as_deref() == fp)
                    .map(|(n, _)| n.clone())
            });
        if let Some(name) = user {
            return Err(Error::Conflict(format!(
                "image {} is in use by instance {name:?}: delete the instance first",
                img.fingerprint
            )));
        }
        image::remove(&state, &img)?;
        log!(Info, "image {} deleted", img.fingerprint);
        Ok(img)
    }

    /// Imports an image; `progress` sees the operation's metadata change
    /// as the copy goes (`{"progress": {"percent": N, "done": B, "total": B}}`).
    pub(crate) async fn import_image(
        &self,
        file: fs::File,
        source: PathBuf,
        alias: String,
        progress: impl Fn(Value) + Send + 'static,
    ) -> Result<Image, Error> {
        let state = self.host()?.state.clone();
        smol::unblock(move || {
            let last = std::cell::Cell::new(u64::MAX);
            let report = |done: u64, total: u64| {
                let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
                if last.replace(percent) != percent {
                    progress(json!({
                        "progress": {"percent": percent, "done": done, "total": total}
                    }));
                }
            };
            image::import(&state, file, &source, &alias, &report)
        })
        .await
    }

    /// Stores as `alias` a disk that `fill` downloads (see
    /// [`image::fetched`]); it blocks, for a blocking thread.
    pub(crate) fn fetch_image(
        &self,
        source: &str,
        alias: &str,
        (fingerprint, size): (&str, u64),
        fill: impl FnOnce(&mut fs::File) -> Result<u64, Error>,
    ) -> Result<Image, Error> {
        image::fetched(
            &self.host()?.state,
            source,
            alias,
            (fingerprint, size),
            fill,
        )
    }

    /// The executor long work runs on.
    pub(crate) fn executor(&self) -> Result<Arc<smol::Executor<'static>>, Error> {
        Ok(self.host()?.ex.clone())
    }

    /// Where the VM profiles go (`security.apparmor_profile_dir`; `None`:
    /// the helper's default). The server hands it over before every
    /// instance call, so that a change applies at once.
    pub(crate) fn set_profile_dir(&self, dir: Option<PathBuf>) {
        *lock(&self.profile_dir) = dir;
    }
}

/// Removes the taps of the instance's bridged NICs; gone already is fine.
fn remove_taps(rec: &Record) {
    for (tap, _) in rec.bridged() {
        if Path::new("/sys/class/net").join(&tap).exists() {
            if let Err(e) = crate::sys::process::delete_tap(&tap) {
                log!(Warn, "instance {}: cannot remove tap {tap}: {e}", rec.name);
            }
        }
    }
}

fn profile_name(uuid: &str) -> String {
    format!("kvmbox-{uuid}")
}

fn current(e: &Entry) -> Result<Record, Error> {
    e.view.read(|v| {
        if v.deleted {
            return Err(Error::NotFound(format!("instance {:?}", v.record.name)));
        }
        Ok(v.record.clone())
    })
}

fn mkdir(dir: &Path, mode: u32) -> Result<(), Error> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::host(format!("create {}", dir.display()), e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::host(format!("set the mode of {}", dir.display()), e))
}

async fn save(rec: &Record, dir: &Path) -> Result<(), Error> {
    let data = serde_json::to_vec_pretty(rec).unwrap_or_default();
    let path = dir.join("instance.json");
    smol::unblock(move || write_atomic(&path, &data, 0o600, Overwrite::Replace))
        .await
        .map_err(|e| Error::host("save the instance", e))
}
