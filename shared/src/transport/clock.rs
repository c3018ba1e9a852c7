//! Time inside a connection: nanoseconds since the connection began, in one
//! `u64`.
//!
//! A connection reads and compares times on every packet (timers, ack
//! delays, loss deadlines, queue ages). `Instant` is a `(seconds,
//! nanoseconds)` pair of 16 bytes whose every addition and difference
//! normalises the nanoseconds with a carry; a [`Stamp`] is 8 bytes and
//! one integer operation. Callers keep passing `Instant`s: the connection's
//! [`Clock`] turns each call's `now` into a stamp once, and a stamp back
//! into an `Instant` only where one leaves the connection
//! ([`Connection::poll_timeout`](super::Connection::poll_timeout)).

use std::ops::Add;
use std::time::{Duration, Instant};

/// A point in a connection's time: nanoseconds since its [`Clock`]'s
/// epoch. Additions saturate (a `u64` of nanoseconds spans 584 years).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// The connection's epoch.
    #[cfg(test)]
    pub(crate) const ZERO: Self = Self(0);

    /// Later than any time a connection lives to see: a timer that is not
    /// running. (Only an addition that saturates reaches it, and that
    /// deadline would never come either.)
    pub(crate) const NEVER: Self = Self(u64::MAX);

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Stamp {
    type Output = Self;

    fn add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(nanos(duration)))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Turns a caller's `Instant`s into [`Stamp`]s and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose stamps count from `epoch`.
    pub(crate) fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    /// `now` as a stamp; a time before the epoch is the epoch.
    pub(crate) fn stamp(&self, now: Instant) -> Stamp {
        Stamp(nanos(now.saturating_duration_since(self.epoch)))
    }

    /// The `Instant` of `at`.
    pub(crate) fn instant(&self, at: Stamp) -> Instant {
        self.epoch + Duration::from_nanos(at.0)
    }
}

/// The time of an endpoint and of all its connections: one epoch (the
/// first `now` it is given), so that `now` becomes a stamp once per call
/// of the endpoint rather than once per connection it touches, and the
/// stamp of the latest `now` kept, since an I/O loop calls its endpoint
/// many times in a row with the same `now`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SharedClock {
    clock: Option<Clock>,
    last: Option<(Instant, Stamp)>,
}

impl SharedClock {
    /// The clock (whose epoch is the first `now` ever given) and `now` as
    /// a stamp on it.
    pub(crate) fn at(&mut self, now: Instant) -> (Clock, Stamp) {
        let clock = *self.clock.get_or_insert(Clock::new(now));
        if let Some((at, stamp)) = self.last
            && at == now
        {
            return (clock, stamp);
        }
        let stamp = clock.stamp(now);
        self.last = Some((now, stamp));
        (clock, stamp)
    }

    /// `now` as a stamp.
    pub(crate) fn stamp(&mut self, now: Instant) -> Stamp {
        self.at(now).1
    }

    /// The `Instant` of `at` (`None` before the clock has seen a `now`, when
    /// there can be no stamps).
    pub(crate) fn instant(&self, at: Stamp) -> Option<Instant> {
        self.clock.map(|clock| clock.instant(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_instants() {
        let epoch = Instant::now();
        let clock = Clock::new(epoch);
        let later = epoch + Duration::new(3_700, 123_456_789);
        let stamp = clock.stamp(later);
        assert_eq!(clock.instant(stamp), later);
        assert_eq!(
            stamp.saturating_duration_since(Stamp::ZERO),
            Duration::new(3_700, 123_456_789)
        );
        assert_eq!(clock.stamp(epoch), Stamp::ZERO);
    }

    #[test]
    fn a_shared_clock_counts_from_the_first_now_it_sees() {
        let mut shared = SharedClock::default();
        assert_eq!(shared.instant(Stamp(5)), None);
        let first = Instant::now();
        let (clock, stamp) = shared.at(first);
        assert_eq!(stamp, Stamp::ZERO);
        let later = first + Duration::from_millis(40);
        assert_eq!(shared.stamp(later), Stamp(40_000_000));
        // The same `now` again, then an earlier one: the epoch stays.
        assert_eq!(shared.stamp(later), Stamp(40_000_000));
        assert_eq!(shared.at(first), (clock, Stamp::ZERO));
        assert_eq!(shared.instant(Stamp(40_000_000)), Some(later));
        assert_eq!(clock.instant(Stamp::ZERO), first);
    }

    #[test]
    fn times_before_the_epoch_and_huge_additions_saturate() {
        let epoch = Instant::now() + Duration::from_secs(10);
        let clock = Clock::new(epoch);
        assert_eq!(clock.stamp(epoch - Duration::from_secs(5)), Stamp::ZERO);
        let end = Stamp::ZERO + Duration::MAX;
        assert_eq!(end, Stamp::NEVER);
        assert_eq!(end + Duration::from_secs(1), end);
        assert_eq!(Stamp::ZERO.saturating_duration_since(end), Duration::ZERO);
    }
}
