//! Random (version 4) UUIDs, as LXD gives each instance and operation.

use ring::rand::SecureRandom;

/// A fresh random UUID in its canonical text form.
pub(crate) fn new() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    // Version 4, RFC 4122 variant.
    if let Some(x) = b.get_mut(6) {
        *x = (*x & 0x0f) | 0x40;
    }
    if let Some(x) = b.get_mut(8) {
        *x = (*x & 0x3f) | 0x80;
    }
    let h = crate::pki::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_and_fresh() {
        let (a, b) = (super::new(), super::new());
        assert_eq!(a.len(), 36);
        assert_eq!(a.get(14..15), Some("4"));
        assert_ne!(a, b);
    }
}
