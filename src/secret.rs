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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the passphrase must not be empty")]
    Empty,
    #[error("the system random source failed")]
    Random,
}

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

/// Failed attempts per peer (a uid on the Unix socket). A few mistakes cost
/// nothing; after that each failure doubles the wait before the next attempt
/// is even looked at, up to `max_delay`. One attempt per peer is in flight
/// at a time, so parallel connections do not multiply the guessing rate.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    free: u32,
    base: Duration,
    max_delay: Duration,
    peers: HashMap<K, Peer>,
}

#[derive(Debug, Default)]
struct Peer {
    failures: u32,
    not_before: Option<Instant>,
    in_flight: bool,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// `free` failures without delay, then `base`, 2×`base`, … up to `max_delay`.
    pub(crate) fn new(free: u32, base: Duration, max_delay: Duration) -> RateLimiter<K> {
        RateLimiter {
            free,
            base,
            max_delay,
            peers: HashMap::new(),
        }
    }

    /// Claims an attempt for `peer` at `now`, or says how long to wait.
    pub(crate) fn begin(&mut self, peer: K, now: Instant) -> Result<(), Duration> {
        let p = self.peers.entry(peer).or_default();
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
        let p = self.peers.entry(peer).or_default();
        p.in_flight = false;
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
}
