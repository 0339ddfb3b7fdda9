//! `/1.0/operations` and `/1.0/events`: what long calls are doing, and
//! a way to wait for them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::http::{Request, Response};
use crate::server::events::Kinds;
use crate::server::reply::{error, sync};
use crate::server::state::Shared;

/// The longest `?timeout=` a wait is held for.
const WAIT_LIMIT_SECS: i64 = 3600;

pub(crate) fn list(shared: &Arc<Shared>) -> Response {
    sync(json!(shared.ops.by_status()))
}

pub(crate) fn get(shared: &Arc<Shared>, id: &str) -> Response {
    match shared.ops.get(id) {
        Some(op) => sync(json!(op)),
        None => error(404, "operation not found"),
    }
}

/// `GET /1.0/operations/ID/wait?timeout=N`: the operation once it has
/// ended, or as it is after N seconds (an hour at most, and by default).
pub(crate) async fn wait(shared: &Arc<Shared>, req: &Request, id: &str) -> Response {
    let secs = req
        .query_param("timeout")
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|t| *t >= 0)
        .map_or(WAIT_LIMIT_SECS, |t| t.min(WAIT_LIMIT_SECS));
    match shared
        .ops
        .wait(id, Duration::from_secs(secs.unsigned_abs()))
        .await
    {
        Some(op) => sync(json!(op)),
        None => error(404, "operation not found"),
    }
}

/// `/1.0/events[?type=operation,lifecycle]`: the websocket is accepted
/// here; the connection then carries the events (see `listen::serve`).
pub(crate) fn events(req: &Request) -> Response {
    if let Err(e) = Kinds::parse(req.query_param("type")) {
        return error(400, &e.to_string());
    }
    match &req.websocket_key {
        Some(key) => Response::websocket_accept(key),
        None => error(400, "/1.0/events is served as a websocket only"),
    }
}
