//! The daemon's log: one line per event, filtered by level, on stderr (the
//! default) or to the local syslog daemon (`--log syslog`).
//! Nothing secret is ever passed here (passphrases, keys).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// How much the daemon says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl LogLevel {
    fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }

    /// The syslog severity of the level (RFC 3164 4.1.1: err, warning,
    /// info, debug).
    fn severity(self) -> u8 {
        match self {
            LogLevel::Error => 3,
            LogLevel::Warn => 4,
            LogLevel::Info => 6,
            LogLevel::Debug => 7,
        }
    }
}

/// A name that is none of the levels.
#[derive(thiserror::Error)]
#[error("unknown log level {0:?}: use error, warn, info or debug")]
pub struct UnknownLevel(String);

crate::debug_as_display!(UnknownLevel);

impl std::str::FromStr for LogLevel {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Self, UnknownLevel> {
        match s {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            _ => Err(UnknownLevel(s.to_string())),
        }
    }
}

/// Where the lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Syslog,
}

/// A name that is neither target.
#[derive(thiserror::Error)]
#[error("unknown log target {0:?}: use stderr or syslog")]
pub struct UnknownTarget(String);

crate::debug_as_display!(UnknownTarget);

impl std::str::FromStr for LogTarget {
    type Err = UnknownTarget;
    fn from_str(s: &str) -> Result<Self, UnknownTarget> {
        match s {
            "stderr" => Ok(LogTarget::Stderr),
            "syslog" => Ok(LogTarget::Syslog),
            _ => Err(UnknownTarget(s.to_string())),
        }
    }
}

/// The local syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// The LOG_DAEMON facility (RFC 3164 4.1.1), shifted into place.
const FACILITY_DAEMON: u8 = 3 << 3;
/// Longer messages are cut: some syslog daemons drop a datagram they
/// cannot read whole rather than cut it themselves.
const SYSLOG_MAX: usize = 2048;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// How a line is written once it passes the level.
enum Sink {
    /// `journald_prefix`: stderr is a journal stream, which reads a
    /// leading `<N>` as the line's priority (sd-daemon(3)'s convention).
    Stderr { journald_prefix: bool },
    /// Sent, not connected, to the socket's path each time: a syslog daemon
    /// that restarts is reached again with no reconnect logic.
    Syslog { sock: UnixDatagram, path: PathBuf },
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr {
    journald_prefix: false,
});

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Sends the log to stderr, or to the syslog socket at `syslog` (the
/// daemon's default is [`SYSLOG_SOCKET`]). An unreachable syslog socket is
/// not an error here: each line that cannot be sent goes to stderr.
pub fn set_target(target: LogTarget, syslog: &Path) -> std::io::Result<()> {
    let sink = match target {
        LogTarget::Stderr => Sink::Stderr {
            journald_prefix: stderr_is_journal(),
        },
        LogTarget::Syslog => {
            let sock = UnixDatagram::unbound()?;
            // A syslog daemon that stops reading must not stall the daemon:
            // a full queue sends the line to stderr instead.
            sock.set_nonblocking(true)?;
            Sink::Syslog {
                sock,
                path: syslog.to_path_buf(),
            }
        }
    };
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    Ok(())
}

/// Whether stderr is the stream systemd named in `JOURNAL_STREAM`
/// (`DEVICE:INODE`), rather than something it was redirected to since.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    v.to_str() == Some(format!("{}:{}", meta.dev(), meta.ino()).as_str())
}

pub(crate) fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub(crate) fn write(level: LogLevel, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let tag = level.name();
    let pri = FACILITY_DAEMON | level.severity();
    let sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    match &*sink {
        Sink::Stderr { journald_prefix } => {
            let prefix = if *journald_prefix {
                format!("<{}>", level.severity())
            } else {
                String::new()
            };
            eprintln!("{prefix}kvmboxd: {tag}: {args}");
        }
        Sink::Syslog { sock, path } => {
            // RFC 3164's PRI and TAG. The TIMESTAMP and HOSTNAME are left
            // to the receiver, which stamps a message that has none (4.3.2)
            // in its own time zone; this static binary knows none.
            let line = format!("<{pri}>kvmboxd[{}]: {tag}: {args}", std::process::id());
            let mut end = line.len().min(SYSLOG_MAX);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            if sock
                .send_to(line.as_bytes().get(..end).unwrap_or_default(), path)
                .is_err()
            {
                // Not lost: the service manager usually keeps stderr.
                let _ = writeln!(std::io::stderr(), "kvmboxd: {tag}: {args}");
            }
        }
    }
}

macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::LogLevel::$level, format_args!($($arg)*))
    };
}
pub(crate) use log;
