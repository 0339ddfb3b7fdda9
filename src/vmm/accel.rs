//! Choosing the accelerator: KVM when it really runs guest code, else TCG.
//!
//! Opening /dev/kvm proves little: on some hosts (nested setups, broken
//! firmware) the device opens and VMs are created but vCPUs never execute.
//! So `auto` boots a throwaway QEMU whose 64 KiB "BIOS" writes to the
//! isa-debug-exit port at the reset vector; only if QEMU exits with that
//! port's status within the time limit is KVM chosen.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::log::log;
use crate::sys::process::{self, Exit, State};

/// An accelerator QEMU is started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The `instances.accel` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelMode {
    Auto,
    Kvm,
    Tcg,
}

/// An `instances.accel` value that is none of `auto`, `kvm`, `tcg`, or
/// why the probe found KVM unusable.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("invalid accelerator {0:?}: expected auto, kvm or tcg")]
    Invalid(String),
    #[error("cannot open /dev/kvm")]
    NoDevice(#[source] io::Error),
    #[error("cannot write the KVM probe firmware")]
    Firmware(#[source] io::Error),
    #[error("cannot create {}", .0.display())]
    Log(PathBuf, #[source] io::Error),
    #[error("the daemon is stopping")]
    Stopping,
    #[error("cannot run {}", .0.display())]
    Run(PathBuf, #[source] io::Error),
    #[error("the {accel} test guest failed ({}: {last})", exit(*.code))]
    Failed {
        accel: Accel,
        /// Its exit code; `None`: killed by a signal.
        code: Option<i32>,
        /// The last line it logged.
        last: String,
    },
    #[error(
        "/dev/kvm opens but a {accel} test vCPU did not reach 64-bit mode and finish within {secs}s"
    )]
    TooSlow { accel: Accel, secs: u64 },
}

crate::debug_as_display!(Error);

/// How a probe QEMU ended, in [`Error::Failed`]'s words.
fn exit(code: Option<i32>) -> String {
    code.map_or("killed by a signal".to_string(), |c| {
        format!("exit code {c}")
    })
}

impl FromStr for AccelMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            _ => Err(Error::Invalid(s.to_string())),
        }
    }
}

/// The accelerator chosen and why, as `GET /1.0` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// How long the probe guest may take to reach its exit port. Under working
/// KVM it takes a few milliseconds of guest time plus QEMU's start-up.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// isa-debug-exit turns a write of `v` into QEMU exiting with `(v << 1) | 1`.
const PROBE_EXIT: i32 = 3;

/// Resolves `mode` to an accelerator. Blocking (it may run the probe for up
/// to [`PROBE_TIMEOUT`]); call it from a blocking thread (`smol::unblock`).
/// `scratch` is a private directory for the probe's firmware file.
pub fn choose(mode: AccelMode, qemu: &Path, scratch: &Path) -> AccelChoice {
    Probe::default().choose(mode, qemu, scratch)
}

/// The daemon's probe QEMU while it runs, so that shutdown can end it.
///
/// The probe QEMU is tied to the thread that spawns it (`PR_SET_PDEATHSIG`,
/// which alone covers the daemon being SIGKILLed): that thread waits in
/// [`run_probe`] until the QEMU is reaped or killed, so it never ends
/// first. A clean shutdown calls [`Probe::stop`], which kills and waits.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// Shared with the thread that reaps a probe which outlived its kill.
    running: Arc<Mutex<Running>>,
}

#[derive(Debug, Default)]
struct Running {
    /// The probe QEMU, until it is reaped. It is reaped and taken out in one
    /// step under the lock ([`reap`]), and only signalled under the lock: so
    /// the pid signalled is always still our child, never a reused number.
    pid: Option<u32>,
    /// Set by [`Probe::stop`]: no probe starts after it.
    stopped: bool,
}

/// Calls [`Probe::stop`] when dropped: whichever way the daemon's `run`
/// returns, the probe is ended and reaped first.
#[derive(Debug)]
pub(crate) struct StopOnDrop(pub(crate) Arc<Probe>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The probe state behind its lock.
fn running(lock: &Mutex<Running>) -> MutexGuard<'_, Running> {
    // Each change under the lock is one assignment: a poisoned lock
    // still holds a consistent value.
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks on the probe QEMU `pid` and, once it has ended, reaps it and
/// forgets it under the lock [`Probe::stop`] kills under: between the two,
/// nobody can signal a pid that is no longer ours.
fn reap(lock: &Mutex<Running>, pid: u32) -> State {
    let mut r = running(lock);
    let state = process::state(pid);
    if state != State::Running && r.pid == Some(pid) {
        r.pid = None;
    }
    state
}

impl Probe {
    fn running(&self) -> MutexGuard<'_, Running> {
        running(&self.running)
    }

    /// [`choose`], with a probe that [`Probe::stop`] can end.
    pub(crate) fn choose(&self, mode: AccelMode, qemu: &Path, scratch: &Path) -> AccelChoice {
        match mode {
            AccelMode::Kvm => AccelChoice {
                accel: Accel::Kvm,
                reason: "kvm requested by configuration".into(),
            },
            AccelMode::Tcg => AccelChoice {
                accel: Accel::Tcg,
                reason: "tcg requested by configuration".into(),
            },
            AccelMode::Auto => match self.probe_kvm(qemu, scratch, PROBE_TIMEOUT) {
                Ok(()) => AccelChoice {
                    accel: Accel::Kvm,
                    reason: "auto: a KVM test guest reached 64-bit mode and finished".into(),
                },
                Err(why) => AccelChoice {
                    accel: Accel::Tcg,
                    reason: format!("auto: {}; using TCG emulation", crate::error_chain(&why)),
                },
            },
        }
    }

    /// Kills a running probe QEMU and waits (up to [`STOP_WAIT`]) until its
    /// thread has reaped it; no probe starts afterwards.
    pub(crate) fn stop(&self) {
        let pid = {
            let mut r = self.running();
            r.stopped = true;
            // Under the lock: the pid is still our unreaped child, not a
            // stranger that reused the number.
            if let Some(pid) = r.pid {
                let _ = process::kill(pid, libc::SIGKILL);
            }
            r.pid
        };
        let Some(pid) = pid else { return };
        let started = Instant::now();
        while self.running().pid.is_some() && started.elapsed() < STOP_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        log!(Info, "stopping: ended the accelerator probe (pid {pid})");
    }

    /// Runs the throwaway KVM guest; `Err` says why KVM is not usable.
    fn probe_kvm(&self, qemu: &Path, scratch: &Path, timeout: Duration) -> Result<(), Error> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(Error::NoDevice)?;
        run_probe(self, qemu, scratch, Accel::Kvm, timeout)
    }
}

/// How long [`Probe::stop`] waits for the probe's thread to reap it.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// `probe.S` assembled: real mode → protected mode → long mode with paging,
/// a 20M-iteration loop, then `out 0xf4`. A host whose vCPUs run only real
/// mode, or crawl through an emulator, does not get there in time.
const PROBE_CODE: [u8; 206] = [
    0xfa, 0x2e, 0x66, 0x0f, 0x01, 0x16, 0xc8, 0x00, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01, 0x0f,
    0x22, 0xc0, 0x66, 0xea, 0x1a, 0x00, 0xff, 0xff, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8,
    0x8e, 0xc0, 0x8e, 0xd0, 0xbf, 0x00, 0x10, 0x00, 0x00, 0xb9, 0x00, 0x10, 0x00, 0x00, 0x31, 0xc0,
    0xf3, 0xab, 0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x20,
    0x00, 0x00, 0x03, 0x30, 0x00, 0x00, 0xc7, 0x05, 0x18, 0x20, 0x00, 0x00, 0x03, 0x40, 0x00, 0x00,
    0xc7, 0x05, 0x00, 0x30, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00, 0xc7, 0x05, 0xf8, 0x4f, 0x00, 0x00,
    0x83, 0x00, 0xe0, 0xff, 0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22, 0xd8, 0x0f, 0x20, 0xe0, 0x83,
    0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00,
    0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0xea, 0x95,
    0x00, 0xff, 0xff, 0x18, 0x00, 0xb9, 0x00, 0x2d, 0x31, 0x01, 0xff, 0xc9, 0x75, 0xfc, 0xb0, 0x01,
    0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0x0f, 0x1f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0x1f, 0x00, 0xa8, 0x00, 0xff, 0xff,
];

/// A 64 KiB BIOS image: the code at offset 0 (linear 0xffff0000) and, at the
/// reset vector (the last 16 bytes), `jmp` back to it.
fn probe_firmware() -> Vec<u8> {
    let mut rom = vec![0xf4u8; 64 * 1024];
    if let Some(slot) = rom.get_mut(..PROBE_CODE.len()) {
        slot.copy_from_slice(&PROBE_CODE);
    }
    // e9 rel16: from the end of the 3-byte jump at 0xfff0 back to 0, mod 64 KiB.
    let rel = 0u16.wrapping_sub(0xfff3).to_le_bytes();
    if let Some(slot) = rom.get_mut(0xfff0..0xfff3) {
        slot.copy_from_slice(&[0xe9, rel[0], rel[1]]);
    }
    rom
}

/// Boots the probe firmware under `accel`, as `probe`'s running QEMU, and
/// removes its files afterwards.
fn run_probe(
    probe: &Probe,
    qemu: &Path,
    scratch: &Path,
    accel: Accel,
    timeout: Duration,
) -> Result<(), Error> {
    let rom = scratch.join("kvm-probe.rom");
    let log_path = scratch.join("kvm-probe.log");
    let result = boot_probe(probe, qemu, &rom, &log_path, accel, timeout);
    let _ = std::fs::remove_file(&rom);
    let _ = std::fs::remove_file(&log_path);
    result
}

fn boot_probe(
    probe: &Probe,
    qemu: &Path,
    rom: &Path,
    log_path: &Path,
    accel: Accel,
    timeout: Duration,
) -> Result<(), Error> {
    crate::store::write_atomic(
        rom,
        &probe_firmware(),
        0o600,
        crate::store::Overwrite::Replace,
    )
    .map_err(Error::Firmware)?;
    let log = std::fs::File::create(log_path).map_err(|e| Error::Log(log_path.into(), e))?;
    let accel_name = accel.to_string();
    let accel_name = accel_name.as_str();
    let args = [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        "pc",
        "-accel",
        accel_name,
        "-m",
        "16M",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-bios",
    ];
    let mut argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    argv.push(rom.as_os_str().to_owned());
    if accel == Accel::Kvm {
        // The CPU model VMs get (see qemu.rs): it must work too.
        argv.extend(["-cpu".into(), "host".into()]);
    }
    let pid = {
        // Spawned under the lock, so that a concurrent stop either comes
        // first (and nothing starts) or finds the pid.
        let mut running = probe.running();
        if running.stopped {
            return Err(Error::Stopping);
        }
        let pid = process::spawn(process::Spawn {
            program: qemu.to_path_buf(),
            args: argv,
            ids: None,
            log,
            apparmor: None,
            fds: vec![],
            // This thread waits for the QEMU below, so it outlives it.
            dies_with_thread: true,
        })
        .map_err(|e| Error::Run(qemu.into(), e))?;
        running.pid = Some(pid);
        pid
    };
    let started = Instant::now();
    loop {
        match reap(&probe.running, pid) {
            State::Exited(Exit::Code(PROBE_EXIT)) => return Ok(()),
            State::Exited(exit) => {
                let code = exit.code();
                let msg = std::fs::read_to_string(log_path).unwrap_or_default();
                let last = msg.lines().last().unwrap_or("no message").to_string();
                return Err(Error::Failed { accel, code, last });
            }
            State::Running if started.elapsed() > timeout => {
                end_probe(&probe.running, pid);
                return Err(Error::TooSlow {
                    accel,
                    secs: timeout.as_secs(),
                });
            }
            State::Running => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// How long a killed probe is waited for before a thread of its own takes
/// over the wait.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Kills the probe QEMU `pid` and reaps it. A vCPU stuck in the kernel may
/// keep it around after SIGKILL, which must not hold the daemon up: after
/// [`KILL_WAIT`] a thread reaps it whenever it goes, so no zombie is left,
/// and it stays in [`Running`] (for [`Probe::stop`] to wait for) until then.
fn end_probe(lock: &Arc<Mutex<Running>>, pid: u32) {
    {
        let r = running(lock);
        if r.pid == Some(pid) {
            let _ = process::kill(pid, libc::SIGKILL);
        }
    }
    let started = Instant::now();
    while reap(lock, pid) == State::Running {
        if started.elapsed() >= KILL_WAIT {
            let lock = lock.clone();
            let reaper = std::thread::Builder::new()
                .name("kvm-probe-reaper".into())
                .spawn(move || {
                    while reap(&lock, pid) == State::Running {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            if let Err(e) = reaper {
                log!(Warn, "cannot wait for the KVM probe (pid {pid}): {e}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed test should panic")]
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<AccelMode>().unwrap(), AccelMode::Auto);
        assert_eq!("tcg".parse::<AccelMode>().unwrap(), AccelMode::Tcg);
        assert!("KVM".parse::<AccelMode>().is_err());
    }

    #[test]
    fn firmware_jumps_from_the_reset_vector_to_the_code() {
        let rom = probe_firmware();
        assert_eq!(rom.len(), 65536);
        assert_eq!(rom.get(65520..65523), Some(&[0xe9, 0x0d, 0x00][..]));
        assert_eq!(rom.first(), Some(&0xfa)); // cli
    }

    /// The probe code itself is right: under emulation it reaches the exit
    /// port. Skipped where QEMU is not installed.
    #[test]
    fn probe_firmware_runs_under_tcg() {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        if !qemu.exists() {
            eprintln!("SKIPPED: no {}", qemu.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let probe = Probe::default();
        run_probe(
            &probe,
            qemu,
            dir.path(),
            Accel::Tcg,
            Duration::from_secs(20),
        )
        .unwrap();
    }

    /// A stop ends the probe QEMU at once and reaps it, and no probe
    /// starts after it. The stand-in "QEMU" just sleeps.
    /// A probe under way in a thread, its "QEMU" a script that sleeps.
    struct Running {
        dir: tempfile::TempDir,
        qemu: std::path::PathBuf,
        probe: Arc<Probe>,
        thread: std::thread::JoinHandle<Result<(), Error>>,
        pid: u32,
        started: Instant,
    }

    fn start_probe(accel: Accel, timeout: Duration) -> Running {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let qemu = dir.path().join("qemu");
        std::fs::write(&qemu, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        let probe = Arc::new(Probe::default());
        let (p, q, d) = (probe.clone(), qemu.clone(), dir.path().to_path_buf());
        let thread = std::thread::spawn(move || run_probe(&p, &q, &d, accel, timeout));
        let started = Instant::now();
        let pid = loop {
            if let Some(pid) = probe.running().pid {
                break pid;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "no probe");
            std::thread::sleep(Duration::from_millis(10));
        };
        Running {
            dir,
            qemu,
            probe,
            thread,
            pid,
            started,
        }
    }

    #[test]
    fn stop_ends_and_reaps_a_running_probe() {
        let Running {
            dir,
            qemu,
            probe,
            thread: t,
            pid,
            started,
        } = start_probe(Accel::Tcg, Duration::from_secs(20));
        probe.stop();
        assert!(probe.running().pid.is_none());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "not reaped");
        let err = t.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("killed by a signal"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = run_probe(
            &probe,
            &qemu,
            dir.path(),
            Accel::Tcg,
            Duration::from_secs(20),
        );
        assert!(matches!(err, Err(Error::Stopping)), "{err:?}");
        assert!(!dir.path().join("kvm-probe.rom").exists());
    }

    /// A probe that outlives its kill past the time limit is still reaped
    /// (no zombie is left), and stays known to `stop` until then. It is
    /// held back by a tracer that does not wait for it: a ptraced child's
    /// death reaches its parent only once its tracer lets go, as a vCPU
    /// stuck in the kernel would hold it. Skipped where perl cannot attach.
    #[test]
    fn a_probe_that_outlives_its_kill_is_still_reaped() {
        use std::io::BufRead;
        let Running {
            probe,
            thread: t,
            pid,
            ..
        } = start_probe(Accel::Kvm, Duration::from_millis(500));
        // PTRACE_ATTACH, then hold on for 3 s without a wait.
        let tracer = std::process::Command::new("perl")
            .arg("-e")
            .arg(
                "syscall($ARGV[0] + 0, 16, $ARGV[1] + 0, 0, 0) == 0 or die \"attach: $!\\n\"; \
                  $| = 1; print \"attached\\n\"; sleep 3",
            )
            .arg(libc::SYS_ptrace.to_string())
            .arg(pid.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let mut line = String::new();
        let mut tracer = match tracer {
            Ok(mut c) => {
                let out = c.stdout.take().unwrap();
                let _ = std::io::BufReader::new(out).read_line(&mut line);
                c
            }
            Err(e) => {
                eprintln!("SKIPPED: no perl ({e})");
                probe.stop();
                return;
            }
        };
        if line != "attached\n" {
            eprintln!("SKIPPED: cannot ptrace the probe");
            let _ = tracer.wait();
            probe.stop();
            let _ = t.join();
            return;
        }
        let err = t.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("did not reach 64-bit mode"), "{err}");
        assert_eq!(probe.running().pid, Some(pid), "forgotten before reaped");
        tracer.wait().unwrap();
        let proc_dir = format!("/proc/{pid}");
        let released = Instant::now();
        while Path::new(&proc_dir).exists() {
            assert!(
                released.elapsed() < Duration::from_secs(5),
                "probe {pid} left unreaped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(probe.running().pid.is_none());
    }

    #[test]
    fn explicit_modes_do_not_probe() {
        let c = choose(
            AccelMode::Tcg,
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        );
        assert_eq!(c.accel, Accel::Tcg);
    }

    #[test]
    fn auto_without_qemu_falls_back_to_tcg() {
        let dir = tempfile::tempdir().unwrap();
        let c = choose(AccelMode::Auto, Path::new("/nonexistent/qemu"), dir.path());
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("TCG"), "{}", c.reason);
    }
}
