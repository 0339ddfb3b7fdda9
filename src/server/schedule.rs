//! The daemon's own snapshot work, once a minute: the snapshots each
//! instance's `snapshots.schedule` asks for, then deleting those past
//! their expiry. Each is announced as a lifecycle event, as a client's
//! would be.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::log::log;
use crate::server::state::Shared;
use crate::vmm::instances::Expiry;

/// Runs for the daemon's life, waking in the first second of each minute.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let now = crate::clock::now();
        smol::Timer::after(Duration::from_secs(60 - now % 60)).await;
        tick(&shared, crate::clock::now()).await;
    }
}

/// What is due in the minute of `now`.
async fn tick(shared: &Shared, now: u64) {
    let m = &shared.instances;
    for (name, snap) in m.scheduled(now) {
        let done = match snap {
            Ok(snap) => m
                .snapshot(&name, &snap, Expiry::Configured)
                .await
                .map(|()| snap),
            Err(e) => Err(e),
        };
        match done {
            Ok(snap) => shared.events.lifecycle(
                "instance-snapshot-created",
                &name,
                json!({"snapshot": snap, "reason": "scheduled"}),
            ),
            Err(why) => log!(
                Warn,
                "instance {name}: scheduled snapshot: {}",
                crate::error_chain(&why)
            ),
        }
    }
    for (name, snap) in m.expired(now) {
        match m.delete_snapshot(&name, &snap).await {
            Ok(()) => shared.events.lifecycle(
                "instance-snapshot-deleted",
                &name,
                json!({"snapshot": snap, "reason": "expired"}),
            ),
            Err(why) => log!(
                Warn,
                "instance {name}: deleting expired snapshot {snap}: {}",
                crate::error_chain(&why)
            ),
        }
    }
}
