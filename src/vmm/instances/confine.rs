//! The daemon's side of AppArmor (libvirt's virt-aa-helper model): it never writes policy
//! itself but runs `kvmbox-aa-helper` (this same executable under that
//! name) with the instance's definition on stdin, and reads its one-line
//! answer.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use super::record::{AaMode, Record};
use super::{profile_name, Error, Manager, SecLabel};
use crate::fault::{Blame, Fault};
use crate::log::log;
use crate::rt::lock;
use crate::vmm::qemu::RunFiles;
use kvmbox_aa::{self as apparmor, Kernel};

/// How long the helper may take, apparmor_parser included: compiling a
/// VM's profile takes a second or two, so this is only reached by a
/// helper or parser that hangs.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the helper lives and how it is told to work.
#[derive(Clone, Debug)]
pub(crate) struct Helper {
    /// The executable, run with argv[0] `kvmbox-aa-helper`.
    pub program: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// A parser instead of apparmor_parser (`KVMBOX_AA_PARSER`, for tests on
    /// kernels without AppArmor): the helper then loads regardless.
    pub parser: Option<String>,
}

/// Whether the kernel can confine QEMU, and why not: a state of the host
/// that decides what is done, not a failure.
///
/// Once seen enabled, it is not looked at again (AppArmor is built into
/// the kernel and its `enabled` parameter is read-only), while `GET /1.0`
/// and every instance's view ask for it. Absent is looked at every time:
/// securityfs may be mounted after the daemon started, and from then on
/// QEMU is to be confined.
pub(crate) fn kernel() -> Kernel {
    static ENABLED: AtomicBool = AtomicBool::new(false);
    if ENABLED.load(Ordering::Relaxed) {
        return Kernel::Enabled;
    }
    let kernel = apparmor::kernel_apparmor();
    ENABLED.store(kernel == Kernel::Enabled, Ordering::Relaxed);
    kernel
}

/// Why the helper did not do what it was asked.
#[derive(thiserror::Error)]
pub(crate) enum HelperError {
    #[error("cannot run {}", .0.display())]
    Run(PathBuf, #[source] io::Error),
    #[error("kvmbox-aa-helper failed")]
    Wait(#[source] io::Error),
    /// It (or the apparmor_parser it ran) hung, and was killed.
    #[error("kvmbox-aa-helper {0} did not finish within {1}s and was killed")]
    Timeout(String, u64),
    /// Its own message, the last line it wrote on stderr: it refused the
    /// definition, or the parser refused the profile.
    #[error("{0}")]
    Refused(String),
}

crate::debug_as_display!(HelperError);

impl Blame for HelperError {
    fn fault(&self) -> Fault {
        match self {
            HelperError::Run(..) | HelperError::Wait(_) => Fault::Host,
            // Told whole, as a misbehaving QEMU is: it names no host detail.
            HelperError::Timeout(..) => Fault::Peer,
            HelperError::Refused(_) => Fault::Input,
        }
    }
}

/// The helper of an installed system: `../libexec/kvmbox-aa-helper` beside
/// the daemon (a hard link, so that its own AppArmor profile attaches),
/// else this executable.
pub(crate) fn find_helper() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("libexec/kvmbox-aa-helper"));
    match installed {
        Some(p) if p.is_file() => p,
        _ => exe,
    }
}

impl Helper {
    /// Runs `kvmbox-aa-helper MODE [ARGS…]` for the profile of `uuid` in
    /// `profile_dir`, with `input` as its stdin; its stdout line, or its
    /// error line.
    pub(crate) fn run(
        &self,
        mode: &str,
        args: &[String],
        uuid: &str,
        profile_dir: &Path,
        required: bool,
        input: Option<&apparmor::Instance>,
    ) -> Result<String, HelperError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg0("kvmbox-aa-helper")
            .arg(mode)
            .args(args)
            .arg("--uuid")
            .arg(uuid)
            .arg("--profile-dir")
            .arg(profile_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cache-dir")
            .arg(&self.cache_dir);
        let load = match (&self.parser, required) {
            (Some(p), _) => {
                cmd.arg("--parser").arg(p);
                "always"
            }
            (None, true) => "required",
            (None, false) => "auto",
        };
        cmd.arg("--apparmor").arg(load);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // A group of its own, so that a helper that hangs goes with the
        // apparmor_parser it is waiting for.
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| HelperError::Run(self.program.clone(), e))?;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let pgid = child.id();
        let watchdog = std::thread::Builder::new().spawn(move || {
            let hung = finished.recv_timeout(HELPER_TIMEOUT)
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
            if hung {
                let _ = crate::sys::process::kill_group(pgid);
            }
            hung
        });
        let watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                // Unwatched, it could hang the start for ever.
                let _ = crate::sys::process::kill_group(pgid);
                let _ = child.wait();
                return Err(HelperError::Wait(e));
            }
        };
        if let (Some(def), Some(mut stdin)) = (input, child.stdin.take()) {
            let json = serde_json::to_vec(def).unwrap_or_default();
            // A helper that refused early closes stdin: its stderr says why.
            let _ = stdin.write_all(&json);
        }
        let out = child.wait_with_output();
        let _ = done.send(());
        if watchdog.join().unwrap_or(false) {
            return Err(HelperError::Timeout(
                mode.to_string(),
                HELPER_TIMEOUT.as_secs(),
            ));
        }
        let out = out.map_err(HelperError::Wait)?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            log!(Debug, "kvmbox-aa-helper {mode}: {stdout}");
            Ok(stdout)
        } else {
            let msg = stderr
                .lines()
                .last()
                .unwrap_or("no message")
                .trim_start_matches("kvmbox-aa-helper: ")
                .to_string();
            Err(HelperError::Refused(msg))
        }
    }
}

/// The AppArmor side of instance lifecycles.
impl Manager {
    pub(super) fn profile_dir(&self) -> PathBuf {
        let set = lock(&self.profile_dir).clone();
        match (set, self.host.get()) {
            (Some(d), _) => d,
            (None, Some(h)) if crate::sys::euid() != 0 => h.state.join("apparmor"),
            _ => PathBuf::from("/etc/apparmor.d/kvmbox"),
        }
    }

    /// What the helper is told about `rec`.
    fn definition(&self, rec: &Record) -> Result<kvmbox_aa::Instance, Error> {
        let host = self.host()?;
        let dir = rec.dir(&host.state);
        let files = RunFiles::in_dir(&dir.join("vm").join("qemu"));
        let s = |p: &Path| p.display().to_string();
        let mut disks = Vec::new();
        if let (Some(root), Some(img)) = (rec.root_disk(&host.state), &rec.image) {
            disks.push(kvmbox_aa::Disk {
                path: s(&root),
                readonly: false,
            });
            // The overlay's backing file: QEMU opens it read-only.
            disks.push(kvmbox_aa::Disk {
                path: s(&img.path),
                readonly: true,
            });
        }
        for d in rec.disks()? {
            disks.push(kvmbox_aa::Disk {
                path: s(&d.path),
                readonly: d.read_only,
            });
        }
        let mut taps: Vec<String> = rec.bridged().into_iter().map(|(t, _)| t).collect();
        taps.extend(
            rec.devices
                .values()
                .filter(|d| d.get("nictype").map(String::as_str) == Some("tap"))
                .filter_map(|d| d.get("host_name").cloned()),
        );
        let get = |k: &str| rec.config.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(kvmbox_aa::Instance {
            uuid: rec.uuid.clone(),
            name: rec.name.clone(),
            dir: s(&dir),
            disks,
            hotplug: Vec::new(),
            kernel: get("boot.kernel"),
            initrd: get("boot.initrd"),
            firmware: None,
            nvram: None,
            qmp_socket: Some(s(&files.qmp)),
            console_socket: Some(s(&files.console_socket)),
            agent_socket: Some(s(&files.agent)),
            pid_file: Some(s(&files.pidfile)),
            log_file: Some(s(&files.console)),
            stderr_log: Some(s(&files.stderr)),
            taps,
        })
    }

    pub(super) async fn helper(
        &self,
        rec: &Record,
        mode: &str,
        args: Vec<String>,
    ) -> Result<String, Error> {
        let def = self.definition(rec)?;
        let helper = self.host()?.helper.clone();
        let dir = self.profile_dir();
        let required = rec.apparmor() == AaMode::Required;
        let mode = mode.to_string();
        let uuid = rec.uuid.clone();
        smol::unblock(move || helper.run(&mode, &args, &uuid, &dir, required, Some(&def)))
            .await
            .map_err(|source| Error::AppArmor {
                name: rec.name.clone(),
                source,
            })
    }

    /// Writes and loads the instance's profile before QEMU starts.
    pub(super) async fn load(&self, rec: &Record) -> Result<SecLabel, Error> {
        let mode = rec.apparmor();
        if mode == AaMode::Off {
            return Ok(SecLabel {
                reason: "security.apparmor is off".into(),
                ..SecLabel::default()
            });
        }
        let kernel = kernel();
        if let (AaMode::Required, Kernel::Absent(why)) = (mode, &kernel) {
            return Err(Error::NoAppArmor {
                name: rec.name.clone(),
                why: why.clone(),
            });
        }
        let line = match self.helper(rec, "replace", Vec::new()).await {
            Ok(line) => line,
            Err(e) => {
                // A helper cut short may have written or loaded the profile.
                self.unload(rec).await;
                return Err(e);
            }
        };
        let loaded = line.ends_with(" loaded");
        let confined = loaded && kernel == Kernel::Enabled;
        let reason = match (&kernel, loaded) {
            (_, true) if confined => String::new(),
            (Kernel::Absent(why), _) => format!("the kernel has no AppArmor: {why}"),
            (Kernel::Enabled, _) => line.clone(),
        };
        if !confined {
            log!(
                Warn,
                // Not "unconfined": under an enforcing kernel, a QEMU the
                // confined daemon starts without a VM profile still runs in
                // the daemon's `qemu` child profile.
                "instance {}: QEMU runs without its own profile: {reason}",
                rec.name
            );
        }
        Ok(SecLabel {
            loaded,
            confined,
            reason,
        })
    }

    /// Unloads the instance's profile; failures are logged, not fatal.
    pub(super) async fn unload(&self, rec: &Record) {
        if rec.apparmor() == AaMode::Off {
            return;
        }
        let Ok(host) = self.host() else { return };
        let helper = host.helper.clone();
        let dir = self.profile_dir();
        let uuid = rec.uuid.clone();
        let r = smol::unblock(move || helper.run("remove", &[], &uuid, &dir, false, None)).await;
        if let Err(why) = r {
            log!(
                Warn,
                "instance {}: unloading its profile failed: {}",
                rec.name,
                crate::error_chain(&why)
            );
        }
    }

    pub(super) fn label_of_running(&self, rec: &Record, pid: u32) -> SecLabel {
        let current =
            std::fs::read_to_string(format!("/proc/{pid}/attr/current")).unwrap_or_default();
        let confined = current.starts_with(&profile_name(&rec.uuid));
        SecLabel {
            loaded: rec.apparmor() != AaMode::Off,
            confined,
            reason: if confined {
                String::new()
            } else {
                "re-adopted; QEMU is not under its profile".into()
            },
        }
    }
}
