//! The daemon's log: one line per event on stderr, filtered by level.
//! Nothing secret is ever passed here (passphrases, keys).

use std::sync::atomic::{AtomicU8, Ordering};

/// How much the daemon says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
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

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub(crate) fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub(crate) fn write(level: LogLevel, args: std::fmt::Arguments<'_>) {
    if enabled(level) {
        let tag = match level {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        };
        eprintln!("kvmboxd: {tag}: {args}");
    }
}

macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::LogLevel::$level, format_args!($($arg)*))
    };
}
pub(crate) use log;
