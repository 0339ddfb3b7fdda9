//! Wall-clock time as the API writes it: seconds since the epoch, and
//! RFC 3339.

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 of seconds since the epoch: how LXD's API writes every time
/// (lxc refuses to parse anything else).
pub(crate) fn rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| secs.to_string())
}

/// Now, in RFC 3339.
pub(crate) fn rfc3339_now() -> String {
    rfc3339(now())
}
