//! kvmbox: the library every applet of the one binary shares.
//!
//! Modules are private nouns; what applets may use is re-exported below and
//! nothing else, so the public surface stays small enough to review.
//! `unsafe` is denied crate-wide (Cargo.toml) and allowed only in `sys`.

mod accel;
mod pki;
mod qemu;
mod qmp;
mod store;
#[allow(unsafe_code)] // the one module allowed to call libc directly
mod sys;
mod vm;

pub use pki::{Cert, CertInfo, CertSpec, Curve, Error as PkiError, Key, Profile as CertProfile};
pub use store::{write_atomic, Overwrite};

pub use accel::{choose as choose_accel, Accel, AccelChoice, AccelMode, InvalidAccel};
pub use qemu::{
    command_line, parse_forward, validate_name, Boot, Disk, DiskFormat, Error as QemuError,
    MemorySize, Nic, RunFiles, VmConfig, DEFAULT_HOTPLUG_PORTS,
};
pub use qmp::{Error as QmpError, Event as QmpEvent, Fault, Status as VmStatus};
pub use vm::{
    console_log, process_running, read_console, AppArmor, Error as VmError, IdRange, Identity,
    Stopped, Vm, VmSpec, PRIVILEGED_WARNING,
};

/// Every error and the `source()`s under it on one line, the way each applet
/// reports a failure: `cannot read CA key: No such file or directory`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        next = cause.source();
    }
    line
}
