//! Small pieces every area leans on: a lock that outlives a panic, a
//! deadline on a future, and a future boxed behind a pointer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every lock of the crate guards a value changed in one assignment (and
    // written to disk first where it is kept): a poisoned lock still holds a
    // consistent value, and one panicked request must not stop the daemon.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f`'s output, or `None` when it takes longer than `t`.
pub(crate) async fn timed<T>(t: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(f.await) }, async {
        smol::Timer::after(t).await;
        None
    })
    .await
}

/// A future behind a pointer: what takes many kinds of work (operations)
/// takes them as this, so that it is compiled once, not once per kind of
/// work (bytes the size budget counts).
pub(crate) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
