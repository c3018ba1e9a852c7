//! Metrics: a registry of counters, gauges and histograms shared between the
//! ECS (which updates them) and an HTTP thread (which serves them to
//! Prometheus), plus the liveness heartbeat behind `/healthz`.
//!
//! # Adding a metric from a plugin
//!
//! Register once in `Plugin::build`, keep the handle in a resource of your
//! own, update it from systems; updates are relaxed atomics:
//!
//! ```
//! use bevy_app::App;
//! use bevy_ecs::prelude::*;
//! use server::metrics::{Counter, Metrics};
//!
//! #[derive(Resource)]
//! struct ChatMetrics {
//!     messages: Counter,
//! }
//!
//! let mut app = App::new();
//! app.init_resource::<Metrics>();
//! let metrics = app.world().resource::<Metrics>().clone();
//! let messages = metrics
//!     .registry()
//!     .counter("chat_messages_total", "Chat messages accepted.")
//!     .unwrap_or_default();
//! app.insert_resource(ChatMetrics { messages });
//! ```
//!
//! Families that vary by a dimension (drops by reason, packets by channel)
//! use the `*_with_labels` variants, one call per label value.

mod http;
mod registry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bevy_ecs::resource::Resource;

pub use http::{EndpointOptions, MetricsEndpoint};
pub use registry::{
    Counter, Gauge, Histogram, HistogramSnapshot, MetricError, MetricKind, Registry,
    exponential_buckets,
};

/// The server's metrics: the shared [`Registry`] and the tick [`Heartbeat`].
///
/// A bevy resource; cloning it shares the same registry, which is how the
/// HTTP endpoint thread gets its view.
#[derive(Resource, Clone, Debug, Default)]
pub struct Metrics {
    registry: Arc<Registry>,
    heartbeat: Heartbeat,
    shutting_down: Arc<AtomicBool>,
    faults: Faults,
}

impl Metrics {
    /// The registry to register metrics in and render from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The heartbeat the tick runner beats after every tick.
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// Marks the server as shutting down (it turns players away from the
    /// first tick of the drain): `/healthz` answers 503 from now on.
    pub fn mark_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::mark_shutting_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The faults the server runs on with: `/healthz` answers 503 while
    /// one stands.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

/// What is failing in a server whose tick still runs (a store whose
/// commits fail, say, refusing every change), by the part that failed,
/// readable from any thread. A part raises its fault when it fails, for as
/// long as the failure is news ([`FAULT_HOLD`]: a part that fails again
/// raises it again), and clears it when it works again.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<BTreeMap<&'static str, (String, Instant)>>>);

/// How long a fault stands after it was last raised, unless cleared
/// sooner: a part that failed once and has had nothing to do since (an
/// idle server's store, its world full, commits nothing) is not held
/// unhealthy for good, and a load balancer that takes it out of rotation
/// for it lets it back.
pub const FAULT_HOLD: Duration = Duration::from_secs(30);

impl Faults {
    /// Raises `part`'s fault, `fault`, at `now`.
    pub fn raise(&self, part: &'static str, fault: String, now: Instant) {
        let mut faults = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        faults.insert(part, (fault, now));
    }

    /// Clears `part`'s fault; returns whether one was raised.
    pub fn clear(&self, part: &'static str) -> bool {
        let mut faults = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        faults.remove(part).is_some()
    }

    /// Every fault standing at `now` (raised less than [`FAULT_HOLD`]
    /// before), a `part: fault` line each in the parts' order, or `None`
    /// if there is none.
    pub fn describe(&self, now: Instant) -> Option<String> {
        let faults = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let standing: String = faults
            .iter()
            .filter(|(_, (_, raised))| now.saturating_duration_since(*raised) < FAULT_HOLD)
            .map(|(part, (fault, _))| format!("{part}: {fault}\n"))
            .collect();
        (!standing.is_empty()).then_some(standing)
    }
}

/// When the tick loop last completed a tick, in wall-clock time, readable
/// from any thread. `/healthz` reports healthy while it is recent.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last beat, plus one; zero for never.
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    /// Records a beat now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// Records a beat at `at`.
    pub fn beat_at(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.last.store(nanos + 1, Ordering::Relaxed);
    }

    /// How long before `now` the last beat was, or `None` if there was none.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            stamp => {
                let at = self.epoch + Duration::from_nanos(stamp - 1);
                Some(now.saturating_duration_since(at))
            }
        }
    }

    /// Whether a beat happened less than `max_age` before `now`.
    pub fn is_fresh(&self, now: Instant, max_age: Duration) -> bool {
        self.age(now).is_some_and(|age| age < max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_stands_until_cleared_or_for_its_hold() {
        let faults = Faults::default();
        let t0 = Instant::now();
        assert_eq!(faults.describe(t0), None);
        faults.raise("store", "the last commit failed".into(), t0);
        faults.raise("other", "down".into(), t0);
        assert_eq!(
            faults.describe(t0 + FAULT_HOLD - Duration::from_millis(1)),
            Some("other: down\nstore: the last commit failed\n".into())
        );
        assert!(faults.clear("other"));
        assert!(!faults.clear("other"));
        assert_eq!(
            faults.describe(t0),
            Some("store: the last commit failed\n".into())
        );
        assert_eq!(faults.describe(t0 + FAULT_HOLD), None, "held no longer");
        // Raised again: news again.
        faults.raise("store", "again".into(), t0 + FAULT_HOLD);
        assert_eq!(
            faults.describe(t0 + FAULT_HOLD),
            Some("store: again\n".into())
        );
    }

    #[test]
    fn heartbeat_is_stale_until_the_first_beat_and_after_max_age() {
        let heartbeat = Heartbeat::default();
        let t0 = Instant::now();
        assert_eq!(heartbeat.age(t0), None);
        assert!(!heartbeat.is_fresh(t0, Duration::from_secs(2)));
        heartbeat.beat_at(t0);
        assert!(heartbeat.is_fresh(t0 + Duration::from_millis(1999), Duration::from_secs(2)));
        assert!(!heartbeat.is_fresh(t0 + Duration::from_secs(2), Duration::from_secs(2)));
    }
}
