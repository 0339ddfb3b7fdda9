//! One-time trust tokens (LXD's replacement for a shared trust password): `kvmbox config trust add --name NAME` makes one; a client that
//! presents it in `POST /1.0/certificates` has its TLS certificate trusted
//! with the role and projects the token was made for. Each token works once
//! and expires.
//!
//! The token the administrator hands over has LXD's join-token shape, base64
//! of `{"client_name", "fingerprint", "addresses", "secret", "expires_at"}`,
//! so it also tells the client which server certificate to pin. Only the
//! SHA-256 of the secret is stored: the secret is 32 random bytes, so a fast
//! hash loses nothing and a stolen `tokens.json` admits no one.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::fault::{Blame, Fault};
use crate::pki::hex;
use crate::server::trust::Role;
use crate::store::{read_json, write_json};

/// How long a token is valid unless told otherwise: one day.
pub(crate) const DEFAULT_TTL: u64 = 24 * 3600;

/// What the client receives (LXD's `CertificateAddToken`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub client_name: String,
    pub fingerprint: String,
    pub addresses: Vec<String>,
    pub secret: String,
    /// RFC 3339.
    pub expires_at: String,
}

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// Decodes a token; `None` if it is not one (then it may be a password).
    pub fn decode(text: &str) -> Option<JoinToken> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?;
        let t: JoinToken = serde_json::from_slice(&raw).ok()?;
        (!t.secret.is_empty() && !t.fingerprint.is_empty()).then_some(t)
    }
}

/// A pending token as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    pub role: Role,
    pub projects: Vec<String>,
    /// Seconds since the epoch.
    pub expires: u64,
}

#[derive(thiserror::Error)]
pub enum Error {
    #[error("the system random source failed")]
    Random,
    #[error(transparent)]
    File(#[from] crate::store::Error),
}

crate::debug_as_display!(Error);

impl Blame for Error {
    fn fault(&self) -> Fault {
        Fault::Host
    }
}

/// Pending tokens, in memory and in `tokens.json`.
#[derive(Debug)]
pub(crate) struct Tokens {
    path: PathBuf,
    pending: Vec<Pending>,
}

fn hash(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

impl Tokens {
    pub(crate) fn open(path: &Path) -> Result<Tokens, Error> {
        let pending = read_json(path)?;
        Ok(Tokens {
            path: path.to_path_buf(),
            pending,
        })
    }

    /// Makes a token for `name`, valid for `ttl` seconds from `at`, and
    /// returns its secret.
    pub(crate) fn issue(
        &mut self,
        name: &str,
        role: Role,
        projects: &[String],
        ttl: u64,
        at: u64,
    ) -> Result<(String, u64), Error> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| Error::Random)?;
        let secret = hex(&raw);
        let expires = at.saturating_add(ttl);
        let mut next: Vec<Pending> = self
            .pending
            .iter()
            .filter(|p| p.expires > at)
            .cloned()
            .collect();
        next.push(Pending {
            name: name.to_string(),
            secret_hash: hash(&secret),
            role,
            projects: projects.to_vec(),
            expires,
        });
        self.save(next)?;
        Ok((secret, expires))
    }

    /// Spends the token whose secret is `secret`: it is removed whether or
    /// not it has expired, and returned only if it had not.
    pub(crate) fn redeem(&mut self, secret: &str, at: u64) -> Result<Option<Pending>, Error> {
        let h = hash(secret);
        let Some(i) = self.pending.iter().position(|p| p.secret_hash == h) else {
            return Ok(None);
        };
        let mut next = self.pending.clone();
        let found = next.remove(i);
        next.retain(|p| p.expires > at);
        self.save(next)?;
        Ok((found.expires > at).then_some(found))
    }

    fn save(&mut self, next: Vec<Pending>) -> Result<(), Error> {
        write_json(&self.path, &next)?;
        self.pending = next;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;
    use crate::clock::rfc3339;

    #[test]
    fn single_use_expiring_and_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let mut t = Tokens::open(&path).unwrap();
        let (secret, exp) = t.issue("edge1", Role::User, &[], 100, 1000).unwrap();
        assert_eq!(exp, 1100);
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&secret));
        let mut again = Tokens::open(&path).unwrap();
        assert!(again.redeem("wrong", 1001).unwrap().is_none());
        let p = again.redeem(&secret, 1001).unwrap().unwrap();
        assert_eq!((p.name.as_str(), p.role), ("edge1", Role::User));
        assert!(again.redeem(&secret, 1001).unwrap().is_none(), "single use");
        let (late, _) = again.issue("x", Role::Admin, &[], 10, 2000).unwrap();
        assert!(again.redeem(&late, 2011).unwrap().is_none(), "expired");
        assert!(Tokens::open(&path).unwrap().pending.is_empty());
    }

    #[test]
    fn join_token_round_trip() {
        let j = JoinToken {
            client_name: "edge1".into(),
            fingerprint: "ab".into(),
            addresses: vec!["127.0.0.1:8443".into()],
            secret: "s".into(),
            expires_at: rfc3339(0),
        };
        let text = j.encode();
        assert_eq!(JoinToken::decode(&text), Some(j));
        assert_eq!(JoinToken::decode("hunter2"), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
