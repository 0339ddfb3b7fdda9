//! What a new connection passes before its first request, the same on the
//! Unix socket and over TCP: its peer's share of the connection slots, a
//! slot of its listener (each listener has its own, so that the network
//! cannot crowd out local users), and the TLS handshake.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use smol::lock::{Semaphore, SemaphoreGuardArc};

use crate::log::log;
use crate::pki::Cert;
use crate::rt::{lock, timed};
use crate::server::state::DaemonOptions;

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

/// Who a network peer counts as, for connection slots and failed guesses:
/// an IPv4 address itself, an IPv6 address its /64. One host is routinely
/// given a whole /64, so counting its addresses one by one would give it
/// 2^64 shares.
pub(crate) fn network_peer(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// One of the listener's `max` slots, or `None`, logged, when all are taken.
pub(crate) fn take_slot(
    slots: &Arc<Semaphore>,
    max: usize,
    listener: &str,
) -> Option<SemaphoreGuardArc> {
    let slot = slots.try_acquire_arc();
    if slot.is_none() {
        log!(
            Warn,
            "connection refused: {max} connections already open on {listener}"
        );
    }
    slot
}

/// The TLS handshake on a new connection from `who`, bounded by the
/// handshake timeout (a peer that connects and stays silent holds a slot
/// only that long), and the client certificate if one was sent; `None`,
/// logged, on failure.
pub(crate) async fn handshake<S>(
    tls: &TlsAcceptor,
    stream: S,
    opts: &DaemonOptions,
    who: &str,
) -> Option<(TlsStream<S>, Option<Cert>)>
where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin,
{
    let limit = opts.handshake_timeout.min(opts.timeout);
    let tls_stream = match timed(limit, tls.accept(stream)).await {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_count_by_their_64_ipv4_by_address() {
        let key = |s: &str| network_peer(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), "::");
        // A v4 peer on a dual-stack socket is still counted by its address.
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    }
}
