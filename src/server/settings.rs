//! The daemon's own state file (`daemon.json`): server configuration keys
//! (`PUT/PATCH /1.0`) and whether the local socket has been opened to all
//! users. Secrets in it are hashes only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fault::{Blame, Fault};
use crate::server::secret;
use crate::store::{read_json, write_json};

/// The passphrase other local users authenticate with (Multipass's model).
pub(crate) const LOCAL_PASSPHRASE: &str = "local.passphrase";

/// The address the TLS listener binds: one `IP:PORT`, no wildcard by default.
pub(crate) const HTTPS_ADDRESS: &str = "core.https_address";

/// The password remote clients add themselves with (LXD's key; unset it
/// once every client is added).
pub(crate) const TRUST_PASSWORD: &str = "core.trust_password";

/// The role a client certificate gets in PKI mode when the CA signed it but
/// the trust store does not list it: `none` (the default: no role), or one
/// of the roles. Removing a certificate from the trust store denies it
/// whatever this says.
pub(crate) const PKI_DEFAULT_ROLE: &str = "core.pki_default_role";

/// Keys whose values are secrets: stored hashed, shown redacted.
const SECRETS: &[&str] = &[LOCAL_PASSPHRASE, TRUST_PASSWORD];

/// What `GET /1.0` shows instead of a secret that is set (LXD shows
/// `core.trust_password: true` the same way); sent back in a PUT, it keeps
/// the secret as it is.
pub(crate) const REDACTED: &str = "true";

/// Accelerator mode for VMs: auto, kvm or tcg (probed once at daemon start).
pub(crate) const INSTANCES_ACCEL: &str = "instances.accel";
/// `FIRST:COUNT`: the uids (= gids) VMs' QEMUs run as, one per instance.
pub(crate) const INSTANCES_UID_RANGE: &str = "instances.uid_range";
/// Where `kvmbox-aa-helper` writes the per-VM profiles.
pub(crate) const AA_PROFILE_DIR: &str = "security.apparmor_profile_dir";

/// The largest image upload taken (`lxc image import`), in bytes or
/// LXD's units (`10GiB`).
pub(crate) const IMAGES_MAX_UPLOAD: &str = "images.max_upload_size";
/// What [`IMAGES_MAX_UPLOAD`] is when unset.
const DEFAULT_MAX_UPLOAD: u64 = 10 << 30;

/// Keys the daemon knows; anything else is refused so a typo is not silently
/// kept.
const KEYS: &[&str] = &[
    HTTPS_ADDRESS,
    LOCAL_PASSPHRASE,
    TRUST_PASSWORD,
    INSTANCES_ACCEL,
    INSTANCES_UID_RANGE,
    AA_PROFILE_DIR,
    PKI_DEFAULT_ROLE,
    IMAGES_MAX_UPLOAD,
];

/// Checks the value of a key that is not a secret.
fn check_value(key: &str, value: &str) -> Result<(), Error> {
    match key {
        INSTANCES_ACCEL => value
            .parse::<crate::vmm::accel::AccelMode>()
            .map(|_| ())
            .map_err(Error::Accel),
        INSTANCES_UID_RANGE => value
            .parse::<crate::vmm::vm::IdRange>()
            .map(|_| ())
            .map_err(Error::UidRange),
        AA_PROFILE_DIR => {
            let ok = value.starts_with('/')
                && !value.chars().any(char::is_control)
                && !value.split('/').any(|c| c == ".." || c == ".");
            if ok {
                Ok(())
            } else {
                Err(Error::ProfileDir)
            }
        }
        PKI_DEFAULT_ROLE => parse_role(value).map(|_| ()),
        IMAGES_MAX_UPLOAD => value
            .parse::<crate::vmm::qemu::MemorySize>()
            .map(|_| ())
            .map_err(Error::UploadSize),
        _ => Ok(()),
    }
}

/// A value of [`PKI_DEFAULT_ROLE`]: `none` is no role.
fn parse_role(value: &str) -> Result<Option<crate::server::trust::Role>, Error> {
    match value {
        "none" => Ok(None),
        _ => value
            .parse()
            .map(Some)
            .map_err(|_| Error::Role(value.to_string())),
    }
}

/// Changes checked and with secrets already hashed, ready for [`Settings::apply`].
/// Hashing is slow by design, so it happens here, outside any lock.
#[derive(Debug)]
pub(crate) struct Prepared(BTreeMap<String, Change>);

#[derive(Debug)]
enum Change {
    Unset,
    /// The redacted value sent back: keep the secret that is set.
    KeepSecret,
    /// The value as stored.
    Set(String),
}

/// Checks one key and its value as [`prepare`] will, without hashing
/// anything: what a client can check before it sends a change.
pub(crate) fn check(key: &str, value: &str) -> Result<(), Error> {
    if !KEYS.contains(&key) {
        return Err(Error::UnknownKey(key.to_string()));
    }
    if value.is_empty() || SECRETS.contains(&key) {
        return Ok(());
    }
    if key == HTTPS_ADDRESS {
        return match value.parse::<std::net::SocketAddr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::BadAddress(value.to_string())),
        };
    }
    check_value(key, value)
}

/// Whether `key` holds a secret, which the API never shows back.
pub(crate) fn is_secret(key: &str) -> bool {
    SECRETS.contains(&key)
}

/// Checks `changes` (an empty value unsets a key) and hashes secrets.
pub(crate) fn prepare(changes: &BTreeMap<String, String>) -> Result<Prepared, Error> {
    let mut out = BTreeMap::new();
    for (key, value) in changes {
        check(key, value)?;
        if key == INSTANCES_UID_RANGE && !value.is_empty() {
            // Here and not in `check`, which clients run too: the accounts
            // that matter are the daemon host's.
            let range: crate::vmm::vm::IdRange = value.parse().map_err(Error::UidRange)?;
            range.unused().map_err(Error::IdsInUse)?;
        }
        let change = if value.is_empty() {
            Change::Unset
        } else if SECRETS.contains(&key.as_str()) && value == REDACTED {
            Change::KeepSecret
        } else if SECRETS.contains(&key.as_str()) {
            Change::Set(secret::hash(value).map_err(|source| Error::Invalid {
                key: key.clone(),
                source,
            })?)
        } else {
            Change::Set(value.clone())
        };
        out.insert(key.clone(), change);
    }
    Ok(Prepared(out))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Values as stored: secrets hashed.
    config: BTreeMap<String, String>,
    /// The first group member has been trusted and the socket is 0666.
    local_socket_open: bool,
}

#[derive(thiserror::Error)]
pub enum Error {
    #[error("unknown configuration key {0:?}")]
    UnknownKey(String),
    #[error("{0:?} is not an address: use IP:PORT, e.g. 192.0.2.1:8443 or [::1]:8443")]
    BadAddress(String),
    #[error("invalid value for {INSTANCES_ACCEL}")]
    Accel(#[source] crate::vmm::accel::Error),
    #[error("invalid value for {INSTANCES_UID_RANGE}")]
    UidRange(#[source] crate::vmm::vm::InvalidIdRange),
    #[error("invalid value for {INSTANCES_UID_RANGE}")]
    IdsInUse(#[source] crate::sys::IdInUse),
    #[error("invalid value for {AA_PROFILE_DIR}: expected an absolute, normalised path")]
    ProfileDir,
    #[error(
        "invalid value for {PKI_DEFAULT_ROLE}: unknown role {0:?}: use none, auditor, user, \
         operator or admin"
    )]
    Role(String),
    #[error("invalid value for {IMAGES_MAX_UPLOAD}")]
    UploadSize(#[source] crate::vmm::qemu::Error),
    #[error("{0} is shown as \"true\" when set and cannot be set to that")]
    Redacted(String),
    #[error("invalid value for {key}")]
    Invalid {
        key: String,
        #[source]
        source: secret::Error,
    },
    #[error(transparent)]
    File(#[from] crate::store::Error),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::Invalid {
                source: secret::Error::Random,
                ..
            }
            | Error::File(_) => Fault::Host,
            _ => Fault::Input,
        }
    }
}

/// The settings, in memory and on disk.
#[derive(Debug)]
pub(crate) struct Settings {
    path: PathBuf,
    file: File,
}

impl Settings {
    pub(crate) fn open(path: &Path) -> Result<Settings, Error> {
        let file = read_json(path)?;
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
                let shown = if SECRETS.contains(&k.as_str()) {
                    REDACTED
                } else {
                    v
                };
                (k.clone(), shown.to_string())
            })
            .collect()
    }

    /// The value of a key that is not a secret, if set.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        if key == LOCAL_PASSPHRASE {
            return None;
        }
        self.file.config.get(key).map(String::as_str)
    }

    /// The stored hash of the local passphrase, if one is set.
    pub(crate) fn passphrase_hash(&self) -> Option<&str> {
        self.file.config.get(LOCAL_PASSPHRASE).map(String::as_str)
    }

    /// The stored hash of the remote trust password, if one is set.
    pub(crate) fn trust_password_hash(&self) -> Option<&str> {
        self.file.config.get(TRUST_PASSWORD).map(String::as_str)
    }

    /// Where the TLS listener binds, if anywhere.
    pub(crate) fn https_address(&self) -> Option<std::net::SocketAddr> {
        self.file.config.get(HTTPS_ADDRESS)?.parse().ok()
    }

    /// [`PKI_DEFAULT_ROLE`]; unset is `none`.
    pub(crate) fn pki_default_role(&self) -> Option<crate::server::trust::Role> {
        self.get(PKI_DEFAULT_ROLE)
            .and_then(|v| parse_role(v).ok())
            .flatten()
    }

    /// [`IMAGES_MAX_UPLOAD`] in bytes.
    pub(crate) fn max_upload_size(&self) -> u64 {
        self.get(IMAGES_MAX_UPLOAD)
            .and_then(|v| v.parse::<crate::vmm::qemu::MemorySize>().ok())
            .map_or(DEFAULT_MAX_UPLOAD, |m| m.bytes())
    }

    pub(crate) fn local_socket_open(&self) -> bool {
        self.file.local_socket_open
    }

    pub(crate) fn set_local_socket_open(&mut self) -> Result<(), Error> {
        let mut next = self.file.clone();
        next.local_socket_open = true;
        self.commit(next)
    }

    /// Applies `changes` made by [`prepare`]. With `replace`, keys not
    /// named are unset too (PUT); otherwise they are kept (PATCH).
    pub(crate) fn apply(&mut self, changes: Prepared, replace: bool) -> Result<(), Error> {
        let mut next = self.file.clone();
        if replace {
            next.config.retain(|k, _| changes.0.contains_key(k));
        }
        for (key, change) in changes.0 {
            match change {
                Change::Unset => {
                    next.config.remove(&key);
                }
                Change::KeepSecret if next.config.contains_key(&key) => {}
                Change::KeepSecret => {
                    // Nothing was set, so "true" was meant as the passphrase:
                    // refuse rather than guess.
                    return Err(Error::Redacted(key));
                }
                Change::Set(stored) => {
                    next.config.insert(key, stored);
                }
            }
        }
        self.commit(next)
    }

    fn commit(&mut self, next: File) -> Result<(), Error> {
        if next == self.file {
            return Ok(());
        }
        write_json(&self.path, &next)?;
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
        s.apply(
            prepare(&map(&[(LOCAL_PASSPHRASE, "hunter2hunter2")])).unwrap(),
            false,
        )
        .unwrap();
        let disk = std::fs::read_to_string(&path).unwrap();
        assert!(!disk.contains("hunter2"));
        assert!(disk.contains("pbkdf2-sha256$"));
        assert_eq!(s.public()[LOCAL_PASSPHRASE], REDACTED);
        let hash = s.passphrase_hash().unwrap().to_string();
        assert!(secret::verify("hunter2hunter2", &hash));
        // A PUT of what GET showed keeps the secret.
        s.apply(prepare(&s.public()).unwrap(), true).unwrap();
        assert_eq!(s.passphrase_hash(), Some(hash.as_str()));
        let again = Settings::open(&path).unwrap();
        assert_eq!(again.passphrase_hash(), Some(hash.as_str()));
        s.apply(prepare(&map(&[(LOCAL_PASSPHRASE, "")])).unwrap(), false)
            .unwrap();
        assert_eq!(s.passphrase_hash(), None);
        let keep = prepare(&map(&[(LOCAL_PASSPHRASE, REDACTED)])).unwrap();
        assert!(matches!(s.apply(keep, false), Err(Error::Redacted(_))));
    }

    #[test]
    fn trust_password_is_a_secret_and_the_address_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::open(&dir.path().join("daemon.json")).unwrap();
        s.apply(
            prepare(&map(&[
                (TRUST_PASSWORD, "sesame-sesame"),
                (HTTPS_ADDRESS, "127.0.0.1:8443"),
            ]))
            .unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(s.public()[TRUST_PASSWORD], REDACTED);
        assert_eq!(s.public()[HTTPS_ADDRESS], "127.0.0.1:8443");
        assert!(secret::verify(
            "sesame-sesame",
            s.trust_password_hash().unwrap()
        ));
        assert_eq!(s.https_address().unwrap().port(), 8443);
        for bad in ["localhost:8443", "127.0.0.1", ":8443", "1.2.3.4:99999"] {
            assert!(
                matches!(
                    prepare(&map(&[(HTTPS_ADDRESS, bad)])),
                    Err(Error::BadAddress(_))
                ),
                "{bad}"
            );
        }
        s.apply(prepare(&map(&[(TRUST_PASSWORD, "")])).unwrap(), false)
            .unwrap();
        assert_eq!(s.trust_password_hash(), None);
    }

    #[test]
    fn pki_default_role_is_none_unless_set_to_a_role() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::open(&dir.path().join("daemon.json")).unwrap();
        assert_eq!(s.pki_default_role(), None);
        for (v, want) in [
            ("auditor", Some(crate::server::trust::Role::Auditor)),
            ("admin", Some(crate::server::trust::Role::Admin)),
            ("none", None),
        ] {
            s.apply(prepare(&map(&[(PKI_DEFAULT_ROLE, v)])).unwrap(), false)
                .unwrap();
            assert_eq!(s.pki_default_role(), want, "{v}");
        }
        let err = prepare(&map(&[(PKI_DEFAULT_ROLE, "root")])).unwrap_err();
        assert!(err.to_string().contains("none, auditor"), "{err}");
    }

    #[test]
    fn unknown_keys_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        let mut s = Settings::open(&path).unwrap();
        let err = prepare(&map(&[(LOCAL_PASSPHRASE, "x"), ("core.nope", "1")]));
        assert!(matches!(err, Err(Error::UnknownKey(k)) if k == "core.nope"));
        assert_eq!(s.passphrase_hash(), None);
        assert!(!path.exists());
        s.set_local_socket_open().unwrap();
        assert!(Settings::open(&path).unwrap().local_socket_open());
        std::fs::write(&path, b"[]").unwrap();
        assert!(matches!(
            Settings::open(&path),
            Err(Error::File(crate::store::Error::Corrupt { .. }))
        ));
    }
}
