//! The trust store: which client certificates may use the daemon, and with
//! which role, and which were removed from it (in PKI mode a certificate the
//! CA signed would otherwise get in again unlisted). Shared by the Unix
//! socket and the TCP listener; kept as one JSON file written atomically
//! (`store::write_atomic`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clock::now;
use crate::fault::{Blame, Fault};
use crate::pki::Cert;
use crate::store::{read_json, write_json};
pub(crate) use crate::wire::{check_projects, Role, DEFAULT_PROJECT};

/// One trusted certificate, in the shape `GET /1.0/certificates/<fp>` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// SHA-256 of the DER, lowercase hex; the key of the store.
    pub fingerprint: String,
    pub name: String,
    /// `client` (LXD also knows `metrics`; only clients exist here).
    #[serde(rename = "type")]
    pub kind: String,
    /// The certificate, PEM.
    pub certificate: String,
    pub role: Role,
    /// Projects the role applies to; empty means all (LXD's `restricted: false`).
    pub projects: Vec<String>,
    /// When it was added, seconds since the epoch.
    pub added: u64,
}

#[derive(thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    File(#[from] crate::store::Error),
    #[error("project {0:?} not found: kvmbox has only the default project")]
    UnknownProject(String),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        match self {
            Error::File(_) => Fault::Host,
            Error::UnknownProject(_) => Fault::Input,
        }
    }
}

/// The file as written. A plain list of entries is what kvmbox wrote before
/// it remembered removals, and what it still writes while nothing is
/// denied; with denials it is an object, which an older kvmboxd refuses as
/// corrupt rather than letting a removed certificate back in.
#[derive(Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Entries(Vec<Entry>),
    Store(StoreFile),
}

impl Default for OnDisk {
    fn default() -> Self {
        OnDisk::Entries(Vec::new())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    certificates: Vec<Entry>,
    /// Fingerprints removed from the store and not added again since.
    #[serde(default)]
    denied: BTreeSet<String>,
    /// The public keys of those certificates ([`Cert::key_fingerprint`]);
    /// absent from stores written before keys were recorded.
    #[serde(default)]
    denied_keys: BTreeSet<String>,
}

/// The trust store, in memory, mirrored to its file on every change.
#[derive(Debug)]
pub(crate) struct TrustStore {
    path: PathBuf,
    /// By fingerprint; the file holds the values in this order.
    entries: BTreeMap<String, Entry>,
    /// Fingerprints removed and not added again: never trusted by default
    /// (see [`TrustStore::is_denied`]). Never also a key of `entries`.
    denied: BTreeSet<String>,
    /// Their public keys, unless a listed certificate still has the key.
    /// Never also a key of `keys`.
    denied_keys: BTreeSet<String>,
    /// The fingerprints of the listed certificates, by public key: a
    /// certificate is re-signed without its key (see
    /// [`Cert::key_fingerprint`]).
    keys: BTreeMap<String, Vec<String>>,
}

/// What the store says about a certificate.
#[derive(Debug)]
pub(crate) enum Standing<'a> {
    Listed(&'a Entry),
    /// Removed by an administrator and not added again: no role, whatever
    /// a CA or `core.pki_default_role` say.
    Denied,
    Unknown,
}

/// The public key of an entry's certificate; `None` if it does not parse
/// (nothing then matches it by key).
fn entry_key(e: &Entry) -> Option<String> {
    Cert::from_pem(e.certificate.as_bytes())
        .and_then(|c| c.key_fingerprint())
        .ok()
}

fn key_index(entries: &BTreeMap<String, Entry>) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in entries.values() {
        if let Some(k) = entry_key(e) {
            keys.entry(k).or_default().push(e.fingerprint.clone());
        }
    }
    keys
}

impl TrustStore {
    /// Loads `path`; a missing file is an empty store.
    pub(crate) fn open(path: &Path) -> Result<TrustStore, Error> {
        let file = read_json::<OnDisk>(path)?;
        let (list, mut denied, mut denied_keys) = match file {
            OnDisk::Entries(list) => (list, BTreeSet::new(), BTreeSet::new()),
            OnDisk::Store(f) => (f.certificates, f.denied, f.denied_keys),
        };
        let entries: BTreeMap<String, Entry> = list
            .into_iter()
            .map(|e| (e.fingerprint.clone(), e))
            .collect();
        let keys = key_index(&entries);
        denied.retain(|fp| !entries.contains_key(fp));
        denied_keys.retain(|k| !keys.contains_key(k));
        Ok(TrustStore {
            path: path.to_path_buf(),
            entries,
            denied,
            denied_keys,
            keys,
        })
    }

    /// Whether `cert`, or a certificate of its public key, was removed from
    /// the store and not added again: such a certificate gets no role, even
    /// if a CA vouches for it, and cannot add itself back.
    pub(crate) fn is_denied(&self, cert: &Cert) -> bool {
        self.denied.contains(&cert.fingerprint())
            || cert
                .key_fingerprint()
                .is_ok_and(|k| self.denied_keys.contains(&k))
    }

    /// `cert`'s standing: by its fingerprint, then, with `by_key` (PKI mode,
    /// where a CA's signature and not the exact bytes let it in), by its
    /// public key. A key listed under several certificates gives the least
    /// of their grants.
    pub(crate) fn lookup(&self, cert: &Cert, by_key: bool) -> Standing<'_> {
        let fp = cert.fingerprint();
        if let Some(e) = self.entries.get(&fp) {
            return Standing::Listed(e);
        }
        if self.denied.contains(&fp) {
            return Standing::Denied;
        }
        let Some(key) = cert.key_fingerprint().ok().filter(|_| by_key) else {
            return Standing::Unknown;
        };
        let least = self
            .keys
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|fp| self.entries.get(fp))
            .min_by_key(|e| (e.role, e.projects.is_empty()));
        match least {
            Some(e) => Standing::Listed(e),
            None if self.denied_keys.contains(&key) => Standing::Denied,
            None => Standing::Unknown,
        }
    }

    pub(crate) fn get(&self, fingerprint: &str) -> Option<&Entry> {
        self.entries.get(fingerprint)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Trusts `cert` with `role` in all projects; an already trusted
    /// certificate keeps its entry.
    pub(crate) fn add(&mut self, cert: &Cert, name: &str, role: Role) -> Result<&Entry, Error> {
        self.add_scoped(cert, name, role, &[])
    }

    /// [`TrustStore::add`] limited to `projects` (empty: all).
    pub(crate) fn add_scoped(
        &mut self,
        cert: &Cert,
        name: &str,
        role: Role,
        projects: &[String],
    ) -> Result<&Entry, Error> {
        let fingerprint = cert.fingerprint();
        if !self.entries.contains_key(&fingerprint) {
            let entry = Entry {
                fingerprint: fingerprint.clone(),
                name: name.to_string(),
                kind: "client".to_string(),
                certificate: cert.to_pem(),
                role,
                projects: projects.to_vec(),
                added: now(),
            };
            let mut next = self.entries.clone();
            next.insert(fingerprint.clone(), entry);
            // Adding it explicitly is what lifts a denial, of the key too.
            let mut denied = self.denied.clone();
            denied.remove(&fingerprint);
            let mut denied_keys = self.denied_keys.clone();
            if let Ok(k) = cert.key_fingerprint() {
                denied_keys.remove(&k);
            }
            self.save(&next, &denied, &denied_keys)?;
            self.keys = key_index(&next);
            self.entries = next;
            self.denied = denied;
            self.denied_keys = denied_keys;
        }
        self.entries.get(&fingerprint).ok_or_else(|| {
            Error::File(crate::store::Error::Write {
                path: self.path.clone(),
                source: std::io::Error::other("entry vanished"),
            })
        })
    }

    /// Changes an entry's name, role and projects; false if there is none.
    pub(crate) fn update(
        &mut self,
        fingerprint: &str,
        name: &str,
        role: Role,
        projects: &[String],
    ) -> Result<bool, Error> {
        let Some(old) = self.entries.get(fingerprint) else {
            return Ok(false);
        };
        let entry = Entry {
            name: name.to_string(),
            role,
            projects: projects.to_vec(),
            ..old.clone()
        };
        let mut next = self.entries.clone();
        next.insert(fingerprint.to_string(), entry);
        self.save(&next, &self.denied, &self.denied_keys)?;
        self.entries = next;
        Ok(true)
    }

    /// Removes the entry whose fingerprint is `fingerprint` and denies it
    /// from then on, in one write; false if there is none. Its public key
    /// is denied too, unless another listed certificate has it.
    pub(crate) fn remove(&mut self, fingerprint: &str) -> Result<bool, Error> {
        let Some(old) = self.entries.get(fingerprint) else {
            return Ok(false);
        };
        let key = entry_key(old);
        let mut next = self.entries.clone();
        next.remove(fingerprint);
        let mut denied = self.denied.clone();
        denied.insert(fingerprint.to_string());
        let keys = key_index(&next);
        let mut denied_keys = self.denied_keys.clone();
        denied_keys.extend(key.filter(|k| !keys.contains_key(k)));
        self.save(&next, &denied, &denied_keys)?;
        self.entries = next;
        self.denied = denied;
        self.denied_keys = denied_keys;
        self.keys = keys;
        Ok(true)
    }

    /// Writes first, then changes memory: a failed write changes nothing.
    fn save(
        &self,
        entries: &BTreeMap<String, Entry>,
        denied: &BTreeSet<String>,
        denied_keys: &BTreeSet<String>,
    ) -> Result<(), Error> {
        let list: Vec<Entry> = entries.values().cloned().collect();
        if denied.is_empty() && denied_keys.is_empty() {
            write_json(&self.path, &list)?;
        } else {
            write_json(
                &self.path,
                &StoreFile {
                    certificates: list,
                    denied: denied.clone(),
                    denied_keys: denied_keys.clone(),
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use crate::pki::{CertSpec, Curve, Key, Profile};

    fn cert(cn: &str) -> Cert {
        let key = Key::generate(Curve::P256).unwrap();
        CertSpec {
            cn: cn.into(),
            sans: vec![],
            days: 1,
            profile: Profile::SelfSigned,
        }
        .self_signed(&key)
        .unwrap()
    }

    #[test]
    fn add_remove_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust.json");
        let mut store = TrustStore::open(&path).unwrap();
        assert_eq!(store.entries().count(), 0);
        let (a, b) = (cert("a"), cert("b"));
        store.add(&a, "alice", Role::Admin).unwrap();
        store.add(&b, "bob", Role::Auditor).unwrap();
        // Adding again keeps the first entry.
        assert_eq!(store.add(&a, "other", Role::User).unwrap().name, "alice");
        let again = TrustStore::open(&path).unwrap();
        assert_eq!(again.entries().count(), 2);
        let e = again.get(&b.fingerprint()).unwrap();
        assert_eq!(
            (e.name.as_str(), e.role, e.kind.as_str()),
            ("bob", Role::Auditor, "client")
        );
        assert_eq!(Cert::from_pem(e.certificate.as_bytes()).unwrap(), b);
        let p = vec!["default".to_string()];
        assert!(store
            .update(&b.fingerprint(), "bob", Role::User, &p)
            .unwrap());
        assert!(!store.update("00", "x", Role::User, &p).unwrap());
        let e = TrustStore::open(&path).unwrap();
        let e = e.get(&b.fingerprint()).unwrap();
        assert_eq!((e.role, e.projects.clone()), (Role::User, p));
        assert!(store.remove(&a.fingerprint()).unwrap());
        assert!(!store.remove(&a.fingerprint()).unwrap());
        assert_eq!(TrustStore::open(&path).unwrap().entries().count(), 1);
    }

    #[test]
    fn a_removed_certificate_stays_denied_until_added_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust.json");
        let mut store = TrustStore::open(&path).unwrap();
        let (a, b) = (cert("a"), cert("b"));
        store.add(&a, "a", Role::Admin).unwrap();
        store.add(&b, "b", Role::User).unwrap();
        // Nothing denied yet: the list older versions read.
        let disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(disk.is_array(), "{disk}");
        assert!(store.remove(&a.fingerprint()).unwrap());
        assert!(store.is_denied(&a));
        assert!(!store.is_denied(&b));
        let again = TrustStore::open(&path).unwrap();
        assert!(again.is_denied(&a), "the denial is on disk");
        assert_eq!(again.entries().count(), 1);
        store.add(&a, "a", Role::Auditor).unwrap();
        assert!(!store.is_denied(&a));
        let again = TrustStore::open(&path).unwrap();
        assert!(!again.is_denied(&a));
        assert_eq!(again.get(&a.fingerprint()).unwrap().role, Role::Auditor);
    }

    #[test]
    fn a_certificate_stands_as_its_key_when_asked_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust.json");
        let mut store = TrustStore::open(&path).unwrap();
        let key = Key::generate(Curve::P256).unwrap();
        let of_key = || {
            CertSpec {
                cn: "k".into(),
                sans: vec![],
                days: 1,
                profile: Profile::SelfSigned,
            }
            .self_signed(&key)
            .unwrap()
        };
        let (a, b, c) = (of_key(), of_key(), of_key());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let role = |s: Standing<'_>| match s {
            Standing::Listed(e) => Some(e.role),
            Standing::Denied => None,
            Standing::Unknown => panic!("unknown"),
        };
        let p = vec!["default".to_string()];
        store.add_scoped(&a, "a", Role::Auditor, &p).unwrap();
        store.add(&b, "b", Role::Admin).unwrap();
        assert!(matches!(store.lookup(&c, false), Standing::Unknown));
        // Several entries of one key: the least of them.
        assert_eq!(role(store.lookup(&c, true)), Some(Role::Auditor));
        assert_eq!(
            role(store.lookup(&b, true)),
            Some(Role::Admin),
            "its own entry"
        );
        // Removed while another entry keeps the key: only its fingerprint.
        store.remove(&a.fingerprint()).unwrap();
        assert_eq!(role(store.lookup(&c, true)), Some(Role::Admin));
        assert_eq!(role(store.lookup(&a, true)), None);
        store.remove(&b.fingerprint()).unwrap();
        assert_eq!(role(store.lookup(&c, true)), None);
        assert!(store.is_denied(&c));
        let again = TrustStore::open(&path).unwrap();
        assert_eq!(role(again.lookup(&c, true)), None, "on disk");
        assert!(matches!(again.lookup(&c, false), Standing::Unknown));
        // An administrator adding one certificate of the key lifts the key.
        store.add(&c, "c", Role::User).unwrap();
        assert!(!store.is_denied(&c));
        let other = of_key();
        assert_eq!(role(store.lookup(&other, true)), Some(Role::User));
        assert_eq!(role(store.lookup(&a, true)), None, "a's own removal stands");
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            TrustStore::open(&path),
            Err(Error::File(crate::store::Error::Corrupt { .. }))
        ));
    }
}
