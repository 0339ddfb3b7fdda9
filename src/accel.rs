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
                reason: "auto: a KVM test guest reached 64-bit mode and finished".into(),
            },
            Err(why) => AccelChoice {
                accel: Accel::Tcg,
                reason: format!("auto: {why}; using TCG emulation"),
            },
        },
    }
}

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

/// Runs the throwaway KVM guest; `Err` says why KVM is not usable.
pub(crate) fn probe_kvm(qemu: &Path, scratch: &Path, timeout: Duration) -> Result<(), String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!("cannot open /dev/kvm ({e})"));
    }
    run_probe(qemu, scratch, Accel::Kvm, timeout)
}

/// Boots the probe firmware under `accel`.
fn run_probe(qemu: &Path, scratch: &Path, accel: Accel, timeout: Duration) -> Result<(), String> {
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
    argv.push(rom.clone().into_os_string());
    if accel == Accel::Kvm {
        // The CPU model VMs get (see qemu.rs): it must work too.
        argv.extend(["-cpu".into(), "host".into()]);
    }
    let spawned = process::spawn(process::Spawn {
        program: qemu.to_path_buf(),
        args: argv,
        ids: None,
        log,
        apparmor: None,
        fds: vec![],
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
                break Err(format!(
                    "the {accel} test guest failed ({}: {last})",
                    code.map_or("killed by a signal".to_string(), |c| format!(
                        "exit code {c}"
                    ))
                ));
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
                    "/dev/kvm opens but a {accel} test vCPU did not reach 64-bit mode and finish within {}s",
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
        run_probe(qemu, dir.path(), Accel::Tcg, Duration::from_secs(20)).unwrap();
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
