//! The daemon's own way of applying a preseed document at start-up:
//! requests handed straight to [`routes::handle`] as local root with the admin
//! role, on the daemon's executor, so that operations they start (image
//! imports, starts) make progress while a step waits on them.

use std::sync::Arc;

use smol::Executor;

use crate::http::Request;
use crate::log::log;
use crate::preseed::{CallError, Error, Outcome, Preseed, Transport};
use crate::server::auth::{Identity, Peer};
use crate::server::routes;
use crate::server::state::Shared;
use crate::server::trust::Role;
use crate::sys::{self, PeerCred};
use crate::wire::Exchange;

struct InProcess<'a> {
    shared: &'a Arc<Shared>,
    ex: &'a Arc<Executor<'static>>,
}

/// Applies `plan` before the daemon serves anyone; each step is logged.
pub(crate) fn apply_locally(
    plan: &Preseed,
    shared: &Arc<Shared>,
    ex: &Arc<Executor<'static>>,
) -> Result<(), Error> {
    plan.apply_with(&mut InProcess { shared, ex }, |what, outcome| {
        if outcome == Outcome::Denied {
            log!(
                Warn,
                "preseed: {what}: denied: an administrator removed it from the trust store, so \
                 it is not added back at start; `kvmbox config trust add` trusts it again"
            );
        } else {
            log!(Info, "preseed: {what}: {outcome}");
        }
    })
}

impl Exchange for InProcess<'_> {
    type Error = CallError;

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), CallError> {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let req = Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            content_type: None,
            body: body.map(<[u8]>::to_vec).unwrap_or_default(),
            keep_alive: false,
            websocket_key: None,
            lxd_headers: Vec::new(),
        };
        let id = Identity {
            peer: Peer::Local(PeerCred {
                pid: std::process::id(),
                uid: sys::euid(),
                gid: sys::egid(),
                groups: None,
            }),
            cert: None,
            role: Some(Role::Admin),
            projects: Vec::new(),
            refused: None,
        };
        let resp = smol::block_on(self.ex.run(routes::handle(self.shared, &id, &req)));
        Ok((resp.status, resp.body))
    }
}

impl Transport for InProcess<'_> {
    fn keeps_removed(&mut self, pem: &str) -> bool {
        crate::pki::Cert::from_pem(pem.as_bytes()).is_ok_and(|c| self.shared.trust().is_denied(&c))
    }
}
