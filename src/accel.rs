//! Choosing the accelerator: KVM when it really runs guest code, else TCG.
//!
//! Opening /dev/kvm proves little: on some hosts (nested setups, broken
//! firmware) the device opens and VMs are created but vCPUs never execute.
//! So `auto` boots a throwaway QEMU whose 64 KiB "BIOS" writes to the
//! isa-debug-exit port at the reset vector; only if QEMU exits with that
//! port's status within the time limit is KVM chosen.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::sys::process::{self, State};

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

/// An `instances.accel` value that is none of `auto`, `kvm`, `tcg`.
#[derive(Debug, thiserror::Error)]
#[error("invalid accelerator {0:?}: expected auto, kvm or tcg")]
pub struct InvalidAccel(String);

impl FromStr for AccelMode {
    type Err = InvalidAccel;
    fn from_str(s: &str) -> Result<Self, InvalidAccel> {
        match s {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            _ => Err(InvalidAccel(s.to_string())),
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
    match mode {
        AccelMode::Kvm => AccelChoice {
            accel: Accel::Kvm,
            reason: "kvm requested by configuration".into(),
        },
        AccelMode::Tcg => AccelChoice {
            accel: Accel::Tcg,
            reason: "tcg requested by configuration".into(),
        },
        AccelMode::Auto => match probe_kvm(qemu, scratch, PROBE_TIMEOUT) {
            Ok(()) => AccelChoice {
                accel: Accel::Kvm,
                reason: "auto: a KVM test guest ran".into(),
            },
            Err(why) => AccelChoice {
                accel: Accel::Tcg,
                reason: format!("auto: {why}; using TCG emulation"),
            },
        },
    }
}

/// The reset vector (physical 0xFFFFFFF0, the last 16 bytes of the BIOS):
/// `mov al,1; out 0xf4,al; hlt; jmp $-1`.
fn probe_firmware() -> Vec<u8> {
    let mut rom = vec![0xf4u8; 64 * 1024];
    let code = [0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd];
    let start = rom.len() - 16;
    if let Some(slot) = rom.get_mut(start..start + code.len()) {
        slot.copy_from_slice(&code);
    }
    rom
}

/// Runs the throwaway KVM guest; `Err` says why KVM is not usable.
pub(crate) fn probe_kvm(qemu: &Path, scratch: &Path, timeout: Duration) -> Result<(), String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!("cannot open /dev/kvm ({e})"));
    }
    let rom = scratch.join("kvm-probe.rom");
    crate::store::write_atomic(
        &rom,
        &probe_firmware(),
        0o600,
        crate::store::Overwrite::Replace,
    )
    .map_err(|e| format!("cannot write the KVM probe firmware ({e})"))?;
    let log_path = scratch.join("kvm-probe.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {} ({e})", log_path.display()))?;
    let args = [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        "pc",
        "-accel",
        "kvm",
        "-m",
        "16M",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-bios",
    ];
    let mut argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    argv.push(rom.clone().into_os_string());
    let spawned = process::spawn(process::Spawn {
        program: qemu.to_path_buf(),
        args: argv,
        ids: None,
        log,
        apparmor: None,
    });
    let pid = match spawned {
        Ok(pid) => pid,
        Err(e) => return Err(format!("cannot run {} ({e})", qemu.display())),
    };
    let started = Instant::now();
    let result = loop {
        match process::state(pid) {
            State::Exited(Some(PROBE_EXIT)) => break Ok(()),
            State::Exited(code) => {
                let msg = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = msg.lines().last().unwrap_or("no message").to_string();
                break Err(format!("the KVM test guest failed (exit {code:?}: {last})"));
            }
            State::Running if started.elapsed() > timeout => {
                let _ = process::kill(pid, libc::SIGKILL);
                // Reap it if it dies promptly; a vCPU stuck in the kernel may
                // keep it around, which must not hold the daemon up.
                for _ in 0..50 {
                    if process::state(pid) != State::Running {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                break Err(format!(
                    "/dev/kvm opens but a test vCPU did not run within {}s",
                    timeout.as_secs()
                ));
            }
            State::Running => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let _ = std::fs::remove_file(&rom);
    let _ = std::fs::remove_file(&log_path);
    result
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
    fn firmware_ends_in_the_reset_vector() {
        let rom = probe_firmware();
        assert_eq!(rom.len(), 65536);
        assert_eq!(rom.get(65520..65522), Some(&[0xb0, 0x01][..]));
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
