//! Long work as LXD operations: `POST …` answers 202 with an operation,
//! `GET /1.0/operations/<id>` shows it, `…/wait` blocks until it is done.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

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
    s.serialize_str(&crate::trust::rfc3339(*secs))
}

struct Slot {
    op: Operation,
    /// Closed when the operation ends, which wakes every waiter at once.
    done: smol::channel::Receiver<()>,
}

/// Every operation since the daemon started (they are not persisted).
#[derive(Clone, Default)]
pub(crate) struct Operations {
    slots: Arc<Mutex<BTreeMap<String, Slot>>>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Operations")
    }
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every change is one insert or field write), so poison is ignored.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `work` on `ex` as a new operation and returns its description.
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
        let now = crate::trust::now();
        let op = Operation {
            // LXD's operation ids are UUIDs, as its instances' are.
            id: crate::instances::new_uuid(),
            class: "task",
            description: description.to_string(),
            created_at: now,
            updated_at: now,
            status: Status::Running,
            status_code: Status::Running.code(),
            resources,
            metadata: Value::Null,
            may_cancel: false,
            err: String::new(),
        };
        let (tx, rx) = smol::channel::bounded::<()>(1);
        self.lock().insert(
            op.id.clone(),
            Slot {
                op: op.clone(),
                done: rx,
            },
        );
        let work = work(Progress {
            ops: self.clone(),
            id: op.id.clone(),
        });
        let this = self.clone();
        let id = op.id.clone();
        ex.spawn(async move {
            let result = work.await;
            if let Some(slot) = this.lock().get_mut(&id) {
                let op = &mut slot.op;
                op.updated_at = crate::trust::now();
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
            }
            tx.close();
        })
        .detach();
        op
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
                .push(format!("/1.0/operations/{id}"));
        }
        out
    }

    /// Waits until operation `id` ends or `timeout` passes, then shows it.
    pub(crate) async fn wait(&self, id: &str, timeout: std::time::Duration) -> Option<Operation> {
        let done = self.lock().get(id)?.done.clone();
        let _ = smol::future::or(
            async {
                let _ = done.recv().await;
            },
            async {
                smol::Timer::after(timeout).await;
            },
        )
        .await;
        self.get(id)
    }
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
        if let Some(slot) = self.ops.lock().get_mut(&self.id) {
            if slot.op.status == Status::Running {
                slot.op.metadata = metadata;
                slot.op.updated_at = crate::trust::now();
            }
        }
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
}
