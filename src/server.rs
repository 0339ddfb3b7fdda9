//! `kvmboxd`'s core: state directory, server identity, the Unix socket with
//! Multipass's local trust model, and the connection
//! loop: TLS inside the socket, then HTTP/1.1 with keep-alive, every read
//! bounded in size and time.

pub(crate) mod admission;
pub(crate) mod filter;
pub(crate) mod handlers;
pub(crate) mod listen;
pub(crate) mod operations;
pub(crate) mod preseed;
pub(crate) mod routes;
pub(crate) mod secret;
pub(crate) mod settings;
pub(crate) mod tokens;
pub(crate) mod trust;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use serde_json::{json, Value};
use smol::io::AsyncWriteExt;
use smol::lock::Semaphore;
use smol::net::unix::{UnixListener, UnixStream};
use smol::stream::StreamExt;
use smol::Executor;

use crate::http::{self, Limits, ReadError};
use crate::log::log;
use crate::pki::{Cert, CertSpec, Curve, Key, Profile};
use crate::server::admission::{handshake, take_slot, PerPeer};
use crate::server::secret::RateLimiter;
use crate::server::settings::Settings;
use crate::server::tokens::Tokens;
use crate::server::trust::{Role, Standing, TrustStore};
use crate::store::{write_atomic, Overwrite};
use crate::sys::{self, PeerCred};
use routes::{Identity, Peer};

/// What a certificate the CA signed but the trust store does not list is
/// told while `core.pki_default_role` gives such certificates no role.
const PKI_NO_DEFAULT_ROLE: &str = "not authorized: this certificate is signed by the \
     server's CA but is not in the trust store, and core.pki_default_role is unset (none), so it \
     has no role; ask an administrator to trust it (`kvmbox config trust add`) or to set \
     core.pki_default_role";

/// Descriptors kept for what is not a connection: VMs' QMP sockets and
/// logs, taps, the helper's pipes, state files.
const FD_RESERVE: usize = 256;

/// Groups tried, in order, when no admin group is given (Multipass's order).
const DEFAULT_GROUPS: &[&str] = &["sudo", "admin", "wheel"];
/// At most this much of a `--preseed` document is read.
const PRESEED_LIMIT: u64 = 16 * 1024 * 1024;

/// How the daemon is started.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub state_dir: PathBuf,
    /// Default `STATE/unix.socket`.
    pub socket: Option<PathBuf>,
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create state directory {0}")]
    StateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot create the server certificate")]
    Identity(#[source] crate::pki::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not usable")]
    BadIdentity(PathBuf, #[source] crate::pki::Error),
    #[error(transparent)]
    Trust(#[from] crate::server::trust::Error),
    #[error(transparent)]
    Settings(#[from] crate::server::settings::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error("admin group {0:?} does not exist in /etc/group")]
    NoGroup(String),
    #[error("none of the groups {0} exists: name one with --group")]
    NoDefaultGroup(String),
    #[error("another kvmboxd is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot listen on {0}")]
    Listen(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Tokens(#[from] crate::server::tokens::Error),
    #[error("cannot listen on {0}")]
    ListenTcp(std::net::SocketAddr, #[source] std::io::Error),
    #[error("cannot load the instances: {0}")]
    Instances(String),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("preseed {0}")]
    Preseed(PathBuf, #[source] crate::preseed::Error),
}

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    cert: Cert,
    socket: PathBuf,
    admin_gid: u32,
    trust: Mutex<TrustStore>,
    settings: Mutex<Settings>,
    tokens: Mutex<Tokens>,
    limiter: Mutex<RateLimiter<String>>,
    pub(crate) ops: crate::server::operations::Operations,
    /// PKI mode (LXD's): client certificates were checked against
    /// `server.ca` and `server.crl` during the handshake; one that passed and
    /// that the trust store does not list gets `core.pki_default_role`.
    pki: Option<Arc<crate::tls::Pki>>,
    /// Where the TLS listener is bound now, if it is.
    https: Mutex<Option<std::net::SocketAddr>>,
    /// Wakes the listener supervisor after a configuration change.
    config_changed: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    pub(crate) instances: Arc<crate::vmm::instances::Manager>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is written to disk first and applied in
    // memory in one assignment, so a poisoned lock still holds a consistent
    // value.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            ops: crate::server::operations::Operations::default(),
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
    pub(crate) async fn config_changed(&self) {
        let _ = self.config_changed.1.recv().await;
    }

    /// A TCP client's identity, looked up for every request like
    /// [`Shared::identity`]: the trust store by fingerprint, else, in PKI
    /// mode, by public key (a re-signed copy of a listed or removed
    /// certificate is that certificate), else `core.pki_default_role`. In
    /// PKI mode every certificate passes the CA check again now
    /// (`intermediates` are the rest of the chain it sent), so a revocation
    /// reaches connections already open.
    pub(crate) fn remote_identity(
        &self,
        addr: std::net::SocketAddr,
        cert: &Option<Cert>,
        intermediates: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Identity {
        let mut id = Identity {
            peer: Peer::Remote(addr),
            cert: cert.clone(),
            role: None,
            projects: Vec::new(),
            refused: None,
        };
        let Some(cert) = cert else {
            return id;
        };
        let listed = match self.trust().lookup(cert, self.pki.is_some()) {
            Standing::Listed(e) => Some((e.role, e.projects.clone())),
            // Removed from the trust store: no role, whatever the CA says.
            Standing::Denied => return id,
            Standing::Unknown => None,
        };
        let Some(pki) = &self.pki else {
            if let Some((role, projects)) = listed {
                (id.role, id.projects) = (Some(role), projects);
            }
            return id;
        };
        let checked = match listed {
            // A listed certificate rests on the last CRLs that could be
            // read, whatever state server.crl is in now.
            Some(grant) => pki.check_listed(cert.der(), intermediates).map(|()| grant),
            None => {
                let Some(role) = self.settings().pki_default_role() else {
                    id.refused = Some(PKI_NO_DEFAULT_ROLE.to_string());
                    return id;
                };
                pki.check(cert.der(), intermediates)
                    .map(|()| (role, Vec::new()))
            }
        };
        match checked {
            Ok((role, projects)) => (id.role, id.projects) = (Some(role), projects),
            Err(e) => id.refused = Some(format!("not authorized: {}", crate::error_chain(&e))),
        }
        id
    }

    /// `GET /1.0`: everything for a trusted caller, the bare minimum for others.
    pub(crate) fn server_info(&self, id: &Identity) -> Value {
        let mut info = json!({
            // Only what is implemented: `?filter=` on lists (lxc list needs it).
            // Only what is served: `api_filtering` (lxc list needs it) and
            // `container_backup`, whose list lxc info reads (kvmbox makes no
            // backups, so it is always empty; making one answers 501).
            "api_extensions": ["api_filtering", "container_backup"],
            "api_status": "stable",
            "api_version": "1.0",
            "auth": if id.role.is_some() { "trusted" } else { "untrusted" },
            "auth_methods": ["tls"],
            "public": false,
        });
        if let (Some(role), Some(obj)) = (id.role, info.as_object_mut()) {
            obj.insert("auth_role".into(), json!(role));
            obj.insert("config".into(), json!(self.settings().public()));
            obj.insert(
                "environment".into(),
                json!({
                    "addresses": self.https_address().map(|a| a.to_string()).into_iter().collect::<Vec<_>>(),
                    "architectures": [std::env::consts::ARCH],
                    "certificate": self.cert.to_pem(),
                    "certificate_fingerprint": self.cert.fingerprint(),
                    "driver": "qemu",
                    "kernel": "Linux",
                    "kernel_architecture": std::env::consts::ARCH,
                    "kernel_version": sys::kernel_release(),
                    "server": "kvmbox",
                    "server_name": sys::hostname(),
                    "server_pid": std::process::id(),
                    "server_version": env!("CARGO_PKG_VERSION"),
                }),
            );
            if let (Some(env), Value::Object(more)) = (
                obj.get_mut("environment").and_then(Value::as_object_mut),
                self.instances.environment(),
            ) {
                env.extend(more);
            }
        }
        info
    }

    /// Who this connection's peer is, looked up again for every request so
    /// that a certificate removed from the trust store stops working at once.
    fn identity(&self, cred: &PeerCred, cert: &Option<Cert>) -> Identity {
        let (role, projects) = if cred.uid == 0 {
            // Local root can do anything to the host anyway (LXD's rule).
            (Some(Role::Admin), Vec::new())
        } else {
            cert.as_ref()
                .and_then(|c| {
                    self.trust()
                        .get(&c.fingerprint())
                        .map(|e| (Some(e.role), e.projects.clone()))
                })
                .unwrap_or((None, Vec::new()))
        };
        Identity {
            peer: Peer::Local(cred.clone()),
            cert: cert.clone(),
            role,
            projects,
            refused: None,
        }
    }

    /// Multipass's rule: until the socket has been opened, the first client from the
    /// admin group has its certificate trusted, and the socket becomes 0666.
    fn first_client(&self, cred: &PeerCred, cert: &Cert) {
        if cred.uid == 0 || !in_group(cred, self.admin_gid) {
            return;
        }
        let mut settings = self.settings();
        if settings.local_socket_open() {
            return;
        }
        let name = format!("local-uid-{}", cred.uid);
        if let Err(e) = self.trust().add(cert, &name, Role::Admin) {
            log!(
                Error,
                "cannot trust the first client: {}",
                crate::error_chain(&e)
            );
            return;
        }
        if let Err(e) = settings.set_local_socket_open() {
            log!(Error, "{}", crate::error_chain(&e));
        }
        drop(settings);
        match std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666)) {
            Ok(()) => log!(
                Info,
                "first client (uid {}) trusted as {}; {} is now open to all users",
                cred.uid,
                cert.fingerprint(),
                self.socket.display()
            ),
            Err(e) => log!(
                Error,
                "cannot open {} to all users: {e}",
                self.socket.display()
            ),
        }
    }
}

/// Whether the peer is in group `gid`: the kernel's SO_PEERGROUPS snapshot
/// when there is one, else /proc/<pid>/status (whose uid must still be the
/// peer's, or the pid was reused and nothing is believed).
fn in_group(cred: &PeerCred, gid: u32) -> bool {
    if cred.gid == gid {
        return true;
    }
    match &cred.groups {
        Some(groups) => groups.contains(&gid),
        None => match sys::proc_groups(cred.pid) {
            Ok((uid, groups)) => uid == cred.uid && groups.contains(&gid),
            Err(_) => false,
        },
    }
}

/// Loads the server key and certificate, generating both if either is
/// missing (LXD: remove them to have them regenerated).
fn server_identity(dir: &Path) -> Result<(Cert, Key), Error> {
    let (kp, cp) = (dir.join("server.key"), dir.join("server.crt"));
    if kp.exists() && cp.exists() {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::Read(p.to_path_buf(), e));
        let key = Key::from_pem(&read(&kp)?).map_err(|e| Error::BadIdentity(kp.clone(), e))?;
        let cert = Cert::from_pem(&read(&cp)?).map_err(|e| Error::BadIdentity(cp.clone(), e))?;
        return Ok((cert, key));
    }
    let key = Key::generate(Curve::P256).map_err(Error::Identity)?;
    let host = sys::hostname();
    let mut sans = vec!["kvmbox".to_string()];
    if host != "kvmbox" && crate::pki::is_dns_name(&host) {
        sans.insert(0, host.clone());
    }
    let cert = CertSpec {
        cn: format!("root@{host}"),
        sans,
        days: 3650,
        profile: Profile::SelfSigned,
    }
    .self_signed(&key)
    .map_err(Error::Identity)?;
    write_atomic(&kp, key.to_pem().as_bytes(), 0o600, Overwrite::Replace)
        .map_err(|e| Error::Write(kp.clone(), e))?;
    write_atomic(&cp, cert.to_pem().as_bytes(), 0o644, Overwrite::Replace)
        .and_then(|()| std::fs::set_permissions(&cp, std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| Error::Write(cp.clone(), e))?;
    log!(Info, "generated server certificate {}", cert.fingerprint());
    Ok((cert, key))
}

/// The admin group's gid and name.
fn admin_group(name: Option<&str>) -> Result<(u32, String), Error> {
    let etc = Path::new("/etc/group");
    let lookup = |n: &str| sys::group_gid(etc, n).ok().flatten();
    if let Some(n) = name {
        return lookup(n)
            .map(|g| (g, n.to_string()))
            .ok_or_else(|| Error::NoGroup(n.into()));
    }
    if sys::euid() != 0 {
        // Unprivileged (development, tests): the socket can only carry our
        // own primary group.
        let gid = sys::egid();
        return Ok((gid, format!("gid {gid}")));
    }
    DEFAULT_GROUPS
        .iter()
        .find_map(|n| lookup(n).map(|g| (g, n.to_string())))
        .ok_or_else(|| Error::NoDefaultGroup(DEFAULT_GROUPS.join(", ")))
}

fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::InUse(path.to_path_buf()));
            }
            // A socket nobody listens on: left by a crash.
            let _ = std::fs::remove_file(path);
        }
    }
    UnixListener::bind(path).map_err(|e| Error::Listen(path.to_path_buf(), e))
}

/// Sets the socket's owner and mode (root:GROUP 0660, or 0666 once open). Unprivileged, chown to root
/// is impossible and skipped with a log line.
fn secure_socket(path: &Path, gid: u32, group: &str, open: bool) -> Result<(), Error> {
    let mode = if open { 0o666 } else { 0o660 };
    if sys::euid() == 0 {
        std::os::unix::fs::chown(path, Some(0), Some(gid))
            .map_err(|e| Error::Listen(path.to_path_buf(), e))?;
    } else {
        log!(
            Info,
            "running unprivileged: socket owner left as uid {} (chown to root skipped)",
            sys::euid()
        );
        if gid != sys::egid() {
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(|e| Error::Listen(path.to_path_buf(), e))?;
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::Listen(path.to_path_buf(), e))?;
    log!(
        Info,
        "listening on {} (group {group}, mode {mode:o})",
        path.display()
    );
    Ok(())
}

/// Creates the state directory 0711 (others reach the socket inside, but
/// cannot list it), or checks an existing one: never chmod a directory we
/// did not create (`--state-dir /tmp` must not change /tmp).
fn state_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let err = |e| Error::StateDir(dir.to_path_buf(), e);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Parents it has to make (`/var/lib` on a bare root) are made 0755
        // as a package would, not under the daemon's umask: a VM's QEMU,
        // under its own uid, must pass through them to its run files.
        let missing: Vec<&Path> = parent.ancestors().take_while(|a| !a.exists()).collect();
        std::fs::create_dir_all(parent).map_err(err)?;
        for made in missing {
            std::fs::set_permissions(made, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {
            // The umask took bits away; set exactly what was meant.
            return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(err);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let meta = std::fs::metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::other("not a directory")));
    }
    if meta.uid() != sys::euid() || meta.mode() & 0o022 != 0 {
        return Err(err(std::io::Error::other(
            "it must belong to this user and not be writable by others",
        )));
    }
    if meta.mode() & 0o001 == 0 {
        log!(
            Warn,
            "{} is not searchable by others: only its owner can reach the socket",
            dir.display()
        );
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(opts: DaemonOptions) -> Result<(), Error> {
    // Nothing the daemon creates is readable by others unless it says so.
    sys::umask(0o077);
    // Each listener may hold max_connections, and VMs, the helper and the
    // state files need descriptors besides: running out would leave even
    // root's connections waiting in the backlog.
    let want = opts
        .max_connections
        .saturating_mul(2)
        .saturating_add(FD_RESERVE);
    match sys::raise_fd_limit() {
        Ok(n) if n < u64::try_from(want).unwrap_or(u64::MAX) => log!(
            Warn,
            "only {n} open files allowed: {} connections per listener need about {want} \
             (raise LimitNOFILE, or lower --max-connections)",
            opts.max_connections
        ),
        Ok(_) => {}
        Err(e) => log!(Warn, "cannot raise the open-file limit: {e}"),
    }
    // A bad document stops the daemon before it has touched anything.
    let preseed = match &opts.preseed {
        Some(p) => {
            // `-`: standard input, as for every file operand.
            let text = crate::operand::read_to_string(p, PRESEED_LIMIT)
                .map_err(|e| Error::Read(p.clone(), e))?;
            let plan =
                crate::preseed::Preseed::parse(&text).map_err(|e| Error::Preseed(p.clone(), e))?;
            Some((p, plan))
        }
        None => None,
    };
    let dir = &opts.state_dir;
    state_dir(dir)?;
    let (cert, key) = server_identity(dir)?;
    let tls = TlsAcceptor::from(crate::tls::server_config(&cert, &key)?);
    let (gid, group) = admin_group(opts.group.as_deref())?;
    let trust = TrustStore::open(&dir.join("trust.json"))?;
    let settings = Settings::open(&dir.join("daemon.json"))?;
    let tokens = Tokens::open(&dir.join("tokens.json"))?;
    let pki = crate::tls::Pki::load(dir)?;
    if let Some(p) = &pki {
        let (cas, crls) = p.summary();
        log!(
            Info,
            "PKI mode: clients are checked against {} ({cas} CA certificate(s), {crls} CRL(s))",
            dir.join("server.ca").display(),
        );
    }
    let remote_tls =
        TlsAcceptor::from(crate::tls::remote_server_config(&cert, &key, pki.as_ref())?);
    let socket = opts
        .socket
        .clone()
        .unwrap_or_else(|| dir.join("unix.socket"));
    let open = settings.local_socket_open();
    let shared = Arc::new(Shared::new(
        cert,
        socket.clone(),
        gid,
        trust,
        settings,
        tokens,
        pki,
    ));
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
            .map_err(Error::Signals)?;
    // `--https` is bound before anything else is: a bad address stops the
    // daemon before it has touched the socket.
    let pinned = match opts.https {
        Some(addr) => Some(
            smol::block_on(smol::net::TcpListener::bind(addr))
                .map_err(|e| Error::ListenTcp(addr, e))?,
        ),
        None => None,
    };
    let listener = bind(&socket)?;
    if let Err(e) = secure_socket(&socket, gid, &group, open) {
        let _ = std::fs::remove_file(&socket);
        return Err(e);
    }
    let ex: Arc<Executor<'static>> = Arc::new(Executor::new());
    shared.instances.configure(&shared.settings());
    let setup = crate::vmm::instances::Setup {
        state: dir.clone(),
        ex: ex.clone(),
        accel_mode: shared
            .settings()
            .get(crate::server::settings::INSTANCES_ACCEL)
            .and_then(|m| m.parse().ok())
            .unwrap_or(crate::vmm::accel::AccelMode::Auto),
        aa_parser: opts.aa_parser.clone(),
    };
    // Whichever way this function returns, the accelerator probe `open`
    // starts is ended and reaped (VMs are left running, to be re-adopted).
    let _probe = shared.instances.probe_guard();
    // Running VMs are taken over before the first request is served.
    smol::block_on(ex.run(shared.instances.open(setup)))
        .map_err(|e| Error::Instances(crate::error_chain(&e)))?;
    // The socket is bound but nothing is accepted yet, and the TLS listener
    // starts after: no client sees a half-applied document.
    if let Some((path, plan)) = preseed {
        if let Err(e) = crate::server::preseed::apply_locally(&plan, &shared, &ex) {
            let _ = std::fs::remove_file(&socket);
            return Err(Error::Preseed(path.clone(), e));
        }
    }
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let per_uid = Arc::new(Mutex::new(HashMap::new()));
    ex.spawn(crate::server::listen::supervise(
        shared.clone(),
        ex.clone(),
        remote_tls,
        opts.clone(),
        pinned,
    ))
    .detach();
    let serve = {
        let ex = ex.clone();
        async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        log!(Warn, "accept failed: {e}");
                        // EMFILE and friends: give the system a moment.
                        smol::Timer::after(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let cred = match sys::peer_cred(&stream) {
                    Ok(c) => c,
                    Err(e) => {
                        log!(Warn, "cannot identify a peer: {e}");
                        continue;
                    }
                };
                // Once the socket is 0666 any local user can connect: one
                // uid (root aside) may hold only a quarter of the slots, so
                // it cannot lock everyone else out.
                let Some(per_uid) = claim_uid(&per_uid, cred.uid, opts.max_connections) else {
                    log!(
                        Warn,
                        "connection from uid {} refused: too many open",
                        cred.uid
                    );
                    continue;
                };
                // Root is not counted and never refused: it must always be
                // able to reach the daemon, to see and mend what the others
                // are doing.
                let slot = if cred.uid == 0 {
                    None
                } else {
                    match take_slot(&slots, opts.max_connections, "the Unix socket") {
                        Some(s) => Some(s),
                        None => continue,
                    }
                };
                let (shared, tls, opts) = (shared.clone(), tls.clone(), opts.clone());
                ex.spawn(async move {
                    connection(&shared, stream, cred, tls, &opts).await;
                    drop((slot, per_uid));
                })
                .detach();
            }
        }
    };
    let stop = async {
        let name = match signals.next().await {
            Some(Ok(async_signal::Signal::Int)) => "SIGINT",
            _ => "SIGTERM",
        };
        log!(Info, "received {name}, shutting down");
    };
    smol::block_on(ex.run(smol::future::or(serve, stop)));
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// [`PerPeer::claim`] for a local uid, counted as the user it stands for
/// (see [`sys::subuid_owner`]): root is exempt.
fn claim_uid(
    counts: &Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
    max: usize,
) -> Option<PerPeer<u32>> {
    PerPeer::claim(counts, sys::subuid_owner(uid), max, uid == 0)
}

pub(crate) async fn timed<T>(t: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(f.await) }, async {
        smol::Timer::after(t).await;
        None
    })
    .await
}

/// Serves one connection until it closes, misbehaves or idles out.
async fn connection(
    shared: &Arc<Shared>,
    stream: UnixStream,
    cred: PeerCred,
    tls: TlsAcceptor,
    opts: &DaemonOptions,
) {
    let who = format!("uid {}", cred.uid);
    let Some((mut tls_stream, cert)) = handshake(&tls, stream, opts, &who).await else {
        return;
    };
    if let Some(c) = &cert {
        shared.first_client(&cred, c);
    }
    serve(shared, &mut tls_stream, opts, &who, || {
        shared.identity(&cred, &cert)
    })
    .await;
}

/// Answers requests on an established TLS stream until it closes,
/// misbehaves or idles out. `identity` is called for every request, so a
/// change to the trust store applies to connections already open.
pub(crate) async fn serve<S>(
    shared: &Arc<Shared>,
    tls_stream: &mut S,
    opts: &DaemonOptions,
    who: &str,
    identity: impl Fn() -> Identity,
) where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let opened = std::time::Instant::now();
    loop {
        let (resp, keep_alive) = match timed(
            opts.timeout,
            http::read_request(tls_stream, &mut buf, opts.limits),
        )
        .await
        {
            // An idle keep-alive connection is closed quietly; a request
            // that started and did not finish gets its 408.
            None if buf.is_empty() => return,
            None => (routes::error(408, "request timeout"), false),
            Some(Err(ReadError::Closed | ReadError::Io(_))) => return,
            Some(Err(ReadError::Refused(code, msg))) => {
                log!(Debug, "refused a request from {who}: {msg}");
                (routes::error(code, msg), false)
            }
            Some(Ok(req)) => {
                let id = identity();
                let resp = routes::handle(shared, &id, &req).await;
                log!(
                    Debug,
                    "{who} {} {} -> {}",
                    req.method,
                    req.path,
                    resp.status
                );
                // A client nobody trusts gets what a client needs to become
                // trusted (a few requests in a row), not a slot to hold:
                // once the connection is older than a request may take,
                // it is closed after each answer.
                let held = id.role.is_none() && opened.elapsed() >= opts.timeout;
                (resp, req.keep_alive && !held)
            }
        };
        let bytes = resp.to_bytes(keep_alive);
        let written = timed(opts.timeout, async {
            tls_stream.write_all(&bytes).await?;
            tls_stream.flush().await
        })
        .await;
        if resp.status == 101 && matches!(written, Some(Ok(()))) {
            // An accepted event websocket: held, and pinged when silent,
            // until the peer closes it, stops answering or is no longer
            // trusted.
            crate::websocket::hold(tls_stream, opts.timeout, who, || identity().role.is_some())
                .await;
            let _ = timed(Duration::from_secs(1), tls_stream.close()).await;
            return;
        }
        if !matches!(written, Some(Ok(()))) || !keep_alive {
            let _ = timed(Duration::from_secs(1), tls_stream.close()).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_gets_a_quarter_of_the_slots_root_is_exempt() {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let held: Vec<PerPeer<u32>> = (0..4)
            .filter_map(|_| claim_uid(&counts, 1000, 16))
            .collect();
        assert_eq!(held.len(), 4);
        assert!(claim_uid(&counts, 1000, 16).is_none());
        assert!(claim_uid(&counts, 1001, 16).is_some());
        let root: Vec<PerPeer<u32>> = (0..10).filter_map(|_| claim_uid(&counts, 0, 16)).collect();
        assert_eq!(root.len(), 10);
        drop(held);
        assert!(claim_uid(&counts, 1000, 16).is_some());
        assert!(claim_uid(&counts, 7, 1).is_some(), "at least one each");
    }

    #[test]
    fn group_membership_from_the_kernel_or_proc() {
        let cred = |gid, groups| PeerCred {
            pid: std::process::id(),
            uid: sys::euid(),
            gid,
            groups,
        };
        assert!(in_group(&cred(27, None), 27));
        assert!(in_group(&cred(100, Some(vec![4, 27])), 27));
        assert!(!in_group(&cred(100, Some(vec![4])), 27));
        // No kernel list: /proc of this very process is read.
        assert!(in_group(&cred(100, None), sys::egid()));
        let mut stale = cred(100, None);
        stale.uid = stale.uid.wrapping_add(1);
        assert!(
            !in_group(&stale, sys::egid()),
            "a reused pid is not believed"
        );
    }
}
