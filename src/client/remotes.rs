//! The client's remotes (LXD's `lxc remote`): `config.json` in the client
//! configuration directory names each remote's address and which one is the
//! default; `servercerts/NAME.crt` holds the server certificate pinned at
//! `remote add` (TOFU). `local` always exists and is the Unix socket.
//!
//! Both files are written with `store::write_atomic`, the certificate
//! first: a crash leaves either the old configuration or the new one, at
//! worst with an unused certificate file beside it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::connection::{Error, RemoteTrust};
use crate::pki::Cert;
use crate::store::{read_json, write_atomic, write_json, Overwrite};

/// The name of the Unix socket "remote".
pub const LOCAL: &str = "local";

/// The image server every client knows as `images` unless it is
/// configured otherwise (LXD's default `images` remote).
pub const IMAGES: &str = "images";
pub const IMAGES_URL: &str = "https://images.linuxcontainers.org";
/// The protocol of image servers, which the daemon pulls from.
pub const SIMPLESTREAMS: &str = "simplestreams";

/// One remote server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// `host:port`, or an image server's `https://` URL.
    pub addr: String,
    /// Verified by `client.ca` (PKI mode) rather than by a pinned certificate.
    #[serde(default)]
    pub ca: bool,
    /// `simplestreams` for an image server; empty for a kvmbox daemon.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

/// `config.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remotes {
    #[serde(default)]
    pub default_remote: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// Remote names: what LXD allows, minus anything that could be a path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

impl Remotes {
    /// Reads `dir/config.json`; missing means no remotes.
    pub fn load(dir: &Path) -> Result<Remotes, Error> {
        Ok(read_json(&dir.join("config.json"))?)
    }

    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        Ok(write_json(&dir.join("config.json"), self)?)
    }

    /// The default remote's name.
    pub fn default_name(&self) -> &str {
        self.default_remote.as_deref().unwrap_or(LOCAL)
    }

    /// The URL of image server `name`, if it is one: a remote added with
    /// the simplestreams protocol, or `images` while it is not configured.
    pub fn image_server(&self, name: &str) -> Option<String> {
        match self.remotes.get(name) {
            Some(r) => (r.protocol == SIMPLESTREAMS).then(|| r.addr.clone()),
            None => (name == IMAGES).then(|| IMAGES_URL.to_string()),
        }
    }
}

/// Where a remote's pinned certificate lives.
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("servercerts").join(format!("{name}.crt"))
}

/// Pins `cert` for remote `name`.
pub fn pin(dir: &Path, name: &str, cert: &Cert) -> Result<(), Error> {
    let sub = dir.join("servercerts");
    std::fs::create_dir_all(&sub).map_err(|e| Error::ConfDir(sub.clone(), e))?;
    let path = cert_path(dir, name);
    write_atomic(&path, cert.to_pem().as_bytes(), 0o644, Overwrite::Replace)
        .map_err(|e| Error::ConfDir(path, e))
}

/// The CA certificates in `dir/client.ca`, if that file exists (PKI mode).
pub fn client_ca(dir: &Path) -> Result<Option<Vec<Cert>>, Error> {
    let path = dir.join("client.ca");
    match std::fs::read(&path) {
        Ok(d) => Cert::all_from_pem(&d)
            .map(Some)
            .map_err(|e| Error::BadIdentity(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::ConfDir(path, e)),
    }
}

/// How to check remote `name`'s server now.
pub fn trust_for(dir: &Path, name: &str, remote: &Remote) -> Result<RemoteTrust, Error> {
    if remote.ca {
        let ca = client_ca(dir)?.ok_or_else(|| Error::NoCa(name.to_string()))?;
        return Ok(RemoteTrust::Ca(ca));
    }
    let path = cert_path(dir, name);
    let pem = std::fs::read(&path).map_err(|e| Error::ConfDir(path.clone(), e))?;
    let cert = Cert::from_pem(&pem).map_err(|e| Error::BadIdentity(path, e))?;
    Ok(RemoteTrust::Pinned(cert.fingerprint()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn names_and_round_trip() {
        assert!(valid_name("edge1") && valid_name("a.b-c_d"));
        for bad in ["", "../x", "a/b", ".hidden", "a:b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut r = Remotes::load(dir.path()).unwrap();
        assert_eq!(r.default_name(), LOCAL);
        r.remotes.insert(
            "edge1".into(),
            Remote {
                addr: "127.0.0.1:8443".into(),
                ..Remote::default()
            },
        );
        r.default_remote = Some("edge1".into());
        r.save(dir.path()).unwrap();
        assert_eq!(Remotes::load(dir.path()).unwrap(), r);
        // `images` is an image server until it is configured otherwise.
        assert_eq!(r.image_server(IMAGES).as_deref(), Some(IMAGES_URL));
        assert_eq!(r.image_server("edge1"), None);
        assert_eq!(r.image_server("other"), None);
        let mirror = Remote {
            addr: "https://127.0.0.1:9443".into(),
            protocol: SIMPLESTREAMS.into(),
            ..Remote::default()
        };
        r.remotes.insert("mirror".into(), mirror.clone());
        r.remotes.insert(IMAGES.into(), mirror);
        assert_eq!(
            r.image_server("mirror").as_deref(),
            Some("https://127.0.0.1:9443")
        );
        assert_eq!(
            r.image_server(IMAGES).as_deref(),
            Some("https://127.0.0.1:9443")
        );
        r.remotes.get_mut(IMAGES).unwrap().protocol.clear();
        assert_eq!(r.image_server(IMAGES), None);
    }
}
