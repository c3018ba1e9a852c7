//! The clock the tick runner paces itself with, injected so that pacing can
//! be tested on virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of time that can also wait.
pub trait Clock: Send + 'static {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Returns at or after `deadline`; immediately if it has passed.
    fn sleep_until(&mut self, deadline: Instant);
}

/// The operating system's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&mut self, deadline: Instant) {
        // `thread::sleep` may wake early on some platforms; loop until due.
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep(deadline - now);
        }
    }
}

/// A virtual clock: time stands still until someone advances it, and
/// sleeping jumps straight to the deadline. Clones share the same time, so a
/// test can hand one to the runner and keep another to simulate slow ticks
/// (advance it from inside a system) or stalls.
#[derive(Clone, Debug)]
pub struct ManualClock {
    base: Instant,
    elapsed_nanos: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at an arbitrary instant.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            elapsed_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.elapsed_nanos
            .fetch_add(duration_nanos(by), Ordering::SeqCst);
    }

    /// The instant this clock started at.
    pub fn start(&self) -> Instant {
        self.base
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.elapsed_nanos.load(Ordering::SeqCst))
    }

    fn sleep_until(&mut self, deadline: Instant) {
        let target = duration_nanos(deadline.saturating_duration_since(self.base));
        self.elapsed_nanos.fetch_max(target, Ordering::SeqCst);
    }
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_sleeps_forward_only() {
        let mut clock = ManualClock::new();
        let t0 = clock.now();
        clock.sleep_until(t0 + Duration::from_millis(5));
        assert_eq!(clock.now(), t0 + Duration::from_millis(5));
        clock.sleep_until(t0);
        assert_eq!(clock.now(), t0 + Duration::from_millis(5));
        let shared = clock.clone();
        shared.advance(Duration::from_millis(1));
        assert_eq!(clock.now(), t0 + Duration::from_millis(6));
    }
}
