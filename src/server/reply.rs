//! Every answer of the API, in LXD's response envelope ([`Envelope`], the
//! type clients read it with); and the one way an error becomes an answer
//! ([`fail`]).

use std::error::Error;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::fault::{Blame, Fault};
use crate::http::{Request, Response};
use crate::log::log;
use crate::wire::{path, Envelope};

/// LXD's synchronous response.
pub(crate) fn sync(metadata: Value) -> Response {
    // Written straight after the envelope's head into one buffer sized for
    // most answers: a buffer that grows step by step, then copied, costs
    // more than the answer itself (each step a new allocation, and musl's
    // allocator maps and unmaps pages for those of a few KiB).
    let mut body = Vec::with_capacity(4096);
    body.extend_from_slice(SYNC_HEAD.as_bytes());
    let _ = serde_json::to_writer(&mut body, &metadata);
    body.push(b'}');
    Response {
        status: 200,
        body,
        extra: None,
    }
}

const SYNC_HEAD: &str = r#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":"#;

/// [`sync`] with metadata that is JSON already (a list served from memory).
pub(crate) fn sync_json(metadata: &[u8]) -> Response {
    let mut body = Vec::with_capacity(SYNC_HEAD.len() + metadata.len() + 1);
    body.extend_from_slice(SYNC_HEAD.as_bytes());
    body.extend_from_slice(metadata);
    body.push(b'}');
    Response {
        status: 200,
        body,
        extra: None,
    }
}

/// LXD's error response.
pub(crate) fn error(code: u16, message: &str) -> Response {
    envelope(code, &Envelope::<()>::error(code, message))
}

/// The answer to a call that failed with `e`: its status says whose fault
/// it is, its message is [`told`].
// Inlined, as `told` is: what each error type adds is a call, not a
// function (and its unwind entry) of its own.
#[inline(always)]
pub(crate) fn fail<E: Blame>(e: &E) -> Response {
    answer(e.fault(), format_args!("{e}"), e.source())
}

/// What the caller is told of `e` (in an error response, or as a failed
/// operation's `err`); see [`words`].
#[inline(always)]
pub(crate) fn told<E: Blame>(e: &E) -> String {
    words(e.fault(), format_args!("{e}"), e.source())
}

fn answer(
    fault: Fault,
    top: fmt::Arguments<'_>,
    source: Option<&(dyn Error + 'static)>,
) -> Response {
    error(status(fault), &words(fault, top, source))
}

/// The HTTP status of a fault: the caller's are 4xx, the rest 500.
fn status(fault: Fault) -> u16 {
    match fault {
        Fault::Input => 400,
        Fault::Denied => 403,
        Fault::Missing => 404,
        Fault::Conflict => 409,
        Fault::Peer | Fault::Host => 500,
    }
}

/// What the caller is told of an error, `top` with `source` under it,
/// whose fault is `fault`. Its own fault is told whole, the chain being
/// about its request; so is a peer's, QEMU misbehaving being about the
/// caller's VM. Both of those are logged; of the host's fault, the caller
/// is told only what failed, not the system's account of why (paths,
/// errno), which is the administrator's business and goes to the log.
/// (The generic [`fail`] and [`told`] only split the error: the rest is
/// done once, and needs no `dyn Error` of each type that reaches it.)
fn words(fault: Fault, top: fmt::Arguments<'_>, source: Option<&(dyn Error + 'static)>) -> String {
    let mut chain = top.to_string();
    if let Some(source) = source {
        chain.push_str(": ");
        chain.push_str(&crate::error_chain(source));
    }
    if fault.is_caller() {
        return match fault {
            Fault::Denied => format!("not authorized: {chain}"),
            _ => chain,
        };
    }
    log!(Error, "{chain}");
    match fault {
        // A full disk is the one account of why that the caller can act
        // on (free space, or stop writing), and it names nothing.
        Fault::Host if source.is_some_and(disk_full) => {
            format!("{top}: no space left on the daemon's disk (see the daemon's log)")
        }
        Fault::Host if source.is_some() => format!("{top} (see the daemon's log)"),
        _ => chain,
    }
}

/// Whether a filesystem being full (or over quota) is at the root of `e`.
fn disk_full(mut e: &(dyn Error + 'static)) -> bool {
    loop {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return true;
            }
        }
        match e.source() {
            Some(next) => e = next,
            None => return false,
        }
    }
}

/// A request body that is not the JSON its endpoint takes.
#[derive(thiserror::Error)]
#[error("invalid JSON body")]
pub(crate) struct BadBody(#[source] serde_json::Error);

crate::debug_as_display!(BadBody);

impl Blame for BadBody {
    fn fault(&self) -> Fault {
        Fault::Input
    }
}

/// The request's body as `T`, or the answer that refuses it.
pub(crate) fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body).map_err(|e| fail(&BadBody(e)))
}

/// LXD's asynchronous response: 202 and the operation.
pub(crate) fn operation(op: &crate::server::operations::Operation) -> Response {
    envelope(202, &Envelope::operation(path::operation(&op.id), op))
}

fn envelope<T: serde::Serialize>(status: u16, body: &Envelope<T>) -> Response {
    Response {
        status,
        body: serde_json::to_vec(body).unwrap_or_default(),
        extra: None,
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

    /// The answer to `e`: its status and the message the caller reads.
    fn reply_to<E: Blame>(e: &E) -> (u16, String) {
        let r = fail(e);
        let body = body_of(&r);
        assert_eq!(body["error_code"], r.status);
        (r.status, body["error"].as_str().unwrap().to_string())
    }

    #[test]
    fn the_callers_faults_are_4xx_with_the_whole_chain() {
        use crate::vmm::instances::Error;
        assert_eq!(
            reply_to(&Error::NotFound("instance \"a\"".into())),
            (404, "instance \"a\" not found".into())
        );
        assert_eq!(reply_to(&Error::Exists("image \"b\"".into())).0, 409);
        let range = "1:2".parse::<crate::vmm::vm::IdRange>().unwrap_err();
        assert_eq!(
            reply_to(&Error::UidRange(range)),
            (
                400,
                "\"1:2\" starts below 65536, among the host's own accounts".into()
            )
        );
        let memory = "lots".parse::<crate::vmm::qemu::MemorySize>().unwrap_err();
        let (status, msg) = reply_to(&Error::Memory(memory));
        assert_eq!(status, 400);
        assert!(
            msg.starts_with("invalid value for limits.memory: invalid memory size \"lots\""),
            "{msg}"
        );
        // A file the caller may not use is a refusal, said as one.
        let denied = crate::hostfile::Error::Denied("/root/disk".into());
        assert_eq!(
            reply_to(&Error::HostFile(denied)),
            (
                403,
                "not authorized: /root/disk: the calling user cannot read it".into()
            )
        );
        let settings = crate::server::settings::Error::UnknownKey("core.nope".into());
        assert_eq!(
            reply_to(&settings),
            (400, "unknown configuration key \"core.nope\"".into())
        );
        let bad: Result<Value, _> = serde_json::from_slice(b"{");
        let (status, msg) = reply_to(&BadBody(bad.unwrap_err()));
        assert_eq!(status, 400);
        assert!(msg.starts_with("invalid JSON body: EOF"), "{msg}");
    }

    #[test]
    fn the_hosts_faults_are_500_and_keep_the_systems_words_for_the_log() {
        let io = || std::io::Error::from_raw_os_error(libc::EIO);
        let failed = crate::store::Error::Write {
            path: "/state/trust.json".into(),
            source: io(),
        };
        let (status, msg) = reply_to(&crate::server::trust::Error::File(failed));
        assert_eq!(status, 500);
        assert_eq!(msg, "cannot write /state/trust.json (see the daemon's log)");
        // A full disk is said, however deep in the chain.
        let full = crate::store::Error::Write {
            path: "/state/trust.json".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(
            reply_to(&crate::server::trust::Error::File(full)),
            (
                500,
                "cannot write /state/trust.json: no space left on the daemon's disk \
                 (see the daemon's log)"
                    .into()
            )
        );
        // Without a source there is nothing more in the log to point at.
        assert_eq!(
            reply_to(&crate::server::tokens::Error::Random),
            (500, "the system random source failed".into())
        );
        // The same kind of error is the caller's or the host's by what
        // went wrong: a file that cannot be opened for a reason of the host's.
        let opened = crate::hostfile::Error::Io {
            path: "/srv/disk".into(),
            source: io(),
        };
        assert_eq!(
            reply_to(&crate::vmm::instances::Error::HostFile(opened)),
            (500, "cannot open /srv/disk (see the daemon's log)".into())
        );
        let secret = crate::server::settings::Error::Invalid {
            key: "local.passphrase".into(),
            source: crate::server::secret::Error::Random,
        };
        assert_eq!(reply_to(&secret).0, 500);
    }

    #[test]
    fn a_peers_fault_is_500_told_whole() {
        let timeout = crate::vmm::qmp::Error::Timeout {
            what: "query-status".into(),
            secs: 10,
        };
        let e = crate::vmm::instances::Error::Vm(crate::vmm::vm::Error::Qmp(timeout));
        assert_eq!(
            reply_to(&e),
            (
                500,
                "QEMU monitor: QEMU did not answer query-status within 10s".into()
            )
        );
        // What QEMU refuses is the request's fault.
        let refused = crate::vmm::qmp::Error::Command {
            command: "device_add".into(),
            class: "GenericError".into(),
            desc: "Duplicate ID".into(),
        };
        let e = crate::vmm::instances::Error::Vm(crate::vmm::vm::Error::Qmp(refused));
        assert_eq!(reply_to(&e).0, 400);
    }

    /// The head written by hand is the envelope's own first fields.
    #[test]
    fn the_sync_head_is_the_envelope() {
        let typed = serde_json::to_vec(&Envelope::sync([1, 2])).unwrap();
        assert_eq!(sync_json(b"[1,2]").body, typed);
    }
}
