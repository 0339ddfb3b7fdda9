//! What travels between client and daemon, shared by both sides (and by
//! preseed, which is a client too): the rules of the API's paths, and the
//! bodies both sides read and write.

/// Path parameters are names, fingerprints and uuids: nothing else gets in.
pub(crate) fn is_param(seg: &str) -> bool {
    !seg.is_empty()
        && seg.len() <= 128
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && seg != "."
        && seg != ".."
}
