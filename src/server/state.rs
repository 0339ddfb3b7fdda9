//! What the daemon is started with, and the state every connection
//! shares. Each part of the state has its own lock, taken briefly and never
//! two at once except settings before trust (the first client's rule), so
//! that no request waits on another's disk write for long.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::http::Limits;
use crate::pki::Cert;
use crate::rt::lock;
use crate::server::secret::RateLimiter;
use crate::server::settings::{Settings, AA_PROFILE_DIR};
use crate::server::tokens::Tokens;
use crate::server::trust::TrustStore;

/// Where the LXD-compatible socket is, under the state directory: as
/// LXD's `$LXD_DIR/unix.socket`, so that `LXD_DIR=STATE/lxd lxc …` works.
pub(crate) const LXD_SOCKET: &str = "lxd/unix.socket";

/// How the daemon is started.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub state_dir: PathBuf,
    /// Default `STATE/unix.socket`.
    pub socket: Option<PathBuf>,
    /// The LXD-compatible socket (plain HTTP, callers known by their peer
    /// credentials), `STATE/lxd/unix.socket` unless set; `None`: none.
    pub lxd_socket: Option<PathBuf>,
    /// Admin group; default the first of sudo/admin/wheel that exists.
    pub group: Option<String>,
    /// A request (or TLS handshake) must arrive within this time, and an idle
    /// keep-alive connection is closed after it.
    pub timeout: Duration,
    /// A new connection must complete its TLS handshake within this time
    /// (and within `timeout`): a peer that connects and stays silent holds
    /// a slot no longer than this.
    pub handshake_timeout: Duration,
    /// Connections served at once on each listener (the Unix socket and
    /// TCP each have this many); more are closed at accept. Root on the
    /// Unix socket is never refused.
    pub max_connections: usize,
    pub limits: Limits,
    /// The TLS listener's address; overrides `core.https_address`.
    pub https: Option<std::net::SocketAddr>,
    /// A stand-in for apparmor_parser given to kvmbox-aa-helper (tests on
    /// kernels without AppArmor compile profiles with it for real).
    pub aa_parser: Option<String>,
    /// A preseed document applied at start, before connections are served.
    pub preseed: Option<PathBuf>,
}

impl DaemonOptions {
    pub fn new(state_dir: PathBuf) -> DaemonOptions {
        DaemonOptions {
            lxd_socket: Some(state_dir.join(LXD_SOCKET)),
            state_dir,
            socket: None,
            group: None,
            timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 128,
            limits: Limits::default(),
            https: None,
            aa_parser: None,
            preseed: None,
        }
    }
}

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) cert: Cert,
    pub(super) socket: PathBuf,
    pub(super) admin_gid: u32,
    trust: Mutex<TrustStore>,
    settings: Mutex<Settings>,
    tokens: Mutex<Tokens>,
    limiter: Mutex<RateLimiter<String>>,
    pub(crate) ops: crate::server::operations::Operations,
    pub(crate) events: crate::server::events::Events,
    /// PKI mode (LXD's): client certificates were checked against
    /// `server.ca` and `server.crl` during the handshake; one that passed and
    /// that the trust store does not list gets `core.pki_default_role`.
    pub(super) pki: Option<Arc<crate::tls::Pki>>,
    /// Where the TLS listener is bound now, if it is.
    https: Mutex<Option<std::net::SocketAddr>>,
    /// Wakes the listener supervisor after a configuration change.
    config_changed: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    pub(crate) instances: Arc<crate::vmm::instances::Manager>,
}

impl Shared {
    pub(crate) fn new(
        cert: Cert,
        socket: PathBuf,
        admin_gid: u32,
        trust: TrustStore,
        settings: Settings,
        tokens: Tokens,
        pki: Option<Arc<crate::tls::Pki>>,
    ) -> Shared {
        let events = crate::server::events::Events::default();
        Shared {
            cert,
            socket,
            admin_gid,
            trust: Mutex::new(trust),
            settings: Mutex::new(settings),
            tokens: Mutex::new(tokens),
            pki,
            https: Mutex::new(None),
            config_changed: smol::channel::bounded(1),
            // Three free mistakes, then 1 s, 2 s, 4 s… up to 15 minutes.
            limiter: Mutex::new(RateLimiter::new(
                3,
                Duration::from_secs(1),
                Duration::from_secs(900),
            )),
            ops: crate::server::operations::Operations::new(events.clone()),
            events,
            instances: Arc::default(),
        }
    }

    pub(crate) fn trust(&self) -> MutexGuard<'_, TrustStore> {
        lock(&self.trust)
    }
    pub(crate) fn settings(&self) -> MutexGuard<'_, Settings> {
        lock(&self.settings)
    }
    pub(crate) fn limiter(&self) -> MutexGuard<'_, RateLimiter<String>> {
        lock(&self.limiter)
    }
    pub(crate) fn tokens(&self) -> MutexGuard<'_, Tokens> {
        lock(&self.tokens)
    }
    /// The server certificate's fingerprint.
    pub(crate) fn fingerprint(&self) -> String {
        self.cert.fingerprint()
    }
    /// The TLS listener's address, if it is listening.
    pub(crate) fn https_address(&self) -> Option<std::net::SocketAddr> {
        *lock(&self.https)
    }
    pub(crate) fn set_https_address(&self, addr: Option<std::net::SocketAddr>) {
        *lock(&self.https) = addr;
    }
    /// Tells the listener supervisor to look at the configuration again.
    pub(crate) fn notify_config(&self) {
        let _ = self.config_changed.0.try_send(());
    }
    /// Hands the instances what they take from the server configuration.
    pub(crate) fn configure_instances(&self) {
        let dir = self.settings().get(AA_PROFILE_DIR).map(PathBuf::from);
        self.instances.set_profile_dir(dir);
    }
    pub(crate) async fn config_changed(&self) {
        let _ = self.config_changed.1.recv().await;
    }
}
