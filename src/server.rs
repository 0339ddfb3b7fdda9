//! The daemon, `kvmboxd`: [`run`] prepares the state directory and the
//! server's identity, takes over running VMs, applies a preseed document,
//! and serves the API until SIGTERM. The map of this area, from the bottom:
//!
//! - `state`: the options and the state every connection shares;
//! - `trust`, `tokens`, `secret`, `settings`, `operations`: that state's
//!   parts, each kept in its own file under the state directory;
//! - `auth`: who a caller is and what it may do (with the route table's
//!   columns, the one place authorization is decided);
//! - `reply`: answers, in LXD's response envelope (whose type, like the
//!   request bodies and the API's paths, is in `wire`, shared with clients);
//! - `handlers`: one file per API area; `filter`: `?filter=` on lists;
//! - `routes`: the route table and the dispatch;
//! - `admission` and `listen`: connections, from accept to the last answer;
//! - `preseed`: a preseed document applied in-process at start.

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod events;
pub(crate) mod filter;
pub(crate) mod handlers;
pub(crate) mod listen;
pub(crate) mod operations;
pub(crate) mod preseed;
pub(crate) mod reply;
pub(crate) mod routes;
pub(crate) mod schedule;
pub(crate) mod secret;
pub(crate) mod settings;
pub(crate) mod state;
pub(crate) mod tokens;
pub(crate) mod trust;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_signal::Signal;
use futures_rustls::TlsAcceptor;
use smol::stream::StreamExt;
use smol::Executor;

use crate::log::log;
use crate::notify::Notifier;
use crate::pki::{Cert, CertSpec, Curve, Key, Profile};
use crate::server::settings::Settings;
use crate::server::tokens::Tokens;
use crate::server::trust::TrustStore;
use crate::store::{write_atomic, Overwrite};
use crate::sys;
pub use state::DaemonOptions;
use state::Shared;

/// Descriptors kept for what is not a connection: VMs' QMP sockets and
/// logs, taps, the helper's pipes, state files.
const FD_RESERVE: usize = 256;

/// Groups tried, in order, when no admin group is given (Multipass's order).
const DEFAULT_GROUPS: &[&str] = &["sudo", "admin", "wheel"];
/// At most this much of a `--preseed` document is read.
const PRESEED_LIMIT: u64 = 16 * 1024 * 1024;

#[derive(thiserror::Error)]
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
    /// Boxed: the VM layer's error is the crate's own business, not part
    /// of its public surface; its chain is kept all the same.
    #[error("cannot load the instances")]
    Instances(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("preseed {0}")]
    Preseed(PathBuf, #[source] crate::preseed::Error),
}

crate::debug_as_display!(Error);

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
    // The loopback names too, as LXD's server certificate has them: a
    // client on the host that checks the name it dialled against the
    // certificate it pinned (Python's ssl, so Ansible's LXD modules) can
    // then reach https://127.0.0.1.
    let mut sans: Vec<String> = ["kvmbox", "localhost", "127.0.0.1", "::1"]
        .map(String::from)
        .into();
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

/// The directory of the default LXD-compatible socket: 0711, like the
/// state directory, so that the admin group reaches the socket inside.
fn lxd_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |e| Error::StateDir(dir.to_path_buf(), e);
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(err)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Tells the service manager, if one asked (`NOTIFY_SOCKET`), how the
/// daemon is; a failure is logged, never fatal.
fn tell(notifier: Option<&Notifier>, state: &str) {
    if let Some(Err(e)) = notifier.map(|n| n.send(state)) {
        log!(Warn, "{e}");
    }
}

/// SIGHUP: the state files an administrator or a provisioning tool may
/// have written while the daemon ran, the trust store and the server
/// configuration, are read again and take effect as if set through the API
/// (`instances.accel`, the server certificate and `server.ca` stay as read
/// at start). Either file unreadable or invalid: both stay as they were.
fn reload(shared: &Shared, dir: &Path) -> Result<(), Error> {
    let trust = TrustStore::open(&dir.join("trust.json"))?;
    let settings = Settings::open(&dir.join("daemon.json"))?;
    *shared.trust() = trust;
    *shared.settings() = settings;
    shared.configure_instances();
    shared.notify_config();
    log!(
        Debug,
        "read {} and daemon.json again",
        dir.join("trust.json").display()
    );
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP re-reads its state
/// files ([`reload`]).
pub fn run(opts: DaemonOptions) -> Result<(), Error> {
    // First, before any thread starts: it edits the environment.
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        log!(Warn, "{e}");
        None
    });
    // smol runs file work, hashing and helpers on a pool of threads that
    // never end once started while fewer than its limit (500) exist: a
    // burst of requests would leave hundreds of idle threads and their
    // stacks behind for good. Past this many, the work queues instead.
    if std::env::var_os("BLOCKING_MAX_THREADS").is_none() {
        std::env::set_var("BLOCKING_MAX_THREADS", "16");
    }
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
    let mut signals = async_signal::Signals::new([Signal::Term, Signal::Int, Signal::Hup])
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
    let (listener, _socket_file) = listen::bind_secured(&socket, gid, &group, open)?;
    // LXD's own tools (`lxc` with LXD_DIR, Python clients, Ansible) talk
    // plain HTTP to a socket open to root and the admin group alone.
    let lxd = match &opts.lxd_socket {
        Some(path) => {
            if *path == dir.join(state::LXD_SOCKET) {
                lxd_dir(&dir.join("lxd"))?;
            }
            Some(listen::bind_secured(path, gid, &group, false)?)
        }
        None => None,
    };
    let ex: Arc<Executor<'static>> = Arc::new(Executor::new());
    shared.configure_instances();
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
        .map_err(|e| Error::Instances(Box::new(e)))?;
    // The socket is bound but nothing is accepted yet, and the TLS listener
    // starts after: no client sees a half-applied document.
    if let Some((path, plan)) = preseed {
        crate::server::preseed::apply_locally(&plan, &shared, &ex)
            .map_err(|e| Error::Preseed(path.clone(), e))?;
    }
    // A VM that stops by itself is announced as LXD does (`lxc monitor`).
    let (exits, events) = (shared.instances.exits(), shared.events.clone());
    ex.spawn(async move {
        while let Ok(name) = exits.recv().await {
            events.lifecycle(
                "instance-stopped",
                &name,
                serde_json::json!({"reason": "exited"}),
            );
        }
    })
    .detach();
    ex.spawn(schedule::run(shared.clone())).detach();
    ex.spawn(crate::server::listen::supervise(
        shared.clone(),
        ex.clone(),
        remote_tls,
        opts.clone(),
        pinned,
    ))
    .detach();
    let _lxd_file = lxd.map(|(listener, file)| {
        let lxd = listen::unix(shared.clone(), ex.clone(), listener, None, opts.clone());
        ex.spawn(lxd).detach();
        file
    });
    let serve = listen::unix(
        shared.clone(),
        ex.clone(),
        listener,
        Some(tls),
        opts.clone(),
    );
    let status = format!("STATUS=serving on {}", socket.display());
    // Ready is said before the signal task takes the notifier: a client
    // that connects from here on is answered.
    log!(Info, "ready: serving on {}", socket.display());
    tell(notifier.as_ref(), &format!("READY=1\n{status}"));
    let (stop_shared, stop_dir) = (shared.clone(), dir.clone());
    let stop = async move {
        let name = loop {
            match signals.next().await {
                Some(Ok(Signal::Hup)) => {
                    log!(
                        Info,
                        "received SIGHUP, reading the trust store and configuration again"
                    );
                    tell(notifier.as_ref(), "RELOADING=1\nSTATUS=reloading");
                    if let Err(e) = reload(&stop_shared, &stop_dir) {
                        log!(Error, "reload failed, keeping what was in force: {e}");
                    }
                    tell(notifier.as_ref(), &format!("READY=1\n{status}"));
                }
                Some(Ok(Signal::Int)) => break "SIGINT",
                _ => break "SIGTERM",
            }
        };
        log!(Info, "received {name}, shutting down");
        tell(notifier.as_ref(), "STOPPING=1\nSTATUS=shutting down");
    };
    // Both as tasks of their own: the future `block_on` holds is polled
    // again each time the thread wakes (once per request at least), and an
    // accept or signal read polled there would cost system calls on every
    // request; a task's handle costs none.
    let (serve, stop) = (ex.spawn(serve), ex.spawn(stop));
    smol::block_on(ex.run(smol::future::or(serve, stop)));
    Ok(())
}
