//! Long work as LXD operations: `POST …` answers 202 with an operation,
//! `GET /1.0/operations/<id>` shows it, `…/wait` blocks until it is done.
//!
//! A finished operation is kept for a while (LXD keeps them seconds; five
//! minutes leaves a slow client time to look), and at most so many are: a
//! client starting operations in a loop must not grow the daemon for ever.
//! Running operations are always kept.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::rt::Boxed;
use crate::server::events::{Events, Kind};
use crate::websocket::{Ends, Link};

/// An operation's work, boxed (see [`Operations::start`]).
type Work = Boxed<'static, Result<Value, String>>;

/// How long a websocket operation waits for its client to connect a
/// websocket it needs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How far an operation got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Status {
    Running,
    Success,
    Failure,
}

impl Status {
    /// LXD's numeric status code.
    pub(crate) fn code(self) -> u16 {
        match self {
            Status::Running => 103,
            Status::Success => 200,
            Status::Failure => 400,
        }
    }
}

/// What `GET /1.0/operations/<id>` shows.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Operation {
    pub id: String,
    pub class: &'static str,
    pub description: String,
    #[serde(serialize_with = "as_rfc3339")]
    pub created_at: u64,
    #[serde(serialize_with = "as_rfc3339")]
    pub updated_at: u64,
    pub status: Status,
    pub status_code: u16,
    pub resources: BTreeMap<String, Vec<String>>,
    pub metadata: Value,
    pub may_cancel: bool,
    pub err: String,
}

fn as_rfc3339<S: serde::Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::clock::rfc3339(*secs))
}

/// How long a finished operation is kept.
const KEEP_FINISHED: Duration = Duration::from_secs(300);
/// How many finished operations are kept at most; the oldest go first.
const MAX_FINISHED: usize = 1000;

impl Operation {
    /// A new operation, as of now.
    fn new(
        class: &'static str,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        status: Status,
        metadata: Value,
    ) -> Operation {
        let now = crate::clock::now();
        Operation {
            // LXD's operation ids are UUIDs, as its instances' are.
            id: crate::uuid::new(),
            class,
            description: description.to_string(),
            created_at: now,
            updated_at: now,
            status,
            status_code: status.code(),
            resources,
            metadata,
            may_cancel: false,
            err: String::new(),
        }
    }
}

struct Slot {
    op: Operation,
    /// Closed when the operation ends, which wakes every waiter at once.
    done: smol::channel::Receiver<()>,
    /// The operation as it ended, for a waiter that wakes after it was
    /// pruned.
    last: Arc<OnceLock<Operation>>,
    /// When it ended.
    finished: Option<Instant>,
    /// Websockets not connected yet, by secret: their name and where the
    /// connection goes. Each secret works once.
    sockets: BTreeMap<String, (String, smol::channel::Sender<Ends>)>,
}

/// The websockets of an operation (LXD's `fds`), as their clients connect.
/// Those the work never asks for (a control socket it does not read) are
/// kept open until the operation ends.
#[derive(Debug)]
pub(crate) struct Fds {
    waiting: BTreeMap<String, smol::channel::Receiver<Ends>>,
}

impl Fds {
    /// The websocket `name` once its client has connected; `None` if it did
    /// not within [`CONNECT_TIMEOUT`].
    pub(crate) async fn connected(&self, name: &str) -> Option<Ends> {
        let rx = self.waiting.get(name)?;
        crate::rt::timed(CONNECT_TIMEOUT, rx.recv()).await?.ok()
    }
}

/// The operations running and those finished recently (they are not
/// persisted).
#[derive(Clone)]
pub(crate) struct Operations {
    slots: Arc<Mutex<BTreeMap<String, Slot>>>,
    /// Where each change of an operation is announced.
    events: Events,
    keep: Duration,
    max_finished: usize,
}

impl Default for Operations {
    fn default() -> Operations {
        Operations::new(Events::default())
    }
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Operations")
    }
}

impl Operations {
    /// Operations that announce themselves on `events`.
    pub(crate) fn new(events: Events) -> Operations {
        Operations {
            events,
            ..Operations::with_retention(KEEP_FINISHED, MAX_FINISHED)
        }
    }

    /// Keeps finished operations for `keep`, and at most `max_finished` of them.
    pub(crate) fn with_retention(keep: Duration, max_finished: usize) -> Operations {
        Operations {
            events: Events::default(),
            slots: Arc::default(),
            keep,
            max_finished,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        let mut map = crate::rt::lock(&self.slots);
        self.prune(&mut map, Instant::now());
        map
    }

    /// Forgets what finished more than `keep` before `now`, then the oldest
    /// finished beyond `max_finished`.
    fn prune(&self, map: &mut BTreeMap<String, Slot>, now: Instant) {
        map.retain(|_, s| {
            s.finished
                .is_none_or(|t| now.saturating_duration_since(t) < self.keep)
        });
        let mut finished: Vec<(Instant, String)> = map
            .iter()
            .filter_map(|(id, s)| s.finished.map(|t| (t, id.clone())))
            .collect();
        if finished.len() > self.max_finished {
            finished.sort();
            let excess = finished.len() - self.max_finished;
            for (_, id) in finished.into_iter().take(excess) {
                map.remove(&id);
            }
        }
    }

    /// [`Operations::prune`] as if it were `now` (tests move the clock).
    #[cfg(test)]
    fn prune_at(&self, now: Instant) {
        let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.prune(&mut map, now);
    }

    /// Starts `work` on `ex` as a new operation and returns its description.
    ///
    /// A failure arrives as text, LXD's `err`, and not as an error: an
    /// operation outlives the request that started it, is copied to every
    /// caller that looks at it and is kept after its work is gone, so what
    /// it holds is what the API shows. The handler that starts the work
    /// turns its error into that text with `reply::told`, the same words
    /// (and log line) a synchronous answer would have.
    pub(crate) fn spawn<F>(
        &self,
        ex: &smol::Executor<'static>,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        work: F,
    ) -> Operation
    where
        F: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.spawn_reporting(ex, description, resources, |_| work)
    }

    /// Like [`Operations::spawn`], for work that reports its progress as the
    /// running operation's metadata through the [`Progress`] it is given.
    pub(crate) fn spawn_reporting<F, W>(
        &self,
        ex: &smol::Executor<'static>,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        work: W,
    ) -> Operation
    where
        W: FnOnce(Progress) -> F,
        F: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.start(
            ex,
            "task",
            description,
            resources,
            &[],
            Box::new(|p, _| Box::pin(work(p))),
        )
    }

    /// Like [`Operations::spawn`], for work that streams through
    /// websockets (LXD's `websocket` class): one per name in `fds`, each
    /// with a secret shown in the operation's `metadata.fds`, which its
    /// client connects with (`/1.0/operations/ID/websocket?secret=…`).
    pub(crate) fn spawn_websocket<F, W>(
        &self,
        ex: &smol::Executor<'static>,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        fds: &[&str],
        work: W,
    ) -> Operation
    where
        W: FnOnce(Fds) -> F,
        F: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.start(
            ex,
            "websocket",
            description,
            resources,
            fds,
            Box::new(|_, f| Box::pin(work(f))),
        )
    }

    /// The websocket of running operation `id` whose secret is `secret`,
    /// connected now; `None` if there is none (any more).
    pub(crate) fn connect(&self, id: &str, secret: &str) -> Option<Link> {
        let mut map = self.lock();
        let slot = map.get_mut(id).filter(|s| s.op.status == Status::Running)?;
        let (name, tx) = slot.sockets.remove(secret)?;
        let (link, ends) = Link::pair(name != "control");
        tx.try_send(ends).ok()?;
        Some(link)
    }

    /// One body for every kind of operation: the work is boxed, so that
    /// each kind does not make its own copy of the task around it.
    fn start(
        &self,
        ex: &smol::Executor<'static>,
        class: &'static str,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        fds: &[&str],
        work: Box<dyn FnOnce(Progress, Fds) -> Work + '_>,
    ) -> Operation {
        let mut sockets = BTreeMap::new();
        let mut waiting = BTreeMap::new();
        let mut secrets = serde_json::Map::new();
        for name in fds {
            let secret = secret();
            let (tx, rx) = smol::channel::bounded(1);
            sockets.insert(secret.clone(), (name.to_string(), tx));
            waiting.insert(name.to_string(), rx);
            secrets.insert(name.to_string(), secret.into());
        }
        let metadata = match fds.is_empty() {
            true => Value::Null,
            false => serde_json::json!({ "fds": secrets }),
        };
        let op = Operation::new(class, description, resources, Status::Running, metadata);
        let (tx, rx) = smol::channel::bounded::<()>(1);
        self.lock().insert(
            op.id.clone(),
            Slot {
                op: op.clone(),
                done: rx,
                last: Arc::default(),
                finished: None,
                sockets,
            },
        );
        self.announce(&op);
        let work = work(
            Progress {
                ops: self.clone(),
                id: op.id.clone(),
            },
            Fds { waiting },
        );
        let this = self.clone();
        let id = op.id.clone();
        ex.spawn(async move {
            let result = work.await;
            let mut map = this.lock();
            if let Some(slot) = map.get_mut(&id) {
                let op = &mut slot.op;
                op.updated_at = crate::clock::now();
                match result {
                    Ok(meta) => {
                        op.status = Status::Success;
                        op.metadata = meta;
                    }
                    Err(e) => {
                        op.status = Status::Failure;
                        op.err = e;
                    }
                }
                op.status_code = op.status.code();
                slot.finished = Some(Instant::now());
                slot.sockets.clear();
                let _ = slot.last.set(op.clone());
                let done = op.clone();
                drop(map);
                this.announce(&done);
            }
            tx.close();
        })
        .detach();
        op
    }

    /// Records an operation that is over as it starts: what a call that
    /// LXD answers with an operation does at once (a token's issue, whose
    /// metadata the client reads from the answer itself).
    pub(crate) fn finished(
        &self,
        class: &'static str,
        description: &str,
        metadata: Value,
    ) -> Operation {
        let op = Operation::new(
            class,
            description,
            BTreeMap::new(),
            Status::Success,
            metadata,
        );
        // Closed at once: a waiter sees the operation over.
        let (_, done) = smol::channel::bounded::<()>(1);
        let last = Arc::new(OnceLock::new());
        let _ = last.set(op.clone());
        self.lock().insert(
            op.id.clone(),
            Slot {
                op: op.clone(),
                done,
                last,
                finished: Some(Instant::now()),
                sockets: BTreeMap::new(),
            },
        );
        self.announce(&op);
        op
    }

    /// Tells the events listeners how `op` is now.
    fn announce(&self, op: &Operation) {
        self.events.send(
            Kind::Operation,
            &serde_json::to_value(op).unwrap_or_default(),
        );
    }

    pub(crate) fn get(&self, id: &str) -> Option<Operation> {
        self.lock().get(id).map(|s| s.op.clone())
    }

    /// Operation URLs grouped by status, as `GET /1.0/operations` shows them.
    pub(crate) fn by_status(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, slot) in self.lock().iter() {
            let status = format!("{:?}", slot.op.status).to_lowercase();
            out.entry(status)
                .or_default()
                .push(crate::wire::path::operation(id));
        }
        out
    }

    /// Waits until operation `id` ends or `timeout` passes, then shows it.
    pub(crate) async fn wait(&self, id: &str, timeout: std::time::Duration) -> Option<Operation> {
        let (done, last) = {
            let map = self.lock();
            let slot = map.get(id)?;
            (slot.done.clone(), slot.last.clone())
        };
        let _ = smol::future::or(
            async {
                let _ = done.recv().await;
            },
            async {
                smol::Timer::after(timeout).await;
            },
        )
        .await;
        self.get(id).or_else(|| last.get().cloned())
    }
}

/// A websocket's secret: 32 random bytes in hex, as LXD's.
fn secret() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    crate::pki::hex(&b)
}

/// A running operation's way to show how far it got.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    ops: Operations,
    id: String,
}

impl Progress {
    /// Replaces the operation's metadata while it runs.
    pub(crate) fn set(&self, metadata: Value) {
        let mut map = self.ops.lock();
        let Some(slot) = map
            .get_mut(&self.id)
            .filter(|s| s.op.status == Status::Running)
        else {
            return;
        };
        slot.op.metadata = metadata;
        slot.op.updated_at = crate::clock::now();
        let now = slot.op.clone();
        drop(map);
        self.ops.announce(&now);
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
    use std::time::Duration;

    #[test]
    fn wait_sees_the_result() {
        let ex = smol::Executor::new();
        let ops = Operations::default();
        let (tx, rx) = smol::channel::bounded::<()>(1);
        let op = ops.spawn(&ex, "test", BTreeMap::new(), async move {
            let _ = rx.recv().await;
            Ok(serde_json::json!({"x": 1}))
        });
        assert_eq!(op.status, Status::Running);
        assert_eq!(op.id.len(), 36);
        smol::block_on(ex.run(async {
            // Not finished yet: the wait times out and shows it running.
            let seen = ops.wait(&op.id, Duration::from_millis(20)).await.unwrap();
            assert_eq!(seen.status_code, 103);
            tx.close();
            let seen = ops.wait(&op.id, Duration::from_secs(10)).await.unwrap();
            assert_eq!(seen.status, Status::Success);
            assert_eq!(seen.metadata["x"], 1);
            assert!(ops.wait("nope", Duration::from_secs(1)).await.is_none());
        }));
        let failed = ops.spawn(&ex, "bad", BTreeMap::new(), async { Err("boom".into()) });
        smol::block_on(ex.run(async {
            let seen = ops.wait(&failed.id, Duration::from_secs(10)).await.unwrap();
            assert_eq!((seen.status_code, seen.err.as_str()), (400, "boom"));
        }));
        let listed = ops.by_status();
        assert_eq!(
            listed["success"],
            vec![format!("/1.0/operations/{}", op.id)]
        );
        assert_eq!(listed["failure"].len(), 1);
    }

    #[test]
    fn finished_operations_are_kept_a_while_and_a_few() {
        let ex = smol::Executor::new();
        let keep = Duration::from_secs(300);
        let ops = Operations::with_retention(keep, 2);
        let (tx, rx) = smol::channel::bounded::<()>(1);
        let running = ops.spawn(&ex, "long", BTreeMap::new(), async move {
            let _ = rx.recv().await;
            Ok(Value::Null)
        });
        let done: Vec<Operation> = (0..3)
            .map(|_| ops.spawn(&ex, "quick", BTreeMap::new(), async { Ok(Value::Null) }))
            .collect();
        smol::block_on(ex.run(async {
            for op in &done {
                // Waiting on one that has just finished still answers.
                let seen = ops.wait(&op.id, Duration::from_secs(10)).await.unwrap();
                assert_eq!(seen.status, Status::Success);
                // Finishing times are told apart.
                smol::Timer::after(Duration::from_millis(5)).await;
            }
        }));
        // Only two finished ones are kept: the oldest went first.
        assert!(ops.get(&done[0].id).is_none());
        assert!(ops.get(&done[1].id).is_some());
        assert!(ops.get(&done[2].id).is_some());
        // After `keep` the others go too; the running one stays.
        let now = Instant::now();
        ops.prune_at(now + keep / 2);
        assert!(ops.get(&done[2].id).is_some());
        ops.prune_at(now + keep);
        assert!(ops.get(&done[1].id).is_none());
        assert!(ops.get(&done[2].id).is_none());
        ops.prune_at(now + keep * 1000);
        assert_eq!(ops.get(&running.id).unwrap().status, Status::Running);
        assert_eq!(ops.by_status().get("running").map(Vec::len), Some(1));
        assert_eq!(ops.by_status().get("success"), None);
        tx.close();
        smol::block_on(ex.run(async {
            let seen = ops.wait(&running.id, Duration::from_secs(10)).await;
            assert_eq!(seen.unwrap().status, Status::Success);
        }));
    }

    #[test]
    fn a_waiter_sees_the_end_even_if_it_was_pruned_meanwhile() {
        let ex = smol::Executor::new();
        // Nothing finished is kept at all.
        let ops = Operations::with_retention(Duration::ZERO, 0);
        let op = ops.spawn(&ex, "quick", BTreeMap::new(), async {
            Ok(serde_json::json!({"x": 2}))
        });
        smol::block_on(ex.run(async {
            let seen = ops.wait(&op.id, Duration::from_secs(10)).await.unwrap();
            assert_eq!(seen.metadata["x"], 2);
        }));
        assert!(ops.get(&op.id).is_none());
    }
}
