//! The daemon's own state file (`daemon.json`): server configuration keys
//! (`PUT/PATCH /1.0`) and whether the local socket has been opened to all
//! users. Secrets in it are hashes only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret;
use crate::store::{write_atomic, Overwrite};

/// The passphrase other local users authenticate with (seed 000).
pub(crate) const LOCAL_PASSPHRASE: &str = "local.passphrase";

/// What `GET /1.0` shows instead of a secret that is set (LXD shows
/// `core.trust_password: true` the same way); sent back in a PUT, it keeps
/// the secret as it is.
pub(crate) const REDACTED: &str = "true";

/// Keys the daemon knows; anything else is refused so a typo is not silently
/// kept.
const KEYS: &[&str] = &[LOCAL_PASSPHRASE];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Values as stored: secrets hashed.
    config: BTreeMap<String, String>,
    /// The first group member has been trusted and the socket is 0666.
    local_socket_open: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown configuration key {0:?}")]
    UnknownKey(String),
    #[error("invalid value for {key}")]
    Invalid {
        key: String,
        #[source]
        source: secret::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
        source: std::io::Error,
    },
}

/// The settings, in memory and on disk.
#[derive(Debug)]
pub(crate) struct Settings {
    path: PathBuf,
    file: File,
}

impl Settings {
    pub(crate) fn open(path: &Path) -> Result<Settings, Error> {
        let file = match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::Corrupt {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Settings {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The configuration as the API shows it, secrets redacted.
    pub(crate) fn public(&self) -> BTreeMap<String, String> {
        self.file
            .config
            .iter()
            .map(|(k, v)| {
                let shown = if k == LOCAL_PASSPHRASE { REDACTED } else { v };
                (k.clone(), shown.to_string())
            })
            .collect()
    }

    /// The stored hash of the local passphrase, if one is set.
    pub(crate) fn passphrase_hash(&self) -> Option<&str> {
        self.file.config.get(LOCAL_PASSPHRASE).map(String::as_str)
    }

    pub(crate) fn local_socket_open(&self) -> bool {
        self.file.local_socket_open
    }

    pub(crate) fn set_local_socket_open(&mut self) -> Result<(), Error> {
        let mut next = self.file.clone();
        next.local_socket_open = true;
        self.commit(next)
    }

    /// Applies `changes` (an empty value unsets a key). With `replace`, keys
    /// not named are unset too (PUT); otherwise they are kept (PATCH).
    /// Nothing changes unless every key is valid. Slow hashing happens here,
    /// so callers run it off the async executor.
    pub(crate) fn apply(
        &mut self,
        changes: &BTreeMap<String, String>,
        replace: bool,
    ) -> Result<(), Error> {
        let mut next = self.file.clone();
        if replace {
            next.config.retain(|k, _| changes.contains_key(k));
        }
        for (key, value) in changes {
            if !KEYS.contains(&key.as_str()) {
                return Err(Error::UnknownKey(key.clone()));
            }
            if value.is_empty() {
                next.config.remove(key);
            } else if key == LOCAL_PASSPHRASE {
                if value == REDACTED && self.file.config.contains_key(key) {
                    continue;
                }
                let hashed = secret::hash(value).map_err(|source| Error::Invalid {
                    key: key.clone(),
                    source,
                })?;
                next.config.insert(key.clone(), hashed);
            } else {
                next.config.insert(key.clone(), value.clone());
            }
        }
        self.commit(next)
    }

    fn commit(&mut self, next: File) -> Result<(), Error> {
        if next == self.file {
            return Ok(());
        }
        let data = serde_json::to_vec_pretty(&next).map_err(|e| Error::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.path, &data, 0o600, Overwrite::Replace).map_err(|source| {
            Error::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        self.file = next;
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn passphrase_is_hashed_redacted_and_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        let mut s = Settings::open(&path).unwrap();
        s.apply(&map(&[(LOCAL_PASSPHRASE, "hunter2hunter2")]), false)
            .unwrap();
        let disk = std::fs::read_to_string(&path).unwrap();
        assert!(!disk.contains("hunter2"));
        assert!(disk.contains("pbkdf2-sha256$"));
        assert_eq!(s.public()[LOCAL_PASSPHRASE], REDACTED);
        let hash = s.passphrase_hash().unwrap().to_string();
        assert!(secret::verify("hunter2hunter2", &hash));
        // A PUT of what GET showed keeps the secret.
        s.apply(&s.public(), true).unwrap();
        assert_eq!(s.passphrase_hash(), Some(hash.as_str()));
        let again = Settings::open(&path).unwrap();
        assert_eq!(again.passphrase_hash(), Some(hash.as_str()));
        s.apply(&map(&[(LOCAL_PASSPHRASE, "")]), false).unwrap();
        assert_eq!(s.passphrase_hash(), None);
    }

    #[test]
    fn unknown_keys_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        let mut s = Settings::open(&path).unwrap();
        let err = s.apply(&map(&[(LOCAL_PASSPHRASE, "x"), ("core.nope", "1")]), false);
        assert!(matches!(err, Err(Error::UnknownKey(k)) if k == "core.nope"));
        assert_eq!(s.passphrase_hash(), None);
        assert!(!path.exists());
        s.set_local_socket_open().unwrap();
        assert!(Settings::open(&path).unwrap().local_socket_open());
        std::fs::write(&path, b"[]").unwrap();
        assert!(matches!(Settings::open(&path), Err(Error::Corrupt { .. })));
    }
}
