//! Small pieces every area leans on: a lock that outlives a panic, a
//! deadline on a future, and a future boxed behind a pointer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// [`timed`] for a connection that waits again and again (a keep-alive
/// connection, twice per request): the deadline moves at no cost, and its
/// timer is set in the reactor only when it fires before the deadline.
/// A timer set anew for every wait would wake the reactor's thread each
/// time, several system calls and a context switch per request.
pub(crate) struct Deadline {
    /// When the timer is set for, if it is.
    armed: Option<Instant>,
    timer: smol::Timer,
}

impl Deadline {
    pub(crate) fn new() -> Self {
        Deadline {
            armed: None,
            timer: smol::Timer::never(),
        }
    }

    /// `f`'s output, or `None` when it takes longer than `t`.
    pub(crate) async fn timed<T>(
        &mut self,
        t: Duration,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let at = self.arm(t);
        smol::future::or(async { Some(f.await) }, async {
            self.passed(at).await;
            None
        })
        .await
    }

    /// The deadline `t` from now (`None`: too far to say, never), with the
    /// timer moved to it if it was set for later.
    fn arm(&mut self, t: Duration) -> Option<Instant> {
        let at = Instant::now().checked_add(t)?;
        if self.armed.is_none_or(|armed| at < armed) {
            self.timer.set_at(at);
            self.armed = Some(at);
        }
        Some(at)
    }

    /// Returns once `at` has passed.
    async fn passed(&mut self, at: Option<Instant>) {
        let Some(at) = at else {
            return std::future::pending().await;
        };
        loop {
            (&mut self.timer).await;
            if Instant::now() >= at {
                break;
            }
            // Fired early: set for an earlier wait, long done.
            self.timer.set_at(at);
            self.armed = Some(at);
        }
        self.armed = None;
    }
}

/// A future behind a pointer: what takes many kinds of work (operations)
/// takes them as this, so that it is compiled once, not once per kind of
/// work (bytes the size budget counts).
pub(crate) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn deadline_gives_the_output_in_time_and_none_after() {
        smol::block_on(async {
            let mut d = Deadline::new();
            assert_eq!(d.timed(MS * 500, async { 7 }).await, Some(7));
            let t0 = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(d.timed(MS * 100, never).await, None);
            assert!(t0.elapsed() >= MS * 100);
        });
    }

    #[test]
    fn deadline_moved_earlier_moves_its_timer() {
        smol::block_on(async {
            let mut d = Deadline::new();
            // The timer is set for an hour from now…
            assert_eq!(d.timed(Duration::from_secs(3600), async {}).await, Some(()));
            // …and a shorter wait must still end on time.
            let wait = d.timed(MS * 100, std::future::pending::<()>());
            assert_eq!(timed(Duration::from_secs(10), wait).await, Some(None));
        });
    }

    #[test]
    fn deadline_moved_later_is_not_cut_short_by_its_earlier_timer() {
        smol::block_on(async {
            let mut d = Deadline::new();
            // The timer is left set for 100 ms from now…
            assert_eq!(d.timed(MS * 100, async {}).await, Some(()));
            // …a later wait outlives it and must run to its own end: a
            // future that finishes at 300 ms is not given up at 100.
            let t0 = Instant::now();
            let slow = async {
                smol::Timer::after(MS * 300).await;
                "done"
            };
            assert_eq!(d.timed(MS * 400, slow).await, Some("done"));
            // Then a wait that never finishes ends at its own deadline.
            let t1 = Instant::now();
            assert_eq!(d.timed(MS * 200, std::future::pending::<()>()).await, None);
            assert!(t1.elapsed() >= MS * 200);
            assert!(t0.elapsed() >= MS * 500);
        });
    }
}
