//! Keys and X.509 certificates: what the daemon and client generate on first
//! start, the small CA of PKI mode, and the checks made on peers.
//!
//! Only EC keys (P-256, P-384) with ECDSA/SHA-2 signatures are made or
//! accepted. Encoding is rcgen's, parsing x509-parser's, chain
//! validation rustls-webpki's: no ASN.1 is written by hand here.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What can go wrong; split by who is at fault, as callers report it.
#[derive(thiserror::Error)]
pub enum Error {
    /// The input is not what it should be (the user can fix it).
    #[error("{0}")]
    Invalid(String),
    /// The certificate fails a chain or validity check.
    #[error("certificate rejected: {0}")]
    Rejected(String),
    #[error("unknown curve {0:?}: use p256 or p384")]
    UnknownCurve(String),
    #[error("no private key in PEM input")]
    NoKey(#[source] rustls_pki_types::pem::Error),
    #[error("unreadable private key")]
    BadKey(#[source] rcgen::Error),
    #[error("malformed PEM")]
    BadPem(#[source] rustls_pki_types::pem::Error),
    #[error("not a valid X.509 certificate")]
    NotX509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("unusable CA certificate")]
    BadCa(#[source] webpki::Error),
    /// Encoding or signing failed inside the crypto library.
    #[error("cannot build the certificate")]
    Build(#[from] rcgen::Error),
}

crate::debug_as_display!(Error);

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// The elliptic curve of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Curve {
    /// NIST P-256 with ECDSA/SHA-256 (the default, as Multipass and LXD).
    #[default]
    P256,
    /// NIST P-384 with ECDSA/SHA-384 (what `lxc` 5.0 generates).
    P384,
}

impl std::str::FromStr for Curve {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "prime256v1" | "secp256r1" => Ok(Curve::P256),
            "p384" | "p-384" | "secp384r1" => Ok(Curve::P384),
            _ => Err(Error::UnknownCurve(s.to_string())),
        }
    }
}

/// A private EC key (PKCS#8 inside).
pub struct Key(KeyPair);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, even in debug output.
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A fresh key from the system's random source.
    pub fn generate(curve: Curve) -> Result<Key, Error> {
        let alg = match curve {
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        Ok(Key(KeyPair::generate_for(alg)?))
    }

    /// Reads a PEM private key, refusing anything but a PKCS#8 P-256/P-384 key.
    pub fn from_pem(pem: &[u8]) -> Result<Key, Error> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(Error::NoKey)?;
        let pkcs8 = match der {
            PrivateKeyDer::Pkcs8(k) => k,
            PrivateKeyDer::Pkcs1(_) => {
                return Err(invalid(
                    "RSA keys are not supported: use an EC key (P-256 or P-384)",
                ))
            }
            PrivateKeyDer::Sec1(_) => {
                return Err(invalid(
                    "SEC1 EC key: convert it with `openssl pkcs8 -topk8 -nocrypt`",
                ))
            }
            _ => return Err(invalid("unsupported private key format")),
        };
        let pair = KeyPair::try_from(pkcs8.secret_pkcs8_der()).map_err(Error::BadKey)?;
        let alg = pair.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ECDSA_P384_SHA384 {
            // ring reads only EC, Ed25519 and RSA PKCS#8 keys.
            let kind = if alg == &rcgen::PKCS_ED25519 {
                "Ed25519"
            } else {
                "RSA"
            };
            return Err(invalid(format!(
                "{kind} keys are not supported: use an EC key (P-256 or P-384)"
            )));
        }
        Ok(Key(pair))
    }

    /// The key as PKCS#8 PEM; callers write it with mode 0600.
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The key as PKCS#8 DER, for TLS configuration.
    pub fn to_der(&self) -> Vec<u8> {
        self.0.serialize_der()
    }
}

/// What a certificate is for; decides its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Self-signed, usable both as TLS server and client (daemon and client
    /// identities, as LXD's and Multipass's).
    SelfSigned,
    /// A CA for PKI mode: may sign certificates and CRLs, nothing else.
    Ca,
    /// A CA-signed TLS server leaf.
    Server,
    /// A CA-signed TLS client leaf.
    Client,
}

/// The subject and lifetime of a certificate to make.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// Common name of the subject.
    pub cn: String,
    /// Subject alternative names: IP addresses where they parse as one, DNS names otherwise.
    pub sans: Vec<String>,
    /// Validity in days from now.
    pub days: u32,
    /// What the certificate is for.
    pub profile: Profile,
}

impl CertSpec {
    fn params(&self) -> Result<CertificateParams, Error> {
        if self.cn.is_empty() || self.cn.chars().any(char::is_control) {
            return Err(invalid("common name must be non-empty printable text"));
        }
        if self.days == 0 {
            return Err(invalid("validity must be at least one day"));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.cn.as_str());
        params.distinguished_name = dn;
        for san in &self.sans {
            params.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if !is_dns_name(san) => {
                    return Err(invalid(format!(
                        "invalid SAN {san:?}: not an IP address or a DNS name"
                    )))
                }
                Err(_) => SanType::DnsName(
                    san.as_str()
                        .try_into()
                        .map_err(|_| invalid(format!("invalid SAN {san:?}")))?,
                ),
            });
        }
        // A minute of slack so that a peer whose clock is slightly behind
        // does not see a certificate from the future.
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(60);
        params.not_after = now + Duration::from_secs(u64::from(self.days) * 86_400);
        params.serial_number = Some(random_serial()?);
        match self.profile {
            Profile::Ca => {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
            }
            Profile::SelfSigned | Profile::Server | Profile::Client => {
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = match self.profile {
                    Profile::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
                    Profile::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
                    _ => vec![
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                };
            }
        }
        params.use_authority_key_identifier_extension = self.profile != Profile::SelfSigned;
        Ok(params)
    }

    /// A certificate for `key` signed by `key` itself (`SelfSigned` or `Ca`).
    pub fn self_signed(&self, key: &Key) -> Result<Cert, Error> {
        if matches!(self.profile, Profile::Server | Profile::Client) {
            return Err(invalid("server and client leaves are issued by a CA"));
        }
        let cert = self.params()?.self_signed(&key.0)?;
        Ok(Cert {
            der: cert.der().to_vec(),
        })
    }

    /// A leaf for `key` signed by the CA (`ca`, `ca_key`).
    pub fn issue(&self, key: &Key, ca: &Cert, ca_key: &Key) -> Result<Cert, Error> {
        if !matches!(self.profile, Profile::Server | Profile::Client) {
            return Err(invalid("a CA issues only server or client leaves"));
        }
        let info = ca.info()?;
        if !info.is_ca {
            return Err(invalid("the issuing certificate is not a CA"));
        }
        if ca.public_key_der()? != ca_key.0.subject_public_key_info() {
            return Err(invalid("the CA key does not belong to the CA certificate"));
        }
        let der = CertificateDer::from(ca.der.as_slice());
        let issuer = Issuer::from_ca_cert_der(&der, &ca_key.0)?;
        let cert = self.params()?.signed_by(&key.0, &issuer)?;
        Ok(Cert {
            der: cert.der().to_vec(),
        })
    }
}

/// Letters, digits and hyphens in dot-separated labels (a leading `*.` allowed).
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| invalid("the system random source failed"))?;
    // A positive INTEGER whose first byte is non-zero keeps the encoding at
    // exactly 16 bytes (RFC 5280 allows up to 20).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// An X.509 certificate, kept as DER and known to parse.
#[derive(Clone, PartialEq, Eq)]
pub struct Cert {
    der: Vec<u8>,
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cert({})", self.fingerprint())
    }
}

/// What `show` prints about a certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertInfo {
    /// Subject distinguished name (`CN=…`).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Subject alternative names as `DNS:…` / `IP:…`.
    pub sans: Vec<String>,
    /// `ecdsa-p256`, `ecdsa-p384`, `rsa` or the algorithm OID.
    pub key_type: String,
    /// Whether basic constraints mark it as a CA.
    pub is_ca: bool,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

impl Cert {
    /// Reads every certificate from PEM text; at least one must be present.
    pub fn all_from_pem(pem: &[u8]) -> Result<Vec<Cert>, Error> {
        let mut certs = Vec::new();
        for item in CertificateDer::pem_slice_iter(pem) {
            let der = item.map_err(Error::BadPem)?;
            certs.push(Cert::from_der(der.as_ref())?);
        }
        if certs.is_empty() {
            return Err(invalid("no certificate found in PEM input"));
        }
        Ok(certs)
    }

    /// Reads the first certificate from PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Cert, Error> {
        Cert::all_from_pem(pem)?
            .into_iter()
            .next()
            .ok_or_else(|| invalid("no certificate found in PEM input"))
    }

    /// Takes DER bytes, checking that they parse as exactly one certificate.
    pub fn from_der(der: &[u8]) -> Result<Cert, Error> {
        match X509Certificate::from_der(der) {
            Ok(([], _)) => Ok(Cert { der: der.to_vec() }),
            Ok(_) => Err(invalid("trailing bytes after the certificate")),
            Err(e) => Err(Error::NotX509(e)),
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.der.clone()))
    }

    /// SHA-256 of the DER as 64 lowercase hex digits, as LXD and
    /// `openssl x509 -fingerprint -sha256` (without colons) show it.
    pub fn fingerprint(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.der).as_ref())
    }

    fn parsed(&self) -> Result<X509Certificate<'_>, Error> {
        X509Certificate::from_der(&self.der)
            .map(|(_, c)| c)
            .map_err(Error::NotX509)
    }

    /// Not-before and not-after, in seconds since the epoch.
    pub(crate) fn validity(&self) -> Result<(i64, i64), Error> {
        let c = self.parsed()?;
        let v = c.validity();
        Ok((v.not_before.timestamp(), v.not_after.timestamp()))
    }

    /// Whether `name` (a DNS name or an IP address) is one of this
    /// certificate's subject alternative names.
    pub fn valid_for_name(&self, name: &str) -> bool {
        let der = CertificateDer::from(self.der());
        let Ok(leaf) = webpki::EndEntityCert::try_from(&der) else {
            return false;
        };
        let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
            return false;
        };
        leaf.verify_is_valid_for_subject_name(&server_name).is_ok()
    }

    fn public_key_der(&self) -> Result<Vec<u8>, Error> {
        Ok(self.parsed()?.public_key().raw.to_vec())
    }

    /// SHA-256 of the SubjectPublicKeyInfo, lowercase hex: the same for
    /// every certificate of one key. An ECDSA signature (r, s) is as valid
    /// as (r, n−s), so anyone can turn a CA-signed certificate into another
    /// with a new fingerprint; its key is what stays.
    pub(crate) fn key_fingerprint(&self) -> Result<String, Error> {
        let spki = self.public_key_der()?;
        Ok(hex(
            ring::digest::digest(&ring::digest::SHA256, &spki).as_ref()
        ))
    }

    /// The fields `show` prints.
    pub fn info(&self) -> Result<CertInfo, Error> {
        let c = self.parsed()?;
        let spki = c.public_key();
        let alg = spki.algorithm.algorithm.to_id_string();
        let key_type = if alg == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some(OID_P256) => "ecdsa-p256".to_string(),
                Some(OID_P384) => "ecdsa-p384".to_string(),
                Some(other) => format!("ecdsa-{other}"),
                None => "ecdsa".to_string(),
            }
        } else if alg == OID_RSA {
            "rsa".to_string()
        } else {
            alg
        };
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = c.subject_alternative_name() {
            for name in &ext.value.general_names {
                sans.push(match name {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(b) => format!("IP:{}", ip_from_bytes(b)),
                    other => other.to_string(),
                });
            }
        }
        Ok(CertInfo {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            serial: hex(c.raw_serial()),
            not_before: rfc3339(c.validity().not_before.to_datetime()),
            not_after: rfc3339(c.validity().not_after.to_datetime()),
            sans,
            key_type,
            is_ca: c.is_ca(),
            fingerprint: self.fingerprint(),
        })
    }

    /// Checks that this certificate chains to one of `anchors` and is valid
    /// now, for TLS server or client use.
    pub fn verify(&self, anchors: &[Cert]) -> Result<(), Error> {
        self.verify_at(anchors, SystemTime::now())
    }

    /// [`Cert::verify`] at a given time (tests use it to look past expiry).
    pub fn verify_at(&self, anchors: &[Cert], at: SystemTime) -> Result<(), Error> {
        let ders: Vec<CertificateDer<'_>> = anchors
            .iter()
            .map(|a| CertificateDer::from(a.der()))
            .collect();
        let mut roots = Vec::new();
        for der in &ders {
            roots.push(webpki::anchor_from_trusted_cert(der).map_err(Error::BadCa)?);
        }
        let leaf_der = CertificateDer::from(self.der());
        let leaf = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| Error::Rejected(describe(&e)))?;
        let now = UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|_| invalid("system clock is before 1970"))?,
        );
        let algs = &[
            webpki::ring::ECDSA_P256_SHA256,
            webpki::ring::ECDSA_P256_SHA384,
            webpki::ring::ECDSA_P384_SHA256,
            webpki::ring::ECDSA_P384_SHA384,
        ];
        let try_usage = |usage| {
            leaf.verify_for_usage(algs, &roots, &[], now, usage, None, None)
                .map(|_| ())
        };
        // A leaf made for one purpose only is still a valid chain.
        match try_usage(webpki::KeyUsage::server_auth()) {
            Ok(()) => Ok(()),
            Err(webpki::Error::RequiredEkuNotFoundContext(_)) => {
                try_usage(webpki::KeyUsage::client_auth())
                    .map_err(|e| Error::Rejected(describe(&e)))
            }
            Err(e) => Err(Error::Rejected(describe(&e))),
        }
    }
}

impl AsRef<[u8]> for Cert {
    fn as_ref(&self) -> &[u8] {
        &self.der
    }
}

fn describe(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { .. } => "it has expired".into(),
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet".into(),
        webpki::Error::UnknownIssuer => "it was not issued by the given CA".into(),
        webpki::Error::InvalidSignatureForPublicKey => "its signature does not verify".into(),
        webpki::Error::UnsupportedSignatureAlgorithmContext(_)
        | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "its signature algorithm is not ECDSA with SHA-2".into()
        }
        webpki::Error::CaUsedAsEndEntity => "it is a CA, not a leaf".into(),
        webpki::Error::UnsupportedCertVersion => "it is not an X.509 v3 certificate".into(),
        other => format!("{other:?}"),
    }
}

fn ip_from_bytes(b: &[u8]) -> String {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).map(|a| IpAddr::from(a).to_string()),
        16 => <[u8; 16]>::try_from(b).map(|a| IpAddr::from(a).to_string()),
        _ => return hex(b),
    }
    .unwrap_or_else(|_| hex(b))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(profile: Profile) -> CertSpec {
        CertSpec {
            cn: "edge1".into(),
            sans: vec!["edge1.local".into(), "10.0.0.1".into()],
            days: 30,
            profile,
        }
    }

    fn ca_pair() -> Result<(Key, Cert), Error> {
        let key = Key::generate(Curve::P256)?;
        let cert = CertSpec {
            cn: "kvmbox CA".into(),
            sans: vec![],
            days: 365,
            profile: Profile::Ca,
        }
        .self_signed(&key)?;
        Ok((key, cert))
    }

    #[test]
    fn self_signed_round_trips_and_verifies_against_itself() -> Result<(), Error> {
        for curve in [Curve::P256, Curve::P384] {
            let key = Key::generate(curve)?;
            let cert = spec(Profile::SelfSigned).self_signed(&key)?;
            let back = Cert::from_pem(cert.to_pem().as_bytes())?;
            assert_eq!(back, cert);
            let info = cert.info()?;
            assert_eq!(info.subject, "CN=edge1");
            assert_eq!(info.sans, vec!["DNS:edge1.local", "IP:10.0.0.1"]);
            assert_eq!(
                info.key_type,
                if curve == Curve::P256 {
                    "ecdsa-p256"
                } else {
                    "ecdsa-p384"
                }
            );
            assert!(!info.is_ca);
            assert_eq!(info.fingerprint.len(), 64);
            cert.verify(std::slice::from_ref(&cert))?;
            let key_back = Key::from_pem(key.to_pem().as_bytes())?;
            assert_eq!(key_back.to_der(), key.to_der());
        }
        Ok(())
    }

    #[test]
    fn issued_leaf_verifies_only_against_its_ca_and_only_in_time() -> Result<(), Error> {
        let (ca_key, ca) = ca_pair()?;
        let (_, other_ca) = ca_pair()?;
        let key = Key::generate(Curve::P384)?;
        let leaf = spec(Profile::Server).issue(&key, &ca, &ca_key)?;
        assert_eq!(leaf.info()?.issuer, "CN=kvmbox CA");
        leaf.verify(std::slice::from_ref(&ca))?;
        let client = spec(Profile::Client).issue(&key, &ca, &ca_key)?;
        client.verify(std::slice::from_ref(&ca))?;

        assert!(matches!(leaf.verify(&[other_ca]), Err(Error::Rejected(_))));
        let later = SystemTime::now() + Duration::from_secs(31 * 86_400);
        assert!(
            matches!(leaf.verify_at(std::slice::from_ref(&ca), later), Err(Error::Rejected(m)) if m.contains("expired"))
        );
        let earlier = SystemTime::now() - Duration::from_secs(3600);
        assert!(
            matches!(leaf.verify_at(std::slice::from_ref(&ca), earlier), Err(Error::Rejected(m)) if m.contains("not valid yet"))
        );
        Ok(())
    }

    #[test]
    fn issuing_refuses_a_mismatched_key_or_a_non_ca() -> Result<(), Error> {
        let (_, ca) = ca_pair()?;
        let wrong = Key::generate(Curve::P256)?;
        let key = Key::generate(Curve::P256)?;
        assert!(spec(Profile::Server).issue(&key, &ca, &wrong).is_err());
        let leaf = spec(Profile::SelfSigned).self_signed(&key)?;
        assert!(spec(Profile::Client).issue(&wrong, &leaf, &key).is_err());
        assert!(spec(Profile::Server).self_signed(&key).is_err());
        Ok(())
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Cert::from_pem(b"").is_err());
        assert!(Cert::from_pem(b"not pem at all").is_err());
        assert!(
            Cert::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(Cert::from_der(&[0x30, 0x82, 0x01]).is_err());
        assert!(Key::from_pem(
            b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(Key::from_pem(b"garbage").is_err());
        let bad = CertSpec {
            cn: "a\nb".into(),
            sans: vec![],
            days: 1,
            profile: Profile::SelfSigned,
        };
        assert!(Key::generate(Curve::P256)
            .map(|k| bad.self_signed(&k).is_err())
            .unwrap_or(false));
        let zero = CertSpec {
            days: 0,
            ..spec(Profile::SelfSigned)
        };
        assert!(Key::generate(Curve::P256)
            .map(|k| zero.self_signed(&k).is_err())
            .unwrap_or(false));
        let bad_san = CertSpec {
            sans: vec!["bad name\u{7f}".into()],
            ..spec(Profile::SelfSigned)
        };
        assert!(Key::generate(Curve::P256)
            .map(|k| bad_san.self_signed(&k).is_err())
            .unwrap_or(false));
    }

    #[test]
    fn truncated_der_of_a_real_certificate_is_refused() -> Result<(), Error> {
        let key = Key::generate(Curve::P256)?;
        let cert = spec(Profile::SelfSigned).self_signed(&key)?;
        for cut in [1, 10, cert.der().len() / 2, cert.der().len() - 1] {
            assert!(
                Cert::from_der(cert.der().get(..cut).unwrap_or_default()).is_err(),
                "cut at {cut}"
            );
        }
        Ok(())
    }
}
