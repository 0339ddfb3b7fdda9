//! kvmbox: the library every applet of the one binary shares.
//!
//! Modules are private nouns; what applets may use is re-exported below and
//! nothing else, so the public surface stays small enough to review.
//! `unsafe` is denied crate-wide (Cargo.toml) and allowed only in `sys`.
//!
//! The map, from the top down (imports only ever point down it):
//! - `server`: the daemon (`kvmboxd`): state, auth, routes, handlers, listeners;
//! - `preseed`: a preseed document, applied over the socket or in-process;
//! - `client`: a connection to a daemon, and the user's remotes;
//! - `vmm`: the VM layer: instances, one VM's life, QEMU, QMP, the guest
//!   agent, the console fan-out, the accelerator;
//! - the ground floor: `wire` (API vocabulary shared by server and client),
//!   `fault` (whose fault an error is: the caller's, a peer's, the host's),
//!   `http`, `tls`, `pki`, `store`, `log`, `notify`, `rt` (lock, deadline), `clock`,
//!   `uuid`, `hostfile` (host paths opened as the caller), `operand` (file
//!   or `-`), `websocket`, `fetch` (HTTPS downloads), `simplestreams`
//!   (image server catalogues), and `sys` (system calls).

mod client;
mod clock;
mod fault;
mod fetch;
mod hostfile;
mod http;
mod log;
mod notify;
mod operand;
mod pki;
mod preseed;
mod rt;
mod server;
mod simplestreams;
mod store;
#[allow(unsafe_code)] // system calls std does not wrap; each block has a SAFETY comment
mod sys;
mod tls;
mod uuid;
mod vmm;
mod websocket;
mod wire;

// Entry points for fuzz/ and its replay test; not in the shipped binary.
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;

pub use operand::{
    is_stdio, read as read_operand, read_to_string as read_operand_string, write as write_operand,
};
pub use pki::{Cert, CertInfo, CertSpec, Curve, Error as PkiError, Key, Profile as CertProfile};
pub use preseed::{Error as PreseedError, Outcome as PreseedOutcome, Preseed};
pub use store::{write_atomic, Error as StoreError, Overwrite};
pub use sys::default_sigpipe;
pub use sys::{window_size, RawTerminal};

pub use client::connection::{
    config_dir, parse_address, prompt_secret, socket_path, Client, ClientIdentity,
    Error as ClientError, RemoteTrust,
};
pub use client::remotes::{
    cert_path as remote_cert_path, client_ca, pin as pin_remote, trust_for as remote_trust,
    valid_name as valid_remote_name, Remote, Remotes, IMAGES as IMAGES_REMOTE, IMAGES_URL,
    LOCAL as LOCAL_REMOTE, SIMPLESTREAMS,
};
pub use client::ws::{WebSocket, WsMessage};
pub use fault::{Blame, Fault};
pub use hostfile::{Error as HostFileError, Pin};
pub use http::Limits as HttpLimits;
pub use log::{
    set_level as set_log_level, set_target as set_log_target, LogLevel, LogTarget,
    UnknownLevel as UnknownLogLevel, UnknownTarget as UnknownLogTarget, SYSLOG_SOCKET,
};
pub use server::auth::{REMOTE_UNTRUSTED_HINT, UNTRUSTED_HINT};
pub use server::tokens::JoinToken;
pub use server::{run as run_daemon, DaemonOptions, Error as DaemonError};

pub use wire::{
    path as api_path, AliasEntry, AliasInfo, CertificatePut, CertificatesPost, ConsolePost,
    Control, Device, ExecPost, ImageAlias, ImageInfo, ImageSource, ImagesPost, InstancePut,
    InstanceSource, InstancesPost, Role, ServerPut, SnapshotPost, SnapshotsPost, StatePut,
    UnknownRole,
};

pub use vmm::accel::{choose as choose_accel, Accel, AccelChoice, AccelMode, Error as AccelError};
pub use vmm::console::{
    Console, Error as ConsoleError, Input as ConsoleInput, Output as ConsoleOutput,
    Pump as ConsolePump,
};
pub use vmm::qemu::{
    command_line, parse_forward, validate_name, Boot, Disk, DiskFormat, Error as QemuError,
    Forward, MemorySize, Nic, RunFiles, VmConfig, DEFAULT_HOTPLUG_PORTS,
};
pub use vmm::qga::{Agent, Error as AgentError, ExecRequest, ExecResult, MAX_STDIN};
pub use vmm::qmp::{Error as QmpError, Event as QmpEvent, Status as VmStatus};
pub use vmm::vm::{
    console_log, process_running, read_console, AppArmor, Error as VmError, IdRange, RunAs,
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

/// `Debug` for error types: their message. An error is only ever read as
/// words, and what `derive(Debug)` writes instead, every variant's and
/// field's name, costs bytes in a binary that has a size budget.
macro_rules! debug_as_display {
    ($($t:ty),+ $(,)?) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(self, f)
            }
        }
    )+};
}
pub(crate) use debug_as_display;
