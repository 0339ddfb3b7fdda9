//! One VM's QEMU process: spawn it isolated, adopt it again after a daemon
//! restart, stop it, hot-plug disks. Async on smol; one [`Vm`] per running
//! VM, owned by whoever serialises operations on that instance.
//!
//! Layout of a VM's runtime directory `dir` (the daemon picks it):
//! - `dir/` root, 0711: traversable, not listable, by the VM's uid;
//! - `dir/vm.pid` root, 0600: the pid we started, trusted for adoption;
//! - `dir/qemu/` the VM's uid, 0700: the QMP, serial console and guest
//!   agent sockets, QEMU's pid file, the console log and QEMU's own stderr
//!   (`qemu.log`). Other VMs' uids cannot enter it (the VM analogue of
//!   LXD's `security.idmap.isolated`).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smol::Timer;

use crate::fault::{Blame, Fault};
use crate::hostfile::{self, Pin};
use crate::store::{write_atomic, Overwrite};
use crate::sys::process::{self, Exit, State, EXIT_APPARMOR};
use crate::vmm::console::{self, Console, Pump};
use crate::vmm::qemu::{self, Boot, Disk, Nic, RunFiles, VmConfig};
use crate::vmm::qga::{self, Agent};
use crate::vmm::qmp::{self, Qmp, Ready, Status};

/// What the daemon logs when a VM runs with `security.privileged=true`.
pub const PRIVILEGED_WARNING: &str =
    "security.privileged is set: QEMU runs as root, so a guest that escapes QEMU's \
     sandbox owns the host and can read every other VM's disks";

/// Whom QEMU runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// Its own uid/gid with no supplementary groups (the default).
    Isolated { uid: u32, gid: u32 },
    /// The daemon's own uid (root in production): see [`PRIVILEGED_WARNING`].
    Privileged,
}

/// The configured range VM uids/gids are taken from (uid = gid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub count: u32,
}

/// An `instances.uid_range` that cannot be one.
#[derive(thiserror::Error)]
pub enum InvalidIdRange {
    #[error("{0:?} is not FIRST:COUNT (e.g. 1000000:65536)")]
    Syntax(String),
    #[error("{0:?} starts below {MIN_ID}, among the host's own accounts")]
    Low(String),
}

crate::debug_as_display!(InvalidIdRange);

/// The lowest id a range may start at: below it are the host's own
/// accounts (system users, people, `nobody` at 65534).
const MIN_ID: u32 = 65536;

/// How long [`Vm::adopt`] waits for a QEMU that runs but is not ready.
const ADOPT_GRACE: Duration = Duration::from_secs(5);

/// `FIRST:COUNT`; a range that starts below [`MIN_ID`] or wraps is refused.
/// Pure syntax: see [`IdRange::unused`] for the host's accounts.
impl std::str::FromStr for IdRange {
    type Err = InvalidIdRange;
    fn from_str(s: &str) -> Result<IdRange, InvalidIdRange> {
        let bad = || InvalidIdRange::Syntax(s.to_string());
        let (f, c) = s.split_once(':').ok_or_else(bad)?;
        let first: u32 = f.parse().map_err(|_| bad())?;
        let count: u32 = c.parse().map_err(|_| bad())?;
        if count == 0 || first.checked_add(count).is_none() {
            return Err(bad());
        }
        if first < MIN_ID {
            return Err(InvalidIdRange::Low(s.to_string()));
        }
        Ok(IdRange { first, count })
    }
}

impl IdRange {
    /// Refuses a range holding the uid of a user or the gid of a group of
    /// this host, or a subordinate id of one: a VM's QEMU runs as that id
    /// and could use the account's files, or the account could signal and
    /// trace the VM.
    pub(crate) fn unused(&self) -> Result<(), crate::sys::IdInUse> {
        // Parsing made sure first + count does not wrap.
        let last = self.first.saturating_add(self.count.saturating_sub(1));
        crate::sys::ids_unused(self.first..=last)
    }

    /// The lowest id of the range not in `in_use`.
    pub fn pick(&self, in_use: &[u32]) -> Option<RunAs> {
        (0..self.count)
            .filter_map(|i| self.first.checked_add(i))
            .find(|id| !in_use.contains(id))
            .map(|id| RunAs::Isolated { uid: id, gid: id })
    }
}

/// An AppArmor profile QEMU is exec'd into.
#[derive(Clone, Debug)]
pub struct AppArmor {
    pub profile: String,
    /// Refuse to run QEMU unconfined when the label cannot be applied.
    pub required: bool,
}

/// Everything needed to start a VM.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub config: VmConfig,
    /// The VM's runtime directory (see the module docs); its parent must be
    /// traversable by the VM's uid.
    pub dir: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    pub run_as: RunAs,
    /// Every disk's file as it was checked (see [`Pin`]): a disk is handed
    /// to QEMU's uid only through its pin, found by its real path, which is
    /// the disk's `path`. A disk without one is refused.
    pub pins: Vec<Pin>,
    pub apparmor: Option<AppArmor>,
    /// Limit on QEMU coming up with its QMP socket.
    pub start_timeout: Duration,
}

/// How a stop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The guest powered off after the ACPI button.
    Graceful,
    /// The guest did not react in time; QEMU was ended.
    Forced,
}

/// Errors of the VM layer.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("invalid VM configuration")]
    Config(#[from] qemu::Error),
    #[error("{what} {} does not exist", path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("running QEMU under a VM's own uid needs root; run kvmboxd as root or set security.privileged")]
    NeedRoot,
    #[error("the VM is already running (pid {0})")]
    AlreadyRunning(u32),
    #[error("the VM is not running")]
    NotRunning,
    #[error("cannot {what}")]
    Host { what: String, source: io::Error },
    #[error("QEMU exited during start-up ({code}): {log}")]
    StartFailed { code: String, log: String },
    #[error("QEMU could not be confined by AppArmor profile {0} and confinement is required")]
    AppArmor(String),
    #[error("QEMU did not open its QMP socket within {0}s")]
    StartTimeout(u64),
    #[error("process {pid} is not this VM's QEMU: {why}")]
    NotOurs { pid: u32, why: String },
    #[error("no free hotplug port: all {0} are in use")]
    NoFreePort(usize),
    #[error("QEMU monitor")]
    Qmp(#[from] qmp::Error),
    #[error("disk {} was never checked: it has no pin", .0.display())]
    Unpinned(PathBuf),
    #[error("cannot hand a disk to the VM")]
    Disk(#[from] hostfile::Error),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::Config(_)
            | Error::Missing { .. }
            | Error::AlreadyRunning(_)
            | Error::NotRunning
            | Error::NoFreePort(_)
            | Error::Unpinned(_)
            | Error::Disk(_) => Fault::Input,
            Error::NeedRoot | Error::Host { .. } | Error::AppArmor(_) => Fault::Host,
            Error::StartFailed { .. } | Error::StartTimeout(_) | Error::NotOurs { .. } => {
                Fault::Peer
            }
            Error::Qmp(e) => e.fault(),
        }
    }
}

fn host(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Host { what, source }
}

fn qemu_dir(dir: &Path) -> PathBuf {
    dir.join("qemu")
}

/// Where the serial console of the VM in `dir` is logged.
pub fn console_log(dir: &Path) -> PathBuf {
    RunFiles::in_dir(&qemu_dir(dir)).console
}

/// A running VM's QEMU, with a negotiated QMP session.
#[derive(Debug)]
pub struct Vm {
    pid: u32,
    dir: PathBuf,
    run_as: RunAs,
    qmp: Qmp<Ready>,
    /// The one client of the guest agent's channel (QEMU serves one).
    agent: Agent,
    /// How QEMU ended, once it has: the kernel tells a parent only once.
    ended: std::sync::OnceLock<Exit>,
}

fn ids(run_as: RunAs) -> Option<(u32, u32)> {
    match run_as {
        RunAs::Isolated { uid, gid } => Some((uid, gid)),
        RunAs::Privileged => None,
    }
}

/// The uid that owns what is handed to a VM running as `identity`.
fn holder(run_as: RunAs) -> u32 {
    ids(run_as).map_or_else(process::euid, |(uid, _)| uid)
}

/// Makes `path` the VM's own: owned by its uid, closed to everyone else.
/// The change goes through a descriptor opened without following a final
/// symlink: the VM's uid can plant links in its own directory, and root
/// must not be tricked into handing it /etc/shadow.
fn give(path: &Path, run_as: RunAs, mode: u32) -> Result<(), Error> {
    let what = || format!("take ownership of {} for the VM", path.display());
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(host(what()))?;
    if let Some((uid, gid)) = ids(run_as) {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(host(what()))?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(host(what()))
}

/// Hands a disk to the VM like [`give`], through its pin: only the very file
/// that was checked, still owned by whom it was checked for (or already by
/// the VM), whatever its path leads to by now.
fn give_disk(pins: &[Pin], disk: &Disk, run_as: RunAs) -> Result<(), Error> {
    let pin = pins
        .iter()
        .find(|p| p.real == disk.path)
        .ok_or_else(|| Error::Unpinned(disk.path.clone()))?;
    Ok(pin.chown(&[pin.uid, holder(run_as)], ids(run_as), 0o600)?)
}

/// Reads a file the VM's uid may control, as root: no symlinks, bounded.
fn read_untrusted(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(limit)))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `limit` bytes of the serial console of the VM in `dir`, for
/// `GET /1.0/instances/<name>/console`. Use this, not a plain read: the file
/// belongs to the VM's uid.
pub fn read_console(dir: &Path, limit: u64) -> io::Result<String> {
    read_untrusted(&console_log(dir), limit)
}

/// Empties the serial console log of the VM in `dir` (QEMU appends on).
/// The file belongs to the VM's uid: it is opened without following links
/// and must be a plain file with one name.
pub(crate) fn clear_console(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(console_log(dir))?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a plain file with one name",
        ));
    }
    file.set_len(0)
}

fn tail(path: &Path) -> String {
    let text = read_untrusted(path, 64 * 1024).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let t = lines.get(start..).unwrap_or_default().join(" / ");
    if t.is_empty() {
        "no message".into()
    } else {
        t
    }
}

fn require_file(what: &'static str, path: &Path) -> Result<(), Error> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::Missing {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// Polls `pid` until it is gone or `limit` passes; the last state seen.
async fn wait_state(pid: u32, limit: Duration) -> State {
    let deadline = Instant::now() + limit;
    loop {
        let st = process::state(pid);
        if st != State::Running || Instant::now() >= deadline {
            return st;
        }
        Timer::after(Duration::from_millis(50)).await;
    }
}

async fn wait_exit(pid: u32, limit: Duration) -> bool {
    wait_state(pid, limit).await != State::Running
}

/// Why QEMU ended during start-up, from its exit code and its own words.
fn start_failure(code: Option<i32>, apparmor: Option<&AppArmor>, log: &Path) -> Error {
    match (code, apparmor) {
        (Some(EXIT_APPARMOR), Some(a)) => Error::AppArmor(a.profile.clone()),
        _ => Error::StartFailed {
            code: code.map_or("killed".to_string(), |c| format!("exit code {c}")),
            log: tail(log),
        },
    }
}

/// Whether process `pid` (a VM's QEMU) is still there; reaps it when it was
/// our child. A daemon that keeps [`Vm`]s should call this (or
/// [`Vm::is_running`]) now and then so that QEMUs that exit are collected.
pub fn process_running(pid: u32) -> bool {
    process::state(pid) == State::Running
}

/// Removes what a QEMU that is gone leaves behind; the console log stays.
fn clean_up(dir: &Path) {
    let files = RunFiles::in_dir(&qemu_dir(dir));
    let sockets = [files.qmp, files.console_socket, files.agent];
    for f in [dir.join("vm.pid"), files.pidfile]
        .into_iter()
        .chain(sockets)
    {
        let _ = fs::remove_file(f);
    }
}

/// The pid recorded for the VM in `dir`, if any: ours, else QEMU's own pid
/// file (a daemon killed between fork and writing its record leaves only
/// that). QEMU's file is written by the VM's uid, so either way the pid is
/// only a candidate until [`verify`] has looked at the process.
fn recorded_pid(dir: &Path) -> Option<u32> {
    let ours = fs::read_to_string(dir.join("vm.pid")).ok();
    let text =
        ours.or_else(|| read_untrusted(&RunFiles::in_dir(&qemu_dir(dir)).pidfile, 32).ok())?;
    text.trim().parse().ok()
}

/// Checks that `pid` is the QEMU we started for `uuid` in `dir`, as `identity`.
/// Without `identity`, any uid will do (to find a VM that runs already).
fn verify(pid: u32, dir: &Path, uuid: &str, run_as: Option<RunAs>) -> Result<(), Error> {
    let not_ours = |why: &str| Error::NotOurs {
        pid,
        why: why.to_string(),
    };
    if process::state(pid) != State::Running {
        return Err(not_ours("no such process"));
    }
    let raw = fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| not_ours("its command line is unreadable"))?;
    let argv: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let prog = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or_default())
        .unwrap_or_default();
    if !prog.starts_with("qemu-system") {
        return Err(not_ours("it is not QEMU"));
    }
    let value = |flag: &str| {
        argv.windows(2)
            .find(|w| w.first().map(String::as_str) == Some(flag))
            .and_then(|w| w.get(1).cloned())
    };
    if value("-uuid").as_deref() != Some(uuid) {
        return Err(not_ours("it runs another VM"));
    }
    let qmp = qemu::validate_path("QMP socket", &RunFiles::in_dir(&qemu_dir(dir)).qmp)?;
    if !value("-qmp").is_some_and(|q| q.starts_with(&format!("unix:{},", qmp.replace(',', ",,")))) {
        return Err(not_ours("its QMP socket is elsewhere"));
    }
    let want = match run_as {
        None => return Ok(()),
        Some(RunAs::Isolated { uid, .. }) => uid,
        Some(RunAs::Privileged) => process::euid(),
    };
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok());
    if uid != Some(want) {
        return Err(not_ours("it runs under another uid"));
    }
    Ok(())
}

impl Vm {
    /// Starts QEMU for `spec` and connects to it. On failure nothing is left
    /// running and no pid or socket file remains.
    pub async fn spawn(spec: &VmSpec) -> Result<Vm, Error> {
        // Everything is checked before anything is created.
        let qdir = qemu_dir(&spec.dir);
        let files = RunFiles::in_dir(&qdir);
        let argv = qemu::command_line(&spec.config, &files)?;
        if let Boot::Kernel { kernel, initrd, .. } = &spec.config.boot {
            require_file("kernel", kernel)?;
            if let Some(i) = initrd {
                require_file("initrd", i)?;
            }
        }
        for d in &spec.config.disks {
            require_file("disk", &d.path)?;
        }
        let taps: Vec<&str> = spec
            .config
            .nics
            .iter()
            .filter_map(|n| match n {
                Nic::Tap { ifname, .. } => Some(ifname.as_str()),
                Nic::User { .. } => None,
            })
            .collect();
        for t in &taps {
            // Opening a tap that does not exist would create a stray one on
            // no bridge: the daemon creates it and puts it on its bridge.
            let sys = Path::new("/sys/class/net").join(t);
            if !sys.exists() {
                return Err(Error::Missing {
                    what: "tap device",
                    path: sys,
                });
            }
        }
        if matches!(spec.run_as, RunAs::Isolated { .. }) && process::euid() != 0 {
            return Err(Error::NeedRoot);
        }
        if let Some(pid) = recorded_pid(&spec.dir) {
            // Whatever uid it runs as: two QEMUs on the same disks must never be.
            if verify(pid, &spec.dir, &spec.config.uuid, None).is_ok() {
                return Err(Error::AlreadyRunning(pid));
            }
        }

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&spec.dir)
            .map_err(host(format!("create {}", spec.dir.display())))?;
        fs::set_permissions(&spec.dir, fs::Permissions::from_mode(0o711))
            .map_err(host("set the VM directory's mode"))?;
        clean_up(&spec.dir);
        match fs::DirBuilder::new().mode(0o700).create(&qdir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(host(format!("create {}", qdir.display()))(e)),
        }
        give(&qdir, spec.run_as, 0o700)?;
        for d in &spec.config.disks {
            give_disk(&spec.pins, d, spec.run_as)?;
        }
        // A fresh start: no file of an earlier run, possibly a link planted by
        // the VM's uid or owned by a uid this VM had before.
        let log_path = files.stderr.clone();
        for f in [&log_path, &files.console] {
            match fs::remove_file(f) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(host(format!("remove {}", f.display()))(e))
                }
                _ => {}
            }
        }
        let log = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&log_path)
            .map_err(host("create QEMU's log"))?;
        give(&log_path, spec.run_as, 0o600)?;
        let fds = taps
            .iter()
            .map(|t| process::open_tap(t).map_err(host(format!("open tap device {t}"))))
            .collect::<Result<Vec<_>, _>>()?;

        let pid = process::spawn(process::Spawn {
            program: spec.qemu.clone(),
            args: argv,
            ids: ids(spec.run_as),
            log,
            apparmor: spec.apparmor.as_ref().map(|a| process::Label {
                profile: a.profile.clone(),
                required: a.required,
            }),
            fds,
            // Re-adopted after a daemon restart, so never tied to it.
            dies_with_thread: false,
        })
        .map_err(host(format!("start {}", spec.qemu.display())))?;
        let started = async {
            // fsyncs: off the executor thread.
            let record = spec.dir.join("vm.pid");
            smol::unblock(move || {
                write_atomic(
                    &record,
                    format!("{pid}\n").as_bytes(),
                    0o600,
                    Overwrite::Replace,
                )
            })
            .await
            .map_err(host("record the QEMU pid"))?;
            let deadline = Instant::now() + spec.start_timeout;
            loop {
                if let State::Exited(exit) = process::state(pid) {
                    return Err(start_failure(
                        exit.code(),
                        spec.apparmor.as_ref(),
                        &log_path,
                    ));
                }
                if files.qmp.exists() {
                    let connected = async {
                        Qmp::connect(&files.qmp, qmp::DEFAULT_TIMEOUT)
                            .await?
                            .negotiate()
                            .await
                    };
                    match connected.await {
                        Ok(qmp) => return Ok(qmp),
                        // The socket is bound before QEMU listens on it.
                        Err(qmp::Error::Connect { .. }) if Instant::now() < deadline => {}
                        // QEMU opens the socket before it loads the kernel:
                        // a QEMU that then gives up closes the connection, and
                        // its own message says why.
                        Err(e) => {
                            return Err(match wait_state(pid, Duration::from_secs(2)).await {
                                State::Exited(exit) => {
                                    start_failure(exit.code(), spec.apparmor.as_ref(), &log_path)
                                }
                                State::Running => e.into(),
                            });
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return Err(Error::StartTimeout(spec.start_timeout.as_secs()));
                }
                Timer::after(Duration::from_millis(20)).await;
            }
        };
        match started.await {
            Ok(qmp) => Ok(Vm {
                pid,
                dir: spec.dir.clone(),
                run_as: spec.run_as,
                qmp,
                agent: Agent::new(&files.agent, qga::DEFAULT_TIMEOUT),
                ended: std::sync::OnceLock::new(),
            }),
            Err(e) => {
                let _ = process::kill(pid, libc::SIGKILL);
                wait_exit(pid, Duration::from_secs(5)).await;
                clean_up(&spec.dir);
                Err(e)
            }
        }
    }

    /// Takes over the QEMU of the VM in `dir` (after a daemon restart): the
    /// recorded pid must still be QEMU for `uuid` under `identity`.
    pub async fn adopt(dir: &Path, uuid: &str, run_as: RunAs) -> Result<Vm, Error> {
        let pid = recorded_pid(dir).ok_or(Error::NotRunning)?;
        if let Err(e) = verify(pid, dir, uuid, Some(run_as)) {
            if process::state(pid) != State::Running {
                // The VM stopped while nobody watched: tidy up, report stopped.
                clean_up(dir);
                return Err(Error::NotRunning);
            }
            return Err(e);
        }
        let files = RunFiles::in_dir(&qemu_dir(dir));
        // A daemon cut off during a start leaves a QEMU that may not listen
        // on QMP yet: while it runs, it gets a few seconds to.
        let deadline = Instant::now() + ADOPT_GRACE;
        let qmp = loop {
            let connected = Qmp::connect(&files.qmp, qmp::DEFAULT_TIMEOUT).await;
            if connected.is_ok()
                || Instant::now() >= deadline
                || process::state(pid) != State::Running
            {
                break connected?;
            }
            Timer::after(Duration::from_millis(50)).await;
        }
        .negotiate()
        .await?;
        Ok(Vm {
            pid,
            dir: dir.to_path_buf(),
            run_as,
            qmp,
            agent: Agent::new(&files.agent, qga::DEFAULT_TIMEOUT),
            ended: std::sync::OnceLock::new(),
        })
    }

    /// QEMU's version, from its QMP greeting.
    pub fn qemu_version(&self) -> &str {
        self.qmp.version()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The guest agent (a handle on the VM's one connection).
    pub fn agent(&self) -> Agent {
        self.agent.clone()
    }

    /// Connects to the serial console, once per VM: QEMU serves one client
    /// and the [`Pump`] must then run, or the guest's console output stalls.
    pub async fn connect_console(&self) -> Result<(Console, Pump), console::Error> {
        let files = RunFiles::in_dir(&qemu_dir(&self.dir));
        Console::connect(&files.console_socket, &files.console, holder(self.run_as)).await
    }

    /// Whether the QEMU process is still there.
    pub fn is_running(&self) -> bool {
        self.ended().is_none()
    }

    fn ended(&self) -> Option<Exit> {
        if let Some(e) = self.ended.get() {
            return Some(*e);
        }
        match process::state(self.pid) {
            State::Running => None,
            State::Exited(e) => Some(*self.ended.get_or_init(|| e)),
        }
    }

    /// Why QEMU is gone, when it did not just exit as a guest powering off
    /// makes it: a signal (the out-of-memory killer's, said so), an error
    /// exit. `None` while it runs, after a clean exit, and for a QEMU taken
    /// over from an earlier daemon, whose end only its parent learns.
    pub fn failure(&self) -> Option<String> {
        match self.ended()? {
            Exit::Signal(libc::SIGKILL) if process::oom_killed(self.pid) => {
                Some("QEMU was killed by the kernel's out-of-memory killer".into())
            }
            Exit::Signal(sig) => Some(format!("QEMU was killed by signal {sig}")),
            Exit::Code(0) | Exit::Unknown => None,
            Exit::Code(code) => Some(format!(
                "QEMU exited with code {code}: {}",
                tail(&RunFiles::in_dir(&qemu_dir(&self.dir)).stderr)
            )),
        }
    }

    /// QEMU's run state.
    pub async fn status(&mut self) -> Result<Status, Error> {
        if !self.is_running() {
            return Err(Error::NotRunning);
        }
        Ok(self.qmp.query_status().await?)
    }

    /// Events QEMU sent since the last call (SHUTDOWN, DEVICE_DELETED…).
    pub fn take_events(&mut self) -> Vec<qmp::Event> {
        self.qmp.take_events()
    }

    /// Presses the power button, waits up to `timeout` for the guest to
    /// power off, then ends QEMU.
    pub async fn stop(mut self, timeout: Duration) -> Result<Stopped, Error> {
        if self.is_running() {
            // A QEMU already on its way out may not answer; the wait decides.
            let _ = self.qmp.system_powerdown().await;
        }
        if wait_exit(self.pid, timeout).await {
            clean_up(&self.dir);
            return Ok(Stopped::Graceful);
        }
        self.kill().await?;
        Ok(Stopped::Forced)
    }

    /// Ends QEMU now: QMP `quit`, then SIGKILL if it lingers.
    pub async fn kill(mut self) -> Result<(), Error> {
        let _ = smol::future::or(
            async { self.qmp.quit().await.map_err(Error::from) },
            async {
                Timer::after(Duration::from_secs(2)).await;
                Ok(())
            },
        )
        .await;
        if !wait_exit(self.pid, Duration::from_secs(3)).await {
            process::kill(self.pid, libc::SIGKILL).map_err(host("kill QEMU"))?;
            if !wait_exit(self.pid, Duration::from_secs(10)).await {
                return Err(Error::Host {
                    what: "end QEMU".into(),
                    source: io::Error::other("still running after SIGKILL"),
                });
            }
        }
        clean_up(&self.dir);
        Ok(())
    }

    /// Adds a virtio disk on the first free hotplug port; `pin` is its file
    /// as checked (see [`VmSpec::pins`]).
    pub async fn hotplug_disk(&mut self, disk: &Disk, pin: &Pin) -> Result<(), Error> {
        qemu::validate_id(&disk.id)?;
        let path = qemu::validate_path("disk", &disk.path)?;
        require_file("disk", &disk.path)?;
        let port = self.free_port().await?;
        give_disk(std::slice::from_ref(pin), disk, self.run_as)?;
        let (node, dev) = qemu::disk_ids(&disk.id);
        let added = async {
            self.qmp
                .blockdev_add(json!({
                    "driver": disk.format.driver(),
                    "node-name": node,
                    "read-only": disk.read_only,
                    "file": { "driver": "file", "filename": path },
                }))
                .await?;
            let device =
                json!({ "driver": "virtio-blk-pci", "id": dev, "drive": node, "bus": port });
            if let Err(e) = self.qmp.device_add(device).await {
                let _ = self.qmp.blockdev_del(&node).await;
                return Err(e);
            }
            Ok(())
        };
        if let Err(e) = added.await {
            // QEMU did not take the disk: it goes back to its owner now, as
            // no record will name it.
            let _ = pin.give_back(holder(self.run_as));
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes a hot-plugged (or cold-plugged) disk; the guest has `timeout`
    /// to release it.
    pub async fn unplug_disk(&mut self, id: &str, timeout: Duration) -> Result<(), Error> {
        qemu::validate_id(id)?;
        let (node, dev) = qemu::disk_ids(id);
        self.qmp.device_del(&dev).await?;
        let want = dev.clone();
        self.qmp
            .wait_event(timeout, "DEVICE_DELETED", move |e| {
                e.name == "DEVICE_DELETED"
                    && e.data.get("device").and_then(Value::as_str) == Some(&want)
            })
            .await?;
        self.qmp.blockdev_del(&node).await?;
        Ok(())
    }

    /// Takes (`take`) or deletes an internal snapshot `name` of disk `id`
    /// while the VM runs.
    pub async fn disk_snapshot(&mut self, id: &str, name: &str, take: bool) -> Result<(), Error> {
        qemu::validate_id(id)?;
        let (node, _) = qemu::disk_ids(id);
        if take {
            self.qmp.snapshot_internal(&node, name).await?;
        } else {
            self.qmp.snapshot_delete_internal(&node, name).await?;
        }
        Ok(())
    }

    /// The first hotplug root port with nothing behind it.
    async fn free_port(&mut self) -> Result<String, Error> {
        let buses = self.qmp.query_pci().await?;
        let mut ports = 0;
        for bus in buses.as_array().into_iter().flatten() {
            for dev in bus
                .get("devices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(id) = dev.get("qdev_id").and_then(Value::as_str) else {
                    continue;
                };
                if !id.starts_with("hp") {
                    continue;
                }
                ports += 1;
                let used = dev
                    .get("pci_bridge")
                    .and_then(|b| b.get("devices"))
                    .and_then(Value::as_array)
                    .is_some_and(|d| !d.is_empty());
                if !used {
                    return Ok(id.to_string());
                }
            }
        }
        Err(Error::NoFreePort(ports))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed test should panic")]
    use super::*;

    #[test]
    fn id_ranges_parse_and_refuse() {
        assert_eq!(
            "1000000:65536".parse::<IdRange>().unwrap(),
            IdRange {
                first: 1_000_000,
                count: 65536
            }
        );
        for bad in [
            "0:10",
            "1:0",
            "x",
            "4294967295:2",
            "1:-1",
            "1000:10",
            "65535:10",
        ] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        let low = "1000:10".parse::<IdRange>().unwrap_err().to_string();
        assert!(low.contains("below 65536"), "{low}");
        assert!("65536:1".parse::<IdRange>().is_ok());
    }

    #[test]
    fn id_range_picks_the_lowest_free() {
        let r = IdRange {
            first: 100_000,
            count: 3,
        };
        assert_eq!(
            r.pick(&[]),
            Some(RunAs::Isolated {
                uid: 100_000,
                gid: 100_000
            })
        );
        assert_eq!(
            r.pick(&[100_000, 100_001]),
            Some(RunAs::Isolated {
                uid: 100_002,
                gid: 100_002
            })
        );
        assert_eq!(r.pick(&[100_000, 100_001, 100_002]), None);
    }

    #[test]
    fn a_vm_can_move_between_smol_tasks() {
        fn send<T: Send + 'static>() {}
        send::<Vm>();
        send::<Error>();
    }

    #[test]
    fn give_refuses_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        fs::write(&target, "x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("disk.img");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            give(&link, RunAs::Privileged, 0o600),
            Err(Error::Host { .. })
        ));
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(read_untrusted(&link, 100).is_err());
    }

    #[test]
    fn our_own_process_is_not_a_vm() {
        let dir = tempfile::tempdir().unwrap();
        let e = verify(std::process::id(), dir.path(), "x", None).unwrap_err();
        assert!(matches!(e, Error::NotOurs { .. }), "{e}");
    }
}
