//! Passphrases: stored only as a salted PBKDF2-HMAC-SHA256 hash, compared in
//! constant time, and guessed no faster than the rate limiter allows.
//!
//! Stored form: `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`, so that
//! the iteration count can be raised later without invalidating old hashes.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::pki::hex;

/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
const ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const SCHEME: &str = "pbkdf2-sha256";

#[derive(thiserror::Error)]
pub enum Error {
    #[error("the passphrase must not be empty")]
    Empty,
    #[error("the system random source failed")]
    Random,
}

crate::debug_as_display!(Error);

/// Hashes `passphrase` with a fresh random salt.
pub(crate) fn hash(passphrase: &str) -> Result<String, Error> {
    if passphrase.is_empty() {
        return Err(Error::Empty);
    }
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| Error::Random)?;
    Ok(hash_with(passphrase, &salt, ITERATIONS))
}

fn hash_with(passphrase: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_LEN];
    let iters = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iters,
        salt,
        passphrase.as_bytes(),
        &mut out,
    );
    format!("{SCHEME}${iterations}${}${}", hex(salt), hex(&out))
}

/// Whether `passphrase` matches `stored`; the comparison inside ring's
/// `pbkdf2::verify` takes the same time wherever the first difference is.
/// A malformed stored value matches nothing.
pub(crate) fn verify(passphrase: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iters), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Some(iters), Some(salt), Some(hash)) = (
        iters.parse::<u32>().ok().and_then(NonZeroU32::new),
        unhex(salt),
        unhex(hash),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iters,
        &salt,
        passphrase.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// Peers the limiter remembers at most: each costs about a hundred bytes, so
/// a flood of source addresses costs a bounded amount of memory.
const LIMITER_CAPACITY: usize = 4096;

/// A peer quiet this long after its last wait is forgotten: long enough
/// that forgetting does not help a patient guesser much (a few free
/// mistakes a day), short enough that the map does not fill with the past.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Failed attempts per peer (a uid on the Unix socket, an address or IPv6
/// /64 over TCP). A few mistakes cost nothing; after that each failure
/// doubles the wait before the next attempt is even looked at, up to
/// `max_delay`. One attempt per peer is in flight at a time, so parallel
/// connections do not multiply the guessing rate. A peer quiet for a day
/// after its last wait is forgotten; when the map is full the peer heard
/// from least recently is, unless it is waiting out a delay: a map full of
/// those makes new peers wait instead.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    free: u32,
    base: Duration,
    max_delay: Duration,
    capacity: usize,
    peers: HashMap<K, Peer>,
}

#[derive(Debug)]
struct Peer {
    failures: u32,
    not_before: Option<Instant>,
    in_flight: bool,
    /// When this peer last began or failed an attempt.
    seen: Instant,
}

impl Peer {
    fn new(now: Instant) -> Peer {
        Peer {
            failures: 0,
            not_before: None,
            in_flight: false,
            seen: now,
        }
    }

    /// Whether nothing about this peer needs remembering at `now`. An
    /// attempt takes a second at most, so one still in flight after a day
    /// was lost, and is forgotten too.
    fn expired(&self, now: Instant) -> bool {
        now >= self.not_before.unwrap_or(self.seen).max(self.seen) + FORGET_AFTER
    }
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// `free` failures without delay, then `base`, 2×`base`, … up to `max_delay`.
    pub(crate) fn new(free: u32, base: Duration, max_delay: Duration) -> RateLimiter<K> {
        RateLimiter {
            free,
            base,
            max_delay,
            capacity: LIMITER_CAPACITY,
            peers: HashMap::new(),
        }
    }

    /// Remember at most `n` peers (tests use a small map).
    #[cfg(test)]
    fn with_capacity(mut self, n: usize) -> RateLimiter<K> {
        self.capacity = n.max(1);
        self
    }

    /// How many peers are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }

    /// Makes room for one more peer: the expired go first, then, if the
    /// map is still full, the one heard from least recently among those
    /// that are not waiting out a delay (evicting one would let a flood of
    /// other addresses wipe its backoff) nor mid-attempt (its `finish` is
    /// still to come). Without such a peer the map stays full, and the
    /// earliest end of a delay is returned: new peers wait until then.
    fn make_room(&mut self, now: Instant) -> Result<(), Duration> {
        if self.peers.len() < self.capacity {
            return Ok(());
        }
        self.peers.retain(|_, p| !p.expired(now));
        while self.peers.len() >= self.capacity {
            let waiting = |p: &Peer| p.in_flight || p.not_before.is_some_and(|t| t > now);
            let Some(oldest) = self
                .peers
                .iter()
                .filter(|(_, p)| !waiting(p))
                .min_by_key(|(_, p)| p.seen)
                .map(|(k, _)| k.clone())
            else {
                let until = self.peers.values().filter_map(|p| p.not_before).min();
                let wait = until.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                return Err(wait.max(Duration::from_secs(1)));
            };
            self.peers.remove(&oldest);
        }
        Ok(())
    }

    /// Claims an attempt for `peer` at `now`, or says how long to wait.
    pub(crate) fn begin(&mut self, peer: K, now: Instant) -> Result<(), Duration> {
        if !self.peers.contains_key(&peer) {
            self.make_room(now)?;
        }
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(now));
        if p.expired(now) {
            *p = Peer::new(now);
        }
        p.seen = p.seen.max(now);
        if p.in_flight {
            return Err(self.base.max(Duration::from_secs(1)));
        }
        if let Some(t) = p.not_before {
            if now < t {
                return Err(t - now);
            }
        }
        p.in_flight = true;
        Ok(())
    }

    /// Records the outcome of the attempt `begin` allowed.
    pub(crate) fn finish(&mut self, peer: K, success: bool, now: Instant) {
        if success {
            self.peers.remove(&peer);
            return;
        }
        let (free, base, max) = (self.free, self.base, self.max_delay);
        let Some(p) = self.peers.get_mut(&peer) else {
            // Only an attempt `begin` allowed is finished, and its entry is
            // never evicted while in flight.
            return;
        };
        p.in_flight = false;
        p.seen = p.seen.max(now);
        p.failures = p.failures.saturating_add(1);
        if p.failures > free {
            let exp = (p.failures - free - 1).min(20);
            let delay = base.saturating_mul(1u32 << exp).min(max);
            p.not_before = Some(now + delay);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_and_hides_the_passphrase() {
        let stored = hash_with("correct horse", b"0123456789abcdef", 1000);
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct hors", &stored));
        assert!(!verify("", &stored));
        assert!(!stored.contains("correct"));
        assert!(stored.starts_with("pbkdf2-sha256$1000$"));
    }

    #[test]
    fn fresh_hashes_are_salted_and_slow_enough() {
        let a = hash("pw").unwrap();
        let b = hash("pw").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("pbkdf2-sha256${ITERATIONS}$")));
        const { assert!(ITERATIONS >= 100_000) };
        assert!(verify("pw", &a));
        assert!(matches!(hash(""), Err(Error::Empty)));
    }

    #[test]
    fn malformed_stored_values_match_nothing() {
        for bad in [
            "",
            "pw",
            "pbkdf2-sha256$0$00$00",
            "pbkdf2-sha256$10$zz$00",
            "md5$10$00$00",
            "pbkdf2-sha256$10$00$00$00",
            "pbkdf2-sha256$10$0$00",
        ] {
            assert!(!verify("pw", bad), "{bad}");
        }
    }

    #[test]
    fn rate_limiter_backs_off_and_resets() {
        let s = Duration::from_secs(1);
        let mut rl = RateLimiter::new(2, s, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..2 {
            rl.begin(7, t0).unwrap();
            rl.finish(7, false, t0);
        }
        rl.begin(7, t0).unwrap();
        rl.finish(7, false, t0); // third failure: 1 s
        assert_eq!(rl.begin(7, t0), Err(s));
        assert!(rl.begin(8, t0).is_ok(), "other peers are not affected");
        rl.begin(7, t0 + s).unwrap();
        rl.finish(7, false, t0 + s); // fourth: 2 s
        assert_eq!(rl.begin(7, t0 + s), Err(2 * s));
        rl.begin(7, t0 + 3 * s).unwrap();
        rl.finish(7, true, t0 + 3 * s);
        assert!(rl.begin(7, t0 + 3 * s).is_ok(), "success resets");
    }

    #[test]
    fn one_attempt_in_flight_per_peer_and_a_cap() {
        let mut rl = RateLimiter::new(0, Duration::from_secs(1), Duration::from_secs(5));
        let t0 = Instant::now();
        rl.begin(1, t0).unwrap();
        assert!(rl.begin(1, t0).is_err());
        rl.finish(1, false, t0);
        for i in 1..=40 {
            let t = t0 + Duration::from_secs(100 * i);
            rl.begin(1, t).unwrap();
            rl.finish(1, false, t);
        }
        let t = t0 + Duration::from_secs(4000);
        assert_eq!(rl.begin(1, t), Err(Duration::from_secs(5)));
    }

    #[test]
    fn a_flood_of_new_peers_does_not_wipe_a_backoff() {
        let s = Duration::from_secs(1);
        let mut rl = RateLimiter::new(0, s, Duration::from_secs(60)).with_capacity(4);
        let (t0, mut t) = (Instant::now(), Instant::now());
        for _ in 0..3 {
            if let Err(wait) = rl.begin(7u32, t) {
                t += wait;
                rl.begin(7, t).unwrap();
            }
            rl.finish(7, false, t);
        }
        let t0 = t0.max(t);
        let limited = rl.begin(7, t0 + s).unwrap_err();
        // Thousands of other peers fail once each; 7 is waiting, so it stays.
        let mut refused = 0;
        for peer in 100..5000 {
            match rl.begin(peer, t0 + s) {
                Ok(()) => rl.finish(peer, false, t0 + s),
                Err(_) => refused += 1,
            }
            assert!(rl.len() <= 4);
        }
        assert!(
            refused > 0,
            "a map full of waiting peers makes new ones wait"
        );
        assert!(
            rl.begin(7, t0 + s).unwrap_err() >= limited - s,
            "the backoff survived the flood"
        );
    }

    #[test]
    fn the_map_is_bounded_and_the_quiet_are_forgotten() {
        let s = Duration::from_secs(1);
        let ms = Duration::from_millis(1);
        let mut rl = RateLimiter::new(0, s, Duration::from_secs(60)).with_capacity(3);
        let t0 = Instant::now();
        for peer in 0..3u32 {
            rl.begin(peer, t0 + peer * ms).unwrap();
            rl.finish(peer, false, t0 + peer * ms);
        }
        // Peer 1 tries again later, so peer 0 is the least recent.
        rl.begin(1, t0 + 2 * s).unwrap();
        rl.finish(1, false, t0 + 2 * s);
        rl.begin(3, t0 + 2 * s).unwrap();
        assert_eq!(rl.len(), 3);
        assert!(rl.begin(0, t0 + 2 * s).is_ok(), "evicted, so forgotten");
        assert!(rl.begin(1, t0 + 2 * s).is_err(), "still remembered");
        // Peers 0 and 3 have attempts in flight: they stay, and a flood of
        // new peers never grows the map.
        for peer in 100..1000 {
            let _ = rl.begin(peer, t0 + 3 * s);
            rl.finish(peer, false, t0 + 3 * s);
            assert!(rl.len() <= 3);
        }
        assert!(rl.begin(3, t0 + 3 * s).is_err(), "in flight: kept");
        // Quiet for a day after the last wait: a fresh start.
        let mut rl = RateLimiter::new(1, s, Duration::from_secs(60));
        for t in [0, 0, 1, 3] {
            rl.begin(9, t0 + t * s).unwrap();
            rl.finish(9, false, t0 + t * s);
        }
        assert_eq!(rl.begin(9, t0 + 5 * s), Err(2 * s));
        let later = t0 + 7 * s + FORGET_AFTER;
        assert!(rl.begin(9, later - s).is_ok());
        rl.finish(9, false, later - s);
        assert!(rl.begin(9, later - s).is_err(), "remembered until then");
        let later = later - s + 8 * s + FORGET_AFTER;
        assert!(rl.begin(9, later).is_ok());
        rl.finish(9, false, later);
        assert!(rl.begin(9, later).is_ok(), "one free mistake again");
    }
}
