//! TLS configuration for both ends, on rustls with the ring provider.
//!
//! Trust is not decided at the TLS layer. The daemon asks every client for a
//! certificate and accepts any self-signed EC one whose handshake signature
//! verifies (so the client holds the key); whether that certificate is
//! trusted, and with which role, is a lookup of its fingerprint in the trust
//! store afterwards (Multipass and LXD do the same). That lets an untrusted
//! client still reach `GET /1.0` and the authenticate call. RSA keys and
//! non-ECDSA signature schemes are refused during the handshake (SPEC L2).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::pki::{Cert, Key};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS configuration failed")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ECDSA with SHA-2 only: what our keys are, and all we accept from a peer
/// (the same table rustls builds for its ring provider, minus RSA and EdDSA).
static ECDSA: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ECDSA_P256_SHA384,
        webpki::ring::ECDSA_P384_SHA256,
        webpki::ring::ECDSA_P384_SHA384,
    ],
    mapping: &[
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[
                webpki::ring::ECDSA_P384_SHA384,
                webpki::ring::ECDSA_P256_SHA384,
            ],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[
                webpki::ring::ECDSA_P256_SHA256,
                webpki::ring::ECDSA_P384_SHA256,
            ],
        ),
    ],
};

/// Whether the certificate's public key is on P-256 or P-384.
fn is_ec_cert(der: &[u8]) -> bool {
    Cert::from_der(der)
        .and_then(|c| c.info())
        .is_ok_and(|i| i.key_type == "ecdsa-p256" || i.key_type == "ecdsa-p384")
}

fn validity_ok(der: &[u8]) -> Result<(), rustls::Error> {
    let c = Cert::from_der(der)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    // Self-signed: the certificate is its own anchor. This checks the
    // signature, the validity period and that only ECDSA/SHA-2 is used.
    c.verify(std::slice::from_ref(&c)).map_err(|e| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(e),
        )))
    })
}

/// Accepts any valid self-signed EC client certificate; see the module doc.
#[derive(Debug)]
struct AnyEcClient {
    algs: &'static WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyEcClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !is_ec_cert(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotEc))),
            ));
        }
        validity_ok(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The local listener speaks TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The daemon's TLS configuration: TLS 1.3, its own key and certificate, a
/// client certificate required.
pub(crate) fn server_config(cert: &Cert, key: &Key) -> Result<Arc<rustls::ServerConfig>, Error> {
    let verifier = Arc::new(AnyEcClient { algs: &ECDSA });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)?;
    Ok(Arc::new(config))
}

/// How the client decides that it reached the right daemon.
#[derive(Clone, Debug)]
pub(crate) enum ServerTrust {
    /// Over the Unix socket the file system already authenticates the daemon
    /// (only it can create the socket in its state directory), exactly as for
    /// LXD's plain Unix socket, so any EC server certificate is accepted.
    LocalSocket,
    /// The server certificate must have this SHA-256 fingerprint (remotes).
    #[allow(dead_code, reason = "used by remotes over TCP")]
    Pinned(String),
}

#[derive(Debug)]
struct ServerVerifier {
    trust: ServerTrust,
    algs: &'static WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !is_ec_cert(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotEc))),
            ));
        }
        match &self.trust {
            ServerTrust::LocalSocket => Ok(ServerCertVerified::assertion()),
            ServerTrust::Pinned(fp) => {
                let got = crate::pki::hex(
                    ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref()).as_ref(),
                );
                if &got == fp {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The client's TLS configuration: its certificate, and `trust` for the server.
pub(crate) fn client_config(
    cert: &Cert,
    key: &Key,
    trust: ServerTrust,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let verifier = Arc::new(ServerVerifier {
        trust,
        algs: &ECDSA,
    });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_der()));
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![CertificateDer::from(cert.der().to_vec())], key)?;
    Ok(Arc::new(config))
}

/// Why a certificate was refused before any signature was looked at.
#[derive(Debug)]
struct NotEc;

impl std::fmt::Display for NotEc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("only EC (P-256, P-384) certificates are accepted")
    }
}

impl std::error::Error for NotEc {}

#[cfg(test)]
mod tests;
