//! `/1.0/events`: what happens on the server, as LXD sends it to whoever
//! listens on the events websocket (`lxc` waits on operations this way, and
//! `lxc monitor` shows everything).
//!
//! Each event is serialised once and handed to every listener that asked
//! for its type, through a bounded queue: a listener that falls behind by
//! [`QUEUE`] events is dropped (its websocket is closed), so a slow or
//! stalled reader never grows the daemon's memory nor holds up the others.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::rt::lock;
use crate::server::trust::DEFAULT_PROJECT;
use crate::websocket::Message;

/// How many events may wait for one listener before it is dropped.
pub(crate) const QUEUE: usize = 256;

/// The types of event LXD defines; kvmbox sends `operation` and
/// `lifecycle` (nothing is sent as `logging`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Operation,
    Logging,
    Lifecycle,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Operation => "operation",
            Kind::Logging => "logging",
            Kind::Lifecycle => "lifecycle",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Kind::Operation => 1,
            Kind::Logging => 2,
            Kind::Lifecycle => 4,
        }
    }
}

/// The types a listener asked for (`?type=operation,lifecycle`; all when
/// not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kinds(u8);

/// A `?type=` naming no type LXD knows.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}: use operation, logging or lifecycle")]
pub(crate) struct UnknownKind(String);

impl Kinds {
    pub(crate) fn parse(query: Option<&str>) -> Result<Kinds, UnknownKind> {
        let Some(list) = query.filter(|q| !q.is_empty()) else {
            return Ok(Kinds(0xff));
        };
        let mut bits = 0;
        for name in list.split(',') {
            let kind = [Kind::Operation, Kind::Logging, Kind::Lifecycle]
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| UnknownKind(name.to_string()))?;
            bits |= kind.bit();
        }
        Ok(Kinds(bits))
    }

    fn has(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }
}

/// One event in LXD's shape.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    location: &'static str,
    project: &'static str,
    metadata: &'a Value,
}

struct Listener {
    kinds: Kinds,
    queue: smol::channel::Sender<Message>,
}

/// The listeners, and the way in for events.
#[derive(Clone, Default)]
pub(crate) struct Events {
    listeners: Arc<Mutex<Vec<Listener>>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Events({} listeners)", lock(&self.listeners).len())
    }
}

impl Events {
    /// A new listener for `kinds`: each event arrives as the JSON text of
    /// one websocket message. The queue ends when the listener is dropped
    /// for falling behind.
    pub(crate) fn listen(&self, kinds: Kinds) -> smol::channel::Receiver<Message> {
        let (queue, rx) = smol::channel::bounded(QUEUE);
        lock(&self.listeners).push(Listener { kinds, queue });
        rx
    }

    /// A lifecycle event in LXD's shape (`action` such as
    /// `instance-started`, `source` the instance's path), for what was done
    /// to instance `name`. Every listener may see it: the events route
    /// admits only callers with a role in the default project, the one
    /// project there is and the one every instance is in.
    pub(crate) fn lifecycle(&self, action: &str, name: &str, context: Value) {
        self.send(
            Kind::Lifecycle,
            &serde_json::json!({
                "action": action,
                "source": crate::wire::path::instance(name),
                "context": context,
            }),
        );
    }

    /// Sends an event of `kind` to every listener that asked for it.
    pub(crate) fn send(&self, kind: Kind, metadata: &Value) {
        let mut listeners = lock(&self.listeners);
        if !listeners.iter().any(|l| l.kinds.has(kind)) {
            // Nobody listens: not even serialised. Closed queues of
            // websockets that ended are swept here too.
            listeners.retain(|l| !l.queue.is_closed());
            return;
        }
        let event = Event {
            kind: kind.name(),
            timestamp: crate::clock::rfc3339_now(),
            location: "none",
            project: DEFAULT_PROJECT,
            metadata,
        };
        let text = Message::Text(serde_json::to_vec(&event).unwrap_or_default().into());
        // A full queue drops its listener; a closed one has gone already.
        listeners.retain(|l| {
            !l.queue.is_closed() && (!l.kinds.has(kind) || l.queue.try_send(text.clone()).is_ok())
        });
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

    fn next(rx: &smol::channel::Receiver<Message>) -> Value {
        match rx.try_recv().unwrap() {
            Message::Text(t) => serde_json::from_slice(&t).unwrap(),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn events_reach_the_listeners_that_asked_in_lxds_shape() {
        let events = Events::default();
        let all = events.listen(Kinds::parse(None).unwrap());
        let ops = events.listen(Kinds::parse(Some("operation")).unwrap());
        events.send(Kind::Lifecycle, &json!({"action": "instance-started"}));
        events.send(Kind::Operation, &json!({"id": "x", "status_code": 200}));
        let e = next(&all);
        assert_eq!(e["type"], "lifecycle");
        assert_eq!(e["metadata"]["action"], "instance-started");
        assert_eq!(
            (e["project"].as_str(), e["location"].as_str()),
            (Some("default"), Some("none"))
        );
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(next(&all)["type"], "operation");
        events.lifecycle("instance-stopped", "vm1", json!({"reason": "exited"}));
        let e = next(&all);
        assert_eq!(
            (e["type"].as_str(), e["metadata"]["source"].as_str()),
            (Some("lifecycle"), Some("/1.0/instances/vm1"))
        );
        assert_eq!(e["metadata"]["action"], "instance-stopped");
        assert_eq!(e["metadata"]["context"]["reason"], "exited");
        assert_eq!(next(&ops)["metadata"]["id"], "x");
        assert!(
            ops.try_recv().is_err(),
            "a lifecycle event reached an operation listener"
        );
        assert_eq!(
            Kinds::parse(Some("operation,nope")),
            Err(UnknownKind("nope".into()))
        );
    }

    #[test]
    fn a_listener_that_falls_behind_is_dropped_and_the_others_go_on() {
        let events = Events::default();
        let slow = events.listen(Kinds::parse(None).unwrap());
        let fast = events.listen(Kinds::parse(None).unwrap());
        for i in 0..QUEUE + 10 {
            events.send(Kind::Operation, &json!({ "n": i }));
            fast.try_recv().unwrap();
        }
        assert_eq!(slow.len(), QUEUE, "the queue is bounded");
        assert!(slow.is_closed(), "the slow listener was not dropped");
        assert!(!fast.is_closed());
        assert_eq!(lock(&events.listeners).len(), 1);
        // A listener that went away is swept when nobody else listens.
        drop(fast);
        events.send(Kind::Operation, &json!({}));
        assert_eq!(lock(&events.listeners).len(), 0);
    }
}
