#![allow(clippy::unwrap_used, reason = "a failed test should panic")]

use super::*;
use crate::pki::{CertSpec, Curve, Profile};

/// `openssl req -x509 -newkey rsa:1024 -days 36500`: a valid self-signed
/// certificate, except that its key is RSA.
const RSA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIB+jCCAWOgAwIBAgIUdt3nwLvOI0+5NckcsOa6/P7Ju6wwDQYJKoZIhvcNAQEL
BQAwDjEMMAoGA1UEAwwDcnNhMCAXDTI2MTEyNDE2MzQ1OVoYDzIxMjYxMDMxMTYz
NDU5WjAOMQwwCgYDVQQDDANyc2EwgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGB
AMICgaZXm9y6/LU/49T/kNFgUcIYK575pTx4CfN9qJ/n0Vn7lYjK/WGGli5FNHHm
JnDzBpFqmKQiY57M7cocBX3xAOUtL6MXfaYuLAmzDuGBP+YdJzAIaBV7fB+teRTZ
yygZDAVA+wzQWYoNThgHSrLGXG/G5LNKAuggbC7e4VDDAgMBAAGjUzBRMB0GA1Ud
DgQWBBSg1qDbUlaM0UPW2Db0rGaDqjV0/TAfBgNVHSMEGDAWgBSg1qDbUlaM0UPW
2Db0rGaDqjV0/TAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4GBAFUW
k5T+kTHIgjYw/8RwXAEJnV7y+vevYKOc10Nd2Onn5401CCxOWxWSaUmV+s0IicTU
89xc7CmDNiLR5HQkKuyPe6wgH+wAZFwo2Hrlv8xB+yW8vXGv+hXxL5z3jD+cKaXw
5CGzG7PubMX+/cRuM9dqMnPVFOy9Z0qmNBKTRnDl
-----END CERTIFICATE-----";

fn self_signed(curve: Curve, days: u32) -> (Cert, Key) {
    let key = Key::generate(curve).unwrap();
    let spec = CertSpec {
        cn: "t".into(),
        sans: vec![],
        days,
        profile: Profile::SelfSigned,
    };
    (spec.self_signed(&key).unwrap(), key)
}

/// A P-256 client certificate issued by a fresh CA whose key is on `ca_curve`.
fn ca_issued_client(ca_curve: Curve) -> Cert {
    ca_and_client(ca_curve).1
}

/// A fresh CA and a P-256 client certificate it issued.
fn ca_and_client(ca_curve: Curve) -> (Cert, Cert) {
    let ca_key = Key::generate(ca_curve).unwrap();
    let ca = CertSpec {
        cn: "ca".into(),
        sans: vec![],
        days: 1,
        profile: Profile::Ca,
    }
    .self_signed(&ca_key)
    .unwrap();
    let leaf_key = Key::generate(Curve::P256).unwrap();
    let leaf = CertSpec {
        cn: "leaf".into(),
        sans: vec![],
        days: 1,
        profile: Profile::Client,
    }
    .issue(&leaf_key, &ca, &ca_key)
    .unwrap();
    (ca, leaf)
}

fn verify(cert: &Cert) -> Result<ClientCertVerified, rustls::Error> {
    let v = AnyEcClient;
    v.verify_client_cert(&CertificateDer::from(cert.der()), &[], UnixTime::now())
}

#[test]
fn any_self_signed_ec_client_is_accepted_at_the_tls_layer() {
    for curve in [Curve::P256, Curve::P384] {
        assert!(verify(&self_signed(curve, 1).0).is_ok());
    }
}

#[test]
fn rsa_and_ca_issued_client_certificates_are_refused() {
    let rsa = Cert::from_pem(RSA_CERT.as_bytes()).unwrap();
    let err = format!("{:?}", verify(&rsa).unwrap_err());
    assert!(err.contains("NotEc"), "{err}");
    // Not self-signed: issued by some CA the daemon knows nothing about.
    let leaf = ca_issued_client(Curve::P256);
    assert!(verify(&leaf).is_err());
}

#[test]
fn only_ecdsa_schemes_are_offered() {
    let schemes = ECDSA.supported_schemes();
    assert!(!schemes.is_empty());
    assert!(schemes.iter().all(|s| matches!(
        s,
        SignatureScheme::ECDSA_NISTP256_SHA256 | SignatureScheme::ECDSA_NISTP384_SHA384
    )));
}

#[test]
fn configurations_build() {
    let (cert, key) = self_signed(Curve::P256, 1);
    assert!(server_config(&cert, &key).is_ok());
    assert!(client_config(&cert, &key, ServerTrust::LocalSocket).is_ok());
}

#[test]
fn the_remote_policy_has_only_ecdhe_ecdsa_aead_suites_and_ecdhe_groups() {
    let p = policy_provider();
    let names: Vec<String> = p
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    for n in &names {
        assert!(
            n.starts_with("TLS13_") || n.starts_with("TLS_ECDHE_ECDSA_WITH_"),
            "{n}"
        );
        assert!(n.contains("GCM") || n.contains("CHACHA20"), "{n}");
    }
    assert!(p.kx_groups.iter().all(|g| matches!(
        g.name(),
        rustls::NamedGroup::X25519 | rustls::NamedGroup::secp256r1 | rustls::NamedGroup::secp384r1
    )));
}

#[test]
fn remote_clients_may_come_without_a_certificate_but_not_with_a_bad_one() {
    let v = OptionalEcClient;
    assert!(!v.client_auth_mandatory());
    let check =
        |c: &Cert| v.verify_client_cert(&CertificateDer::from(c.der()), &[], UnixTime::now());
    let rsa = Cert::from_pem(RSA_CERT.as_bytes()).unwrap();
    assert!(check(&rsa).is_err());
    // Any issuer will do over TCP: the trust store decides by fingerprint.
    let leaf = ca_issued_client(Curve::P384);
    assert!(check(&leaf).is_ok());
    // Outside its validity period: refused.
    let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 3 * 86400,
    ));
    let (c, _) = self_signed(Curve::P256, 1);
    let err = v
        .verify_client_cert(&CertificateDer::from(c.der()), &[], later)
        .unwrap_err();
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
}

#[test]
fn remote_configurations_build_with_and_without_pki() {
    let (cert, key) = self_signed(Curve::P256, 1);
    assert!(remote_server_config(&cert, &key, None).is_ok());
    let dir = tempfile::tempdir().unwrap();
    assert!(Pki::load(dir.path()).unwrap().is_none(), "no server.ca");
    std::fs::write(dir.path().join("server.ca"), cert.to_pem()).unwrap();
    let pki = Pki::load(dir.path()).unwrap().unwrap();
    assert!(remote_server_config(&cert, &key, Some(&pki)).is_ok());
    let seen = Arc::new(std::sync::Mutex::new(None));
    assert!(remote_client_config(&cert, &key, ServerTrust::Probe, seen).is_ok());
}

#[test]
fn a_crl_that_turns_unusable_fails_closed_for_the_ca_path_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf) = ca_and_client(Curve::P256);
    let (_, stranger) = ca_and_client(Curve::P256);
    std::fs::write(dir.path().join("server.ca"), ca.to_pem()).unwrap();
    let pki = Pki::load(dir.path()).unwrap().unwrap();
    let handshake = PkiClients(pki.clone());
    let der = |c: &Cert| CertificateDer::from(c.der().to_vec());
    let shake = |c: &Cert| handshake.verify_client_cert(&der(c), &[], UnixTime::now());
    assert!(pki.check(leaf.der(), &[]).is_ok());
    assert!(matches!(
        pki.check(stranger.der(), &[]),
        Err(Error::NotVerified(_))
    ));
    // A CRL written while the daemon runs is read at the next check, and
    // garbage in it refuses the CA path, while the CRLs last read (none
    // here) stay in force for the handshake and for listed certificates.
    let crl = dir.path().join("server.crl");
    std::fs::write(&crl, "not a crl").unwrap();
    assert!(matches!(
        pki.check(leaf.der(), &[]),
        Err(Error::CrlUnusable(_))
    ));
    assert!(shake(&leaf).is_ok());
    assert!(pki.check_listed(leaf.der(), &[]).is_ok());
    assert!(shake(&stranger).is_err());
    // Removed after it was seen: still unusable, not "no CRL".
    std::fs::remove_file(&crl).unwrap();
    let err = pki.check(leaf.der(), &[]).unwrap_err();
    assert!(err.to_string().contains("removed"), "{err}");
    // A CRL present at start that is not one stops the start.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    assert!(Pki::load(dir.path()).is_err());
}
