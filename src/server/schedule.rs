//! The daemon's own snapshot work, once a minute: the snapshots each
//! instance's `snapshots.schedule` asks for, then deleting those past
//! their expiry. Each is announced as a lifecycle event, as a client's
//! would be.
//!
//! Every minute since the last look is looked at, so a late wake-up loses
//! none; each instance's work runs as a task of its own, so that one slow
//! instance (a guest whose agent stalls a freeze, a stop holding its lock)
//! delays only itself, and an instance with work still under way is left
//! out rather than queued again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::log::log;
use crate::rt::lock;
use crate::server::state::Shared;
use crate::vmm::instances::Expiry;

/// How far back a late wake-up looks: a day of minutes.
const MAX_MINUTES: u64 = 24 * 60;

/// Runs for the daemon's life, waking in the first second of each minute.
pub(crate) async fn run(shared: Arc<Shared>) {
    let busy = Arc::new(Mutex::new(BTreeSet::new()));
    let mut last = crate::clock::now() / 60;
    loop {
        let now = crate::clock::now();
        smol::Timer::after(Duration::from_secs(60 - now % 60)).await;
        let now = crate::clock::now();
        let minute = now / 60;
        let from = (last + 1).max(minute.saturating_sub(MAX_MINUTES));
        let minutes: Vec<u64> = (from..=minute).map(|m| m * 60).collect();
        last = last.max(minute);
        tick(&shared, &busy, &minutes, now);
    }
}

/// Starts what is due in `minutes` (Unix seconds in each) and at `now`.
fn tick(shared: &Arc<Shared>, busy: &Arc<Mutex<BTreeSet<String>>>, minutes: &[u64], now: u64) {
    let Ok(ex) = shared.instances.executor() else {
        return;
    };
    let m = &shared.instances;
    // One task per instance: its scheduled snapshot, then its expired ones.
    let mut due: Vec<_> = m
        .scheduled(minutes)
        .into_iter()
        .map(|(n, s)| (n, Some(s)))
        .collect();
    for name in m.expired(now) {
        if !due.iter().any(|(n, _)| *n == name) {
            due.push((name, None));
        }
    }
    for (name, take) in due {
        if !lock(busy).insert(name.clone()) {
            continue;
        }
        let (shared, busy) = (shared.clone(), busy.clone());
        ex.spawn(async move {
            let m = &shared.instances;
            let taken = match take {
                Some(snap) => Some(m.snapshot(&name, &snap, Expiry::Configured).await),
                None => None,
            };
            let expired = m.delete_expired(&name, now).await;
            for (done, action, reason) in [
                (taken, "instance-snapshot-created", "scheduled"),
                (expired, "instance-snapshot-deleted", "expired"),
            ] {
                match done {
                    Some(Ok(())) => {
                        shared
                            .events
                            .lifecycle(action, &name, json!({ "reason": reason }))
                    }
                    Some(Err(why)) => log!(
                        Warn,
                        "instance {name}: {reason} snapshot: {}",
                        crate::error_chain(&why)
                    ),
                    None => {}
                }
            }
            lock(&busy).remove(&name);
        })
        .detach();
    }
}
