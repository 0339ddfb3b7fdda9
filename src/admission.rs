//! What a new connection passes before its first request, the same on the
//! Unix socket and over TCP: its peer's share of the connection slots, a
//! slot overall, and the TLS handshake.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use smol::lock::{Semaphore, SemaphoreGuardArc};

use crate::daemon::{lock, timed, DaemonOptions};
use crate::log::log;
use crate::pki::Cert;

/// One open connection counted against its peer (a uid on the Unix socket,
/// an address on TCP); uncounted when dropped. One peer may hold only a
/// quarter of all slots, so it cannot lock everyone else out.
pub(crate) struct PerPeer<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    peer: K,
}

impl<K: Hash + Eq + Clone> PerPeer<K> {
    /// Counts a connection from `peer`, or `None` when it already holds its
    /// share of `max` slots; an `exempt` peer is counted but never refused.
    pub(crate) fn claim(
        counts: &Arc<Mutex<HashMap<K, usize>>>,
        peer: K,
        max: usize,
        exempt: bool,
    ) -> Option<PerPeer<K>> {
        let mut map = lock(counts);
        let n = map.entry(peer.clone()).or_insert(0);
        if !exempt && *n >= (max / 4).max(1) {
            return None;
        }
        *n += 1;
        Some(PerPeer {
            counts: counts.clone(),
            peer,
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for PerPeer<K> {
    fn drop(&mut self) {
        let mut map = lock(&self.counts);
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// One of the `max` slots both listeners share, or `None`, logged, when
/// all are taken.
pub(crate) fn take_slot(slots: &Arc<Semaphore>, max: usize) -> Option<SemaphoreGuardArc> {
    let slot = slots.try_acquire_arc();
    if slot.is_none() {
        log!(Warn, "connection refused: {max} connections already open");
    }
    slot
}

/// The TLS handshake on a new connection from `who`, bounded in time, and
/// the client certificate if one was sent; `None`, logged, on failure.
pub(crate) async fn handshake<S>(
    tls: &TlsAcceptor,
    stream: S,
    opts: &DaemonOptions,
    who: &str,
) -> Option<(TlsStream<S>, Option<Cert>)>
where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin,
{
    let tls_stream = match timed(opts.timeout, tls.accept(stream)).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            log!(Info, "TLS handshake with {who} failed: {e}");
            return None;
        }
        None => {
            log!(Info, "TLS handshake with {who} timed out");
            return None;
        }
    };
    let cert = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| Cert::from_der(c.as_ref()).ok());
    Some((tls_stream, cert))
}
