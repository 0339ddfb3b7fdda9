//! TLS configuration for both ends, on rustls with the ring provider.
//!
//! Trust is not decided at the TLS layer. The daemon asks every client for a
//! certificate and accepts any self-signed EC one whose handshake signature
//! verifies (so the client holds the key); whether that certificate is
//! trusted, and with which role, is a lookup of its fingerprint in the trust
//! store afterwards (Multipass and LXD do the same). That lets an untrusted
//! client still reach `GET /1.0` and the authenticate call. RSA keys and
//! non-ECDSA signature schemes are refused during the handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::log::log;
use crate::pki::{Cert, Key};

#[derive(thiserror::Error)]
pub enum Error {
    #[error("TLS configuration failed")]
    Config(#[from] rustls::Error),
    #[error("{0} is not a usable CA certificate")]
    BadCa(std::path::PathBuf),
    #[error("{0} is not a usable certificate revocation list")]
    BadCrl(std::path::PathBuf),
    #[error("cannot read {0}")]
    Read(std::path::PathBuf, #[source] std::io::Error),
    #[error("server.ca holds a certificate rustls refuses as a CA")]
    CaRefused(#[source] rustls::Error),
    #[error("cannot build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("{0} was removed after it was in force")]
    CrlRemoved(std::path::PathBuf),
    /// Why is the host's business: the daemon's log says it, once.
    #[error(
        "the server's certificate revocation list (server.crl) is unusable, so a certificate \
         signed by its CA is accepted only if the trust store lists it (the daemon's log says \
         why)"
    )]
    CrlUnusable,
    #[error("the certificate no longer passes the server's CA check")]
    NotVerified(#[source] rustls::Error),
}

crate::debug_as_display!(Error);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What both listeners settle for every connection, whoever the client is.
/// The server picks the cipher suite from its own list, the policy's, which
/// puts the SHA-256 suites first: clients ask for AES-256-GCM-SHA384 first, and every handshake
/// hashes its transcript and derives its keys with the suite's hash,
/// which for SHA-256 runs on the CPU's own instructions where it has them
/// (x86 SHA-NI, ARMv8 SHA2) and for SHA-384 never does. Every offered
/// suite is still one the policy allows. No TLS 1.3 session tickets: each
/// kvmbox or lxc command is a new process with no session cache, so they
/// would be computed, stored and sent for nothing.
fn server_first(config: &mut rustls::ServerConfig) {
    config.ignore_client_order = true;
    config.send_tls13_tickets = 0;
}

/// The TLS policy as a provider: every TLS 1.3 suite, and of TLS 1.2 only
/// ECDHE-ECDSA with AES-GCM or ChaCha20-Poly1305 (no RSA key exchange, no
/// CBC; ring offers no CBC suite, the filter says so anyway); key exchange by
/// ECDHE groups only; ECDSA with SHA-2 for every signature a peer makes.
pub(crate) fn policy_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as S;
    let base = rustls::crypto::ring::default_provider();
    // The suites with SHA-256 first: see [`server_first`].
    let allowed = [
        S::TLS13_AES_128_GCM_SHA256,
        S::TLS13_CHACHA20_POLY1305_SHA256,
        S::TLS13_AES_256_GCM_SHA384,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ];
    let ecdhe = [
        rustls::NamedGroup::X25519,
        rustls::NamedGroup::secp256r1,
        rustls::NamedGroup::secp384r1,
    ];
    Arc::new(rustls::crypto::CryptoProvider {
        // In the order of `allowed`, which the server's choice follows.
        cipher_suites: allowed
            .iter()
            .filter_map(|a| base.cipher_suites.iter().find(|s| s.suite() == *a))
            .copied()
            .collect(),
        kx_groups: base
            .kx_groups
            .iter()
            .filter(|g| ecdhe.contains(&g.name()))
            .copied()
            .collect(),
        signature_verification_algorithms: ECDSA,
        ..base
    })
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

/// The handshake-signature methods of a verifier, the same in all of them:
/// a peer signs with [`ECDSA`] or not at all. `tls13` for a verifier that
/// answers TLS 1.2 itself; `tls12 tls13` where the listener speaks both.
macro_rules! ecdsa_signatures {
    (tls13) => {
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &ECDSA)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            ECDSA.supported_schemes()
        }
    };
    (tls12 tls13) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &ECDSA)
        }
        ecdsa_signatures!(tls13);
    };
}

/// Refuses a certificate whose public key is not on P-256 or P-384.
fn require_ec(der: &[u8]) -> Result<(), rustls::Error> {
    let ec = Cert::from_der(der)
        .and_then(|c| c.info())
        .is_ok_and(|i| i.key_type == "ecdsa-p256" || i.key_type == "ecdsa-p384");
    if ec {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotEc))),
        ))
    }
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
struct AnyEcClient;

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
        require_ec(end_entity)?;
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
    ecdsa_signatures!(tls13);
}

/// The daemon's TLS configuration: TLS 1.3, its own key and certificate, a
/// client certificate required.
pub(crate) fn server_config(cert: &Cert, key: &Key) -> Result<Arc<rustls::ServerConfig>, Error> {
    let verifier = Arc::new(AnyEcClient);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(policy_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)?;
    server_first(&mut config);
    Ok(Arc::new(config))
}

/// PKI mode (LXD's): clients must present a certificate issued by this
/// CA, not revoked by the CRL, if they present one at all.
///
/// `server.crl` is read again whenever its identity (device, inode, size,
/// times) changes, so a revocation applies without a restart. Revocation is
/// checked for every certificate of the chain, so the file must hold the
/// CRL of each CA in it (a status that cannot be told is a refusal), and an
/// expired CRL refuses what its CA signed. Once a CRL has been in force, a
/// file that turns unreadable, invalid or absent does not quietly re-admit
/// what it revoked: the CRL is then "unusable", the last CRLs that were
/// read stay in force (for the handshake and for certificates the trust
/// store lists) and [`Pki::check`] refuses everything else.
#[derive(Debug)]
pub(crate) struct Pki {
    ca: Vec<Cert>,
    roots: Arc<rustls::RootCertStore>,
    /// The CA subjects, sent as hints in the handshake.
    hints: Vec<DistinguishedName>,
    crl_path: std::path::PathBuf,
    current: std::sync::Mutex<Arc<CrlState>>,
}

/// What `server.crl` said when last read.
#[derive(Debug)]
struct CrlState {
    stamp: Stamp,
    /// Checks the chain, and revocation by the last CRLs that were read.
    verifier: Arc<dyn ClientCertVerifier>,
    /// `None` while the file is in force (or there is none); else why not,
    /// in the words logged, so that a change of reason is logged once.
    unusable: Option<String>,
    /// How many CRLs are in force.
    count: usize,
    /// A CRL has been in force at some point: its absence is then a fault.
    seen: bool,
}

/// A file's identity: a change in any field means it must be read again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stamp {
    Absent,
    File([i64; 7]),
    /// `stat` failed: read again next time.
    Unknown,
}

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Stamp::File([
            i64::try_from(m.dev()).unwrap_or(-1),
            i64::try_from(m.ino()).unwrap_or(-1),
            i64::try_from(m.size()).unwrap_or(-1),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ]),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stamp::Absent,
        Err(_) => Stamp::Unknown,
    }
}

/// The DER of each CRL in a PEM file; at least one.
fn read_crls(path: &std::path::Path) -> Result<Vec<Vec<u8>>, Error> {
    let data = std::fs::read(path).map_err(|e| Error::Read(path.to_path_buf(), e))?;
    let blocks = pem::parse_many(&data).map_err(|_| Error::BadCrl(path.to_path_buf()))?;
    let crls: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "X509 CRL")
        .map(pem::Pem::into_contents)
        .collect();
    if crls.is_empty() {
        return Err(Error::BadCrl(path.to_path_buf()));
    }
    Ok(crls)
}

/// Checks the chain to `roots`, and revocation by `crls`.
fn pki_verifier(
    roots: &Arc<rustls::RootCertStore>,
    crls: &[Vec<u8>],
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let crls = crls
        .iter()
        .map(|d| rustls::pki_types::CertificateRevocationListDer::from(d.clone()));
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), policy_provider())
        .with_crls(crls)
        .enforce_revocation_expiration()
        .allow_unauthenticated()
        .build()
        .map_err(Error::Verifier)
}

impl Pki {
    /// Reads `server.ca` and the optional `server.crl` (PEM) from `dir`;
    /// `None` when there is no `server.ca`. A CRL that is there but not
    /// usable is an error here: the daemon does not start on it.
    pub(crate) fn load(dir: &std::path::Path) -> Result<Option<Arc<Pki>>, Error> {
        let (ca_path, crl_path) = (dir.join("server.ca"), dir.join("server.crl"));
        let ca_pem = match std::fs::read(&ca_path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Read(ca_path, e)),
        };
        let ca = Cert::all_from_pem(&ca_pem).map_err(|_| Error::BadCa(ca_path.clone()))?;
        if ca.is_empty() {
            return Err(Error::BadCa(ca_path));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in &ca {
            roots
                .add(CertificateDer::from(c.der().to_vec()))
                .map_err(Error::CaRefused)?;
        }
        let roots = Arc::new(roots);
        // Stamped before it is read: a change in between is read next time.
        let stamp = stamp(&crl_path);
        let crls = match stamp {
            Stamp::Absent => Vec::new(),
            _ => read_crls(&crl_path)?,
        };
        let state = CrlState {
            stamp,
            verifier: pki_verifier(&roots, &crls)?,
            unusable: None,
            count: crls.len(),
            seen: !crls.is_empty(),
        };
        Ok(Some(Arc::new(Pki {
            hints: roots.subjects(),
            ca,
            roots,
            crl_path,
            current: std::sync::Mutex::new(Arc::new(state)),
        })))
    }

    /// How many CA certificates and CRLs are in force, for the log.
    pub(crate) fn summary(&self) -> (usize, usize) {
        (self.ca.len(), self.refresh().count)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<CrlState>> {
        crate::rt::lock(&self.current)
    }

    /// The CRL state, read again first if `server.crl` changed.
    fn refresh(&self) -> Arc<CrlState> {
        let now = stamp(&self.crl_path);
        let mut current = self.lock();
        if current.stamp == now && now != Stamp::Unknown {
            return current.clone();
        }
        let seen = current.seen;
        let loaded = match &now {
            Stamp::Absent if !seen => Ok(Vec::new()),
            Stamp::Absent => Err(Error::CrlRemoved(self.crl_path.clone())),
            _ => read_crls(&self.crl_path),
        };
        let built =
            loaded.and_then(|crls| pki_verifier(&self.roots, &crls).map(|v| (v, crls.len())));
        let next = match built {
            Ok((verifier, count)) => {
                log!(
                    Info,
                    "{} loaded: {count} certificate revocation list(s) in force",
                    self.crl_path.display()
                );
                CrlState {
                    stamp: now,
                    verifier,
                    unusable: None,
                    count,
                    seen: seen || count > 0,
                }
            }
            Err(why) => {
                // Only a change is logged, not every handshake after it.
                let text = crate::error_chain(&why);
                if current.unusable.as_ref() != Some(&text) {
                    log!(
                        Error,
                        "{} is unusable ({text}): the {} revocation list(s) last read stay in \
                         force, and certificates signed by the CA are refused unless the trust \
                         store lists them, until it is fixed",
                        self.crl_path.display(),
                        current.count
                    );
                }
                CrlState {
                    stamp: now,
                    verifier: current.verifier.clone(),
                    unusable: Some(text),
                    count: current.count,
                    seen: true,
                }
            }
        };
        *current = Arc::new(next);
        current.clone()
    }

    /// Checks `end_entity` (with the `intermediates` it sent) again now:
    /// the chain, validity and the CRL as it is at this moment. What lets a
    /// certificate the trust store does not list in on the CA's word alone,
    /// so an unusable CRL refuses it.
    pub(crate) fn check(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'static>],
    ) -> Result<(), Error> {
        let state = self.refresh();
        if state.unusable.is_some() {
            return Err(Error::CrlUnusable);
        }
        Self::verify(&state, end_entity, intermediates)
    }

    /// [`Pki::check`] for a certificate the trust store lists: against the
    /// last CRLs that could be read, whatever state the file is in now.
    pub(crate) fn check_listed(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'static>],
    ) -> Result<(), Error> {
        Self::verify(&self.refresh(), end_entity, intermediates)
    }

    fn verify(
        state: &CrlState,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'static>],
    ) -> Result<(), Error> {
        state
            .verifier
            .verify_client_cert(
                &CertificateDer::from(end_entity),
                intermediates,
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(Error::NotVerified)
    }
}

/// The handshake's view of [`Pki`]: the current CRL state's verifier.
#[derive(Debug)]
struct PkiClients(Arc<Pki>);

impl ClientCertVerifier for PkiClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.hints
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .refresh()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }
    ecdsa_signatures!(tls12 tls13);
}

/// Accepts, if the client sends one, an EC certificate within its validity
/// period whose handshake signature verifies. The fingerprint decides trust
/// afterwards, so a certificate issued by anyone may be trusted (LXD's
/// `lxc config trust add` takes any client certificate).
#[derive(Debug)]
struct OptionalEcClient;

/// How far ahead of the daemon's clock a client certificate's start of
/// validity may be.
const CLOCK_SKEW_SECS: i64 = 300;

impl ClientCertVerifier for OptionalEcClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bad = |e: rustls::CertificateError| rustls::Error::InvalidCertificate(e);
        require_ec(end_entity)?;
        let cert =
            Cert::from_der(end_entity).map_err(|_| bad(rustls::CertificateError::BadEncoding))?;
        let (from, to) = cert
            .validity()
            .map_err(|_| bad(rustls::CertificateError::BadEncoding))?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        // lxc makes its certificate valid from the second it makes it: a
        // server whose clock is a little behind (an appliance that starts
        // from its RTC's whole seconds) must not refuse it as not yet
        // valid.
        if now.saturating_add(CLOCK_SKEW_SECS) < from {
            return Err(bad(rustls::CertificateError::NotValidYet));
        }
        if now > to {
            return Err(bad(rustls::CertificateError::Expired));
        }
        Ok(ClientCertVerified::assertion())
    }
    ecdsa_signatures!(tls12 tls13);
}

/// The TCP listener's configuration: TLS 1.3 and 1.2 under
/// [`policy_provider`], a client certificate asked for but optional (an
/// untrusted client may still read `GET /1.0` and add itself), checked
/// against `pki` when PKI mode is on.
pub(crate) fn remote_server_config(
    cert: &Cert,
    key: &Key,
    pki: Option<&Arc<Pki>>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = policy_provider();
    let verifier: Arc<dyn ClientCertVerifier> = match pki {
        None => Arc::new(OptionalEcClient),
        Some(pki) => Arc::new(PkiClients(pki.clone())),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)?;
    server_first(&mut config);
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
    Pinned(String),
    /// Any EC certificate: the caller inspects it before sending anything.
    Probe,
    /// Issued by one of these CAs for this name (PKI mode).
    Ca(Vec<Cert>, String),
}

#[derive(Debug)]
struct ServerVerifier {
    trust: ServerTrust,
    /// The certificate the server presented, for error messages.
    seen: Option<Arc<std::sync::Mutex<Option<Vec<u8>>>>>,
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
        require_ec(end_entity)?;
        if let Some(seen) = &self.seen {
            if let Ok(mut g) = seen.lock() {
                *g = Some(end_entity.as_ref().to_vec());
            }
        }
        match &self.trust {
            ServerTrust::LocalSocket | ServerTrust::Probe => Ok(ServerCertVerified::assertion()),
            ServerTrust::Ca(ca, name) => {
                let cert = Cert::from_der(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
                })?;
                if cert.verify(ca).is_ok() && cert.valid_for_name(name) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }
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
    ecdsa_signatures!(tls12 tls13);
}

/// The client's TLS configuration: its certificate, and `trust` for the server.
pub(crate) fn client_config(
    cert: &Cert,
    key: &Key,
    trust: ServerTrust,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let verifier = Arc::new(ServerVerifier { trust, seen: None });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_der()));
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![CertificateDer::from(cert.der().to_vec())], key)?;
    Ok(Arc::new(config))
}

/// The client's configuration for a remote over TCP: the same policy as
/// the server's listener, its certificate, `trust` for the server, and the
/// presented certificate recorded in `seen`.
pub(crate) fn remote_client_config(
    cert: &Cert,
    key: &Key,
    trust: ServerTrust,
    seen: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let verifier = Arc::new(ServerVerifier {
        trust,
        seen: Some(seen),
    });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_der()));
    let config = rustls::ClientConfig::builder_with_provider(policy_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
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
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
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
            rustls::NamedGroup::X25519
                | rustls::NamedGroup::secp256r1
                | rustls::NamedGroup::secp384r1
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
        // Made a little after the daemon's clock (lxc's certificates start
        // the second they are made): accepted within the skew, not beyond.
        let from = c.validity().unwrap().0;
        let at = |secs: i64| {
            let t = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                u64::try_from(secs).unwrap(),
            ));
            v.verify_client_cert(&CertificateDer::from(c.der()), &[], t)
        };
        assert!(at(from - 2).is_ok());
        assert!(at(from - CLOCK_SKEW_SECS).is_ok());
        let err = at(from - CLOCK_SKEW_SECS - 1).unwrap_err();
        assert!(format!("{err:?}").contains("NotValidYet"), "{err:?}");
    }

    /// A whole handshake in memory; the suite the server settled on and
    /// how many bytes it sent after the client's Finished (tickets).
    fn settle(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> (rustls::CipherSuite, usize) {
        let name = ServerName::try_from("kvmbox").unwrap();
        let mut c = rustls::ClientConnection::new(client, name).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        let mut after = 0;
        for _ in 0..8 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let shaken = !s.is_handshaking();
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            if shaken {
                after += wire.len();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        (s.negotiated_cipher_suite().unwrap().suite(), after)
    }

    #[test]
    fn the_server_picks_a_sha256_suite_and_sends_no_tickets() {
        let (cert, key) = self_signed(Curve::P256, 1);
        let (ccert, ckey) = self_signed(Curve::P256, 1);
        // The client asks for AES-256-GCM-SHA384 first, as rustls and
        // OpenSSL do.
        let client = client_config(&ccert, &ckey, ServerTrust::LocalSocket).unwrap();
        assert_eq!(
            client
                .crypto_provider()
                .cipher_suites
                .first()
                .unwrap()
                .suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        for server in [
            server_config(&cert, &key).unwrap(),
            remote_server_config(&cert, &key, None).unwrap(),
        ] {
            let (suite, after) = settle(server, client.clone());
            assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            assert_eq!(after, 0, "the server sent tickets");
        }
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
            Err(Error::CrlUnusable)
        ));
        assert!(shake(&leaf).is_ok());
        assert!(pki.check_listed(leaf.der(), &[]).is_ok());
        assert!(shake(&stranger).is_err());
        // Removed after it was seen: still unusable, not "no CRL".
        std::fs::remove_file(&crl).unwrap();
        assert!(matches!(
            pki.check(leaf.der(), &[]),
            Err(Error::CrlUnusable)
        ));
        let why = pki.refresh().unusable.clone().unwrap();
        assert!(why.contains("server.crl was removed"), "{why}");
        // A CRL present at start that is not one stops the start.
        std::fs::write(
            &crl,
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        assert!(Pki::load(dir.path()).is_err());
    }
}
