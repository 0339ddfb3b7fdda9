//! The TCP listener: the same API as the Unix socket,
//! over TLS on `core.https_address` or `kvmboxd --https`, on exactly that
//! address. Who the client is comes from its TLS certificate alone, looked
//! up in the trust store for every request (LXD's model).
//!
//! The supervisor applies a change of `core.https_address` at once: it
//! closes the old listener and binds the new address (connections already
//! open stay up until they end). `--https` pins the address for the
//! daemon's lifetime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use smol::lock::Semaphore;
use smol::net::{TcpListener, TcpStream};
use smol::Executor;

use crate::log::log;
use crate::server::admission::{handshake, network_peer, take_slot, PerPeer};
use crate::server::{serve, DaemonOptions, Shared};

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
            connection(&shared, stream, addr, tls, &opts).await;
            drop((slot, ip_slot));
        })
        .detach();
    }
}

async fn connection(
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
    serve(shared, &mut tls_stream, opts, &who, || {
        shared.remote_identity(addr, &cert, &intermediates)
    })
    .await;
}
