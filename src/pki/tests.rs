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
        Cert::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
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
