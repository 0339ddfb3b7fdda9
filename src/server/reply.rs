//! Every answer of the API, in LXD's response envelope ([`Envelope`],
//! the type clients read it with).

use serde_json::Value;

use crate::http::Response;
use crate::wire::{path, Envelope};

/// LXD's synchronous response.
pub(crate) fn sync(metadata: Value) -> Response {
    sync_json(&serde_json::to_vec(&metadata).unwrap_or_default())
}

/// [`sync`] with metadata that is JSON already (a list served from memory).
pub(crate) fn sync_json(metadata: &[u8]) -> Response {
    const HEAD: &str = r#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":"#;
    let mut body = Vec::with_capacity(HEAD.len() + metadata.len() + 1);
    body.extend_from_slice(HEAD.as_bytes());
    body.extend_from_slice(metadata);
    body.push(b'}');
    Response { status: 200, body }
}

/// LXD's error response.
pub(crate) fn error(code: u16, message: &str) -> Response {
    envelope(code, &Envelope::<()>::error(code, message))
}

/// LXD's asynchronous response: 202 and the operation.
pub(crate) fn operation(op: &crate::server::operations::Operation) -> Response {
    envelope(202, &Envelope::operation(path::operation(&op.id), op))
}

fn envelope<T: serde::Serialize>(status: u16, body: &Envelope<T>) -> Response {
    Response {
        status,
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failed test should panic"
)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body_of(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn envelopes() {
        let ok = body_of(&sync(json!(["/1.0"])));
        assert_eq!(ok["type"], "sync");
        assert_eq!(ok["status_code"], 200);
        assert_eq!(ok["metadata"][0], "/1.0");
        let e = error(403, "nope");
        assert_eq!(e.status, 403);
        let e = body_of(&e);
        assert_eq!(
            (e["type"].as_str(), e["error_code"].as_u64()),
            (Some("error"), Some(403))
        );
        assert_eq!(e["error"], "nope");
    }

    /// The head written by hand is the envelope's own first fields.
    #[test]
    fn the_sync_head_is_the_envelope() {
        let typed = serde_json::to_vec(&Envelope::sync([1, 2])).unwrap();
        assert_eq!(sync_json(b"[1,2]").body, typed);
    }
}
