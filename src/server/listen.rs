//! Where connections come in: the Unix socket (Multipass's local trust
//! model: its peer's uid, and a TLS client certificate inside the socket)
//! and the TCP listener (LXD's: the TLS certificate alone). Both serve the
//! same API the same way: TLS, then HTTP/1.1 with keep-alive, every read
//! bounded in size and time, and the caller's identity looked up again for
//! every request.
//!
//! The TCP supervisor applies a change of `core.https_address` at once: it
//! closes the old listener and binds the new address (connections already
//! open stay up until they end). `--https` pins the address for the
//! daemon's lifetime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use smol::io::AsyncWriteExt;
use smol::lock::Semaphore;
use smol::net::unix::{UnixListener, UnixStream};
use smol::net::{TcpListener, TcpStream};
use smol::Executor;

use crate::http::{self, ReadError};
use crate::log::log;
use crate::rt::{timed, Deadline};
use crate::server::admission::{handshake, network_peer, take_slot, PerPeer};
use crate::server::auth::Identity;
use crate::server::events::Kinds;
use crate::server::reply::error;
use crate::server::routes;
use crate::server::state::{DaemonOptions, Shared};
use crate::server::Error;
use crate::sys::{self, PeerCred};

/// A bound Unix socket's file, removed when the daemon lets go of it
/// (whichever way start-up or shutdown goes).
#[derive(Debug)]
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix socket and gives it its owner and mode (see
/// [`secure_socket`]).
pub(crate) fn bind_secured(
    path: &Path,
    gid: u32,
    group: &str,
    open: bool,
) -> Result<(UnixListener, SocketFile), Error> {
    let listener = bind(path)?;
    let file = SocketFile(path.to_path_buf());
    secure_socket(path, gid, group, open)?;
    Ok((listener, file))
}

/// Accepts on a Unix socket until the daemon stops, each connection on
/// its own task: TLS inside the socket with `tls` (Multipass's model), or
/// plain HTTP without (the LXD-compatible socket). Once the TLS socket is
/// 0666 any local user can connect, so one uid (root aside) may hold only
/// a quarter of the slots.
pub(crate) async fn unix(
    shared: Arc<Shared>,
    ex: Arc<Executor<'static>>,
    listener: UnixListener,
    tls: Option<TlsAcceptor>,
    opts: DaemonOptions,
) {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let per_uid = Arc::new(Mutex::new(HashMap::new()));
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
            match tls {
                Some(tls) => unix_connection(&shared, stream, cred, tls, &opts).await,
                None => lxd_connection(&shared, stream, cred, &opts).await,
            }
            drop((slot, per_uid));
        })
        .detach();
    }
}

pub(crate) fn bind(path: &Path) -> Result<UnixListener, Error> {
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
pub(crate) fn secure_socket(path: &Path, gid: u32, group: &str, open: bool) -> Result<(), Error> {
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

/// [`PerPeer::claim`] for a local uid, counted as the user it stands for
/// (see [`sys::subuid_owner`]): root is exempt.
fn claim_uid(
    counts: &Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
    max: usize,
) -> Option<PerPeer<u32>> {
    PerPeer::claim(counts, sys::subuid_owner(uid), max, uid == 0)
}

/// Serves one connection until it closes, misbehaves or idles out.
/// Serves a connection to the LXD-compatible socket: plain HTTP, the
/// caller known by its peer credentials.
async fn lxd_connection(
    shared: &Arc<Shared>,
    mut stream: UnixStream,
    cred: PeerCred,
    opts: &DaemonOptions,
) {
    let who = format!("uid {} (LXD socket)", cred.uid);
    serve(shared, &mut stream, opts, &who, &|| {
        shared.lxd_identity(&cred)
    })
    .await;
}

async fn unix_connection(
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
    serve(shared, &mut tls_stream, opts, &who, &|| {
        shared.identity(&cred, &cert)
    })
    .await;
}

/// Both directions of a connection, whatever carries it.
pub(crate) trait Duplex: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send {}
impl<T: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send> Duplex for T {}

/// Answers requests on an established TLS stream until it closes,
/// misbehaves or idles out. `identity` is called for every request, so a
/// change to the trust store applies to connections already open. Both
/// are taken as `dyn`, so that this is compiled once for every kind of
/// connection (TLS over TCP or the Unix socket, plain HTTP on the LXD
/// socket).
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    tls_stream: &mut dyn Duplex,
    opts: &DaemonOptions,
    who: &str,
    identity: &(dyn Fn() -> Identity + Sync),
) {
    let mut buf = Vec::new();
    let opened = std::time::Instant::now();
    let mut deadline = Deadline::new();
    loop {
        // The events a websocket being accepted will carry: listened for
        // before the 101 goes out, so that none sent after it is missed.
        let mut session = None;
        // The head decides how the body is read: an image upload streams
        // to the image store, anything else is read into memory.
        let read = deadline
            .timed(opts.timeout, async {
                // One reader for every kind of connection: compiled once.
                let stream: &mut http::Stream<'_> = &mut *tls_stream;
                let head = http::read_head(stream, &mut buf, opts.limits).await?;
                if routes::streams(&head) {
                    return Ok(Err(head));
                }
                http::read_rest(stream, &mut buf, head, opts.limits)
                    .await
                    .map(Ok)
            })
            .await;
        let (resp, keep_alive) = match read {
            // An idle keep-alive connection is closed quietly; a request
            // that started and did not finish gets its 408.
            None if buf.is_empty() => return,
            None => (error(408, "request timeout"), false),
            Some(Err(ReadError::Closed | ReadError::Io(_))) => return,
            Some(Err(ReadError::Refused(code, msg))) => {
                log!(Debug, "refused a request from {who}: {msg}");
                (error(code, msg), false)
            }
            Some(Ok(Err(head))) => {
                let id = identity();
                let (req, framing) = head.split();
                let stream: &mut http::Stream<'_> = tls_stream;
                let mut body = http::Body::new(stream, &mut buf, framing, opts.limits);
                let resp = routes::upload(shared, &id, &req, &mut body, opts.timeout).await;
                log!(
                    Debug,
                    "{who} {} {} -> {}",
                    req.method,
                    req.path,
                    resp.status
                );
                // A body not read to its end leaves the connection unusable.
                let finished = body.finished();
                (resp, req.keep_alive && finished)
            }
            Some(Ok(Ok(req))) => {
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
                if resp.status == 101 {
                    // An operation's websocket comes with its session; any
                    // other is the events one.
                    session = match resp.extra.as_ref().and_then(|e| e.websocket.as_ref()) {
                        Some(link) => link.take(),
                        None => Kinds::parse(req.query_param("type"))
                            .ok()
                            .map(|kinds| {
                                crate::websocket::Link::events(shared.events.listen(kinds))
                            })
                            .and_then(|l| l.take()),
                    };
                }
                (resp, req.keep_alive && !held)
            }
        };
        let bytes = resp.to_bytes(keep_alive);
        let written = deadline
            .timed(opts.timeout, async {
                tls_stream.write_all(&bytes).await?;
                tls_stream.flush().await
            })
            .await;
        if let (Some(session), Some(Ok(()))) = (session, &written) {
            // An accepted websocket: held, sent the events it asked for (or
            // its operation's stream), and pinged when silent, until the
            // peer closes it, stops answering, falls behind, its stream
            // ends or it is no longer trusted.
            let trusted = || identity().role.is_some();
            // Boxed: inline, its state would make every connection's task
            // larger, websocket or not.
            Box::pin(crate::websocket::hold(
                &mut &mut *tls_stream,
                opts.timeout,
                who,
                trusted,
                session,
            ))
            .await;
            let _ = timed(Duration::from_secs(1), tls_stream.close()).await;
            return;
        }
        if !matches!(written, Some(Ok(()))) || !keep_alive {
            let _ = timed(Duration::from_secs(1), tls_stream.close()).await;
            return;
        }
        // A body read may have grown the buffer: an idle connection keeps
        // only what a request head needs.
        buf.shrink_to(http::HEAD_READ);
    }
}

/// Keeps a listener on the configured address, rebinding when it changes.
/// `pinned` is the listener for `--https`, bound before start-up went on
/// so that a bad address stops the daemon; a bad `core.https_address` is
/// only logged, since the API call that set it has already succeeded.
/// TCP has slots of its own, kept across rebinds (connections to the old
/// address stay counted): however many the network holds, the Unix socket
/// keeps all of its slots.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    ex: Arc<Executor<'static>>,
    tls: TlsAcceptor,
    opts: DaemonOptions,
    mut pinned: Option<TcpListener>,
) {
    let admission = Admission {
        slots: Arc::new(Semaphore::new(opts.max_connections)),
        per_peer: Arc::new(Mutex::new(HashMap::new())),
    };
    let mut current: Option<(SocketAddr, smol::Task<()>)> = None;
    loop {
        let want = opts.https.or_else(|| shared.settings().https_address());
        if current.as_ref().map(|c| c.0) != want {
            if let Some((old, task)) = current.take() {
                drop(task);
                log!(Info, "stopped listening on {old}");
                shared.set_https_address(None);
            }
            if let Some(addr) = want {
                let bound = match pinned.take() {
                    Some(l) => Ok(l),
                    None => TcpListener::bind(addr).await,
                };
                match bound {
                    Ok(listener) => {
                        let bound = listener.local_addr().unwrap_or(addr);
                        log!(Info, "listening on https://{bound}");
                        shared.set_https_address(Some(bound));
                        let task = ex.spawn(accept_loop(
                            shared.clone(),
                            ex.clone(),
                            listener,
                            tls.clone(),
                            opts.clone(),
                            admission.clone(),
                        ));
                        // Remember what was asked for, so an unchanged
                        // setting with port 0 does not rebind.
                        current = Some((addr, task));
                    }
                    Err(e) => log!(Error, "cannot listen on {addr}: {e}"),
                }
            }
        }
        shared.config_changed().await;
    }
}

/// The TCP listener's slots, and how many each network peer holds.
#[derive(Clone)]
struct Admission {
    slots: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
}

async fn accept_loop(
    shared: Arc<Shared>,
    ex: Arc<Executor<'static>>,
    listener: TcpListener,
    tls: TlsAcceptor,
    opts: DaemonOptions,
    admission: Admission,
) {
    let Admission { slots, per_peer } = admission;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log!(Warn, "accept failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A quarter of the slots per address (per /64 for IPv6), as per
        // uid on the Unix socket.
        let peer = network_peer(addr.ip());
        let Some(ip_slot) = PerPeer::claim(&per_peer, peer, opts.max_connections, false) else {
            log!(
                Warn,
                "connection from {addr} refused: too many open from {peer}"
            );
            continue;
        };
        let Some(slot) = take_slot(&slots, opts.max_connections, "TCP") else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shared, tls, opts) = (shared.clone(), tls.clone(), opts.clone());
        ex.spawn(async move {
            tcp_connection(&shared, stream, addr, tls, &opts).await;
            drop((slot, ip_slot));
        })
        .detach();
    }
}

async fn tcp_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    tls: TlsAcceptor,
    opts: &DaemonOptions,
) {
    let who = addr.to_string();
    let Some((mut tls_stream, cert)) = handshake(&tls, stream, opts, &who).await else {
        return;
    };
    // The rest of the chain the client sent, for checking it again in PKI mode.
    let intermediates: Vec<_> = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.get(1..))
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    serve(shared, &mut tls_stream, opts, &who, &|| {
        shared.remote_identity(addr, &cert, &intermediates)
    })
    .await;
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
}
