//! File operands of the command line: `-` is standard input where a file is
//! read and standard output where one is written, as for any Unix tool
//! (POSIX.1-2017, Utility Syntax Guidelines, guideline 13). Every applet
//! reads and writes its file options through here, so none of them opens a
//! file named `-`; `./-` still names one.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::{write_atomic, Overwrite};

/// Standard input has been read by an earlier operand: a second `-` would
/// get nothing, so it is refused instead.
static STDIN_TAKEN: AtomicBool = AtomicBool::new(false);

/// Whether `path` is `-`, standard input or output.
pub fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The contents of `path`, or of standard input for `-`; more than `limit`
/// bytes is an error, not a silent cut.
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    if is_stdio(path) {
        if STDIN_TAKEN.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "standard input is already read for another operand",
            ));
        }
        io::stdin()
            .lock()
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)?;
    } else {
        std::fs::File::open(path)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)?;
    }
    if data.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(data)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Writes `data` to `path` with [`write_atomic`], or to standard output for `-`.
pub fn write(path: &Path, data: &[u8], mode: u32, overwrite: Overwrite) -> io::Result<()> {
    if is_stdio(path) {
        let mut out = io::stdout().lock();
        out.write_all(data)?;
        return out.flush();
    }
    write_atomic(path, data, mode, overwrite)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed test should panic")]
    use super::*;

    #[test]
    fn files_are_read_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "1234").unwrap();
        assert_eq!(read_to_string(&f, 4).unwrap(), "1234");
        let e = read(&f, 3).unwrap_err();
        assert_eq!(e.to_string(), "larger than 3 bytes");
        assert!(!is_stdio(&dir.path().join("-")));
        assert!(is_stdio(Path::new("-")));
    }
}
