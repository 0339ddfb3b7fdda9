//! Crash-safe files: everything kvmbox writes goes through here, so that a
//! crash or power cut leaves either the old content or the new, never half.
//!
//! The recipe is the usual one: write a temporary file in the same directory,
//! fsync it, move it into place, fsync the directory so the rename itself is
//! durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Whether a write may replace a file that is already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace atomically.
    Replace,
    /// Fail with `AlreadyExists`, leaving the existing file untouched.
    Refuse,
}

/// Writes `data` to `path` with permission bits `mode`, atomically.
///
/// With [`Overwrite::Refuse`] the final step is a hard link, which the kernel
/// refuses if the name exists: no window in which a check and a rename race.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, overwrite: Overwrite) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_tmp(&tmp, data, mode).and_then(|()| match overwrite {
        Overwrite::Replace => fs::rename(&tmp, path),
        Overwrite::Refuse => fs::hard_link(&tmp, path),
    });
    // After a rename the temporary name is gone already; after a link or a
    // failure it must not be left behind.
    let _ = fs::remove_file(&tmp);
    result?;
    File::open(&dir)?.sync_all()
}

/// Removes from `dir` the temporary files [`write_atomic`] leaves when its
/// process dies between writing one and moving it into place
/// (`.NAME.tmpPID`), except this process's own. Called at start-up, before
/// anything else writes there: the old content, or the new, is in place.
pub(crate) fn sweep(dir: &Path) {
    let own = format!(".tmp{}", std::process::id());
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let stale = name.starts_with('.')
            && name
                .rsplit_once(".tmp")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            && !name.ends_with(&own);
        if stale && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn write_tmp(tmp: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Why a JSON state file could not be read or written. Each names its
/// file, so that the stores built on these files (trust, tokens, settings)
/// need no wording of their own for it.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

crate::debug_as_display!(Error);

/// Reads a JSON state file; one that does not exist yet is `T::default()`,
/// since every state file starts out absent.
pub(crate) fn read_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T, Error> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a JSON state file with [`write_atomic`], readable by its owner
/// only (some hold secrets' hashes).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let write = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let data = serde_json::to_vec_pretty(value).map_err(|e| write(io::Error::other(e)))?;
    write_atomic(path, &data, 0o600, Overwrite::Replace).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_with_mode_and_leaves_no_temporary() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"secret", 0o600, Overwrite::Refuse)?;
        assert_eq!(fs::read(&path)?, b"secret");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn sweep_removes_only_stale_temporaries() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let own = format!(".a.json.tmp{}", std::process::id());
        for f in [".a.json.tmp12", "a.json", ".hidden", "x.tmp1", own.as_str()] {
            fs::write(d.join(f), b"")?;
        }
        sweep(d);
        let mut left: Vec<String> = fs::read_dir(d)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        left.sort();
        let mut want = vec![".hidden".to_string(), "a.json".into(), "x.tmp1".into(), own];
        want.sort();
        assert_eq!(left, want);
        Ok(())
    }

    #[test]
    fn refuse_keeps_the_existing_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cert.pem");
        fs::write(&path, b"old")?;
        let err = write_atomic(&path, b"new", 0o644, Overwrite::Refuse)
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::AlreadyExists));
        assert_eq!(fs::read(&path)?, b"old");
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        write_atomic(&path, b"new", 0o644, Overwrite::Replace)?;
        assert_eq!(fs::read(&path)?, b"new");
        Ok(())
    }

    #[test]
    fn json_files_absent_is_default_corrupt_and_unreadable_are_told_apart() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        assert_eq!(read_json::<Vec<u32>>(&path).ok(), Some(Vec::new()));
        fs::write(&path, b"[1, 2]")?;
        assert_eq!(read_json::<Vec<u32>>(&path).ok(), Some(vec![1, 2]));
        fs::write(&path, b"[1,")?;
        let corrupt = read_json::<Vec<u32>>(&path)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(corrupt, Err(format!("{} is corrupt", path.display())));
        assert!(matches!(
            read_json::<Vec<u32>>(dir.path()),
            Err(Error::Read { .. })
        ));
        write_json(&path, &vec![3u32]).map_err(io::Error::other)?;
        assert_eq!(read_json::<Vec<u32>>(&path).ok(), Some(vec![3]));
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }
}
