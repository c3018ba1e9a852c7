//! Round-trip time estimation (RFC 6298).

use std::time::Duration;

use super::clock::Stamp;

/// How long a minimum RTT sample counts: the minimum is over the current
/// window and the one before it, so a path that got longer (a new route,
/// Wi-Fi to mobile) is the new base within two windows instead of reading
/// as queueing delay for ever.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

/// No sample in a window (microseconds).
const NO_MIN: u32 = u32::MAX;

/// The retransmission timeout's configuration (the transport's
/// `initial_rto`, `min_rto` and `max_rto`), shared by every connection
/// rather than copied into each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtoBounds {
    /// Before the first sample.
    pub(crate) initial: Duration,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

/// Smoothed RTT and its variance, and the retransmission timeout derived
/// from them: `SRTT + 4·RTTVAR`, clamped to `[min_rto, max_rto]`. Holds
/// the samples only (one cache line), not the bounds.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    smoothed: Option<Duration>,
    variance: Duration,
    /// Smallest sample of the current window and of the one before, in
    /// microseconds ([`NO_MIN`]: none); with `window_start`, the size of
    /// one `Option<Duration>`.
    min_current_us: u32,
    min_previous_us: u32,
    window_start: Stamp,
    latest: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self {
            smoothed: None,
            variance: Duration::ZERO,
            min_current_us: NO_MIN,
            min_previous_us: NO_MIN,
            window_start: Stamp::default(),
            latest: Duration::ZERO,
        }
    }
}

impl RttEstimator {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Feeds one sample (already corrected for the peer's ack delay) taken
    /// at `now`.
    pub(crate) fn on_sample(&mut self, sample: Duration, now: Stamp) {
        self.latest = sample;
        if now.saturating_duration_since(self.window_start) >= MIN_RTT_WINDOW {
            self.min_previous_us = self.min_current_us;
            self.min_current_us = NO_MIN;
            self.window_start = now;
        }
        let us = u32::try_from(sample.as_micros()).map_or(NO_MIN - 1, |us| us.min(NO_MIN - 1));
        self.min_current_us = self.min_current_us.min(us);
        match self.smoothed {
            None => {
                self.smoothed = Some(sample);
                self.variance = sample / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(sample);
                // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|; SRTT = 7/8 SRTT + 1/8 R
                self.variance = (self.variance * 3 + delta) / 4;
                self.smoothed = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    /// Smoothed RTT (zero before the first sample).
    pub(crate) fn smoothed(&self) -> Duration {
        self.smoothed.unwrap_or(Duration::ZERO)
    }

    pub(crate) fn variance(&self) -> Duration {
        self.variance
    }

    /// The smallest sample of the last one to two [`MIN_RTT_WINDOW`]s.
    pub(crate) fn min(&self) -> Option<Duration> {
        let us = self.min_current_us.min(self.min_previous_us);
        (us != NO_MIN).then(|| Duration::from_micros(u64::from(us)))
    }

    /// Retransmission timeout before backoff.
    pub(crate) fn rto(&self, bounds: &RtoBounds) -> Duration {
        match self.smoothed {
            None => bounds.initial,
            Some(srtt) => (srtt + self.variance * 4).clamp(bounds.min, bounds.max),
        }
    }

    /// Retransmission timeout after `attempts` unanswered transmissions:
    /// doubled per attempt, capped at `max_rto`.
    pub(crate) fn backed_off_rto(&self, attempts: u8, bounds: &RtoBounds) -> Duration {
        let factor = 1u32 << attempts.min(16);
        self.rto(bounds).saturating_mul(factor).min(bounds.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    const BOUNDS: RtoBounds = RtoBounds {
        initial: Duration::from_millis(250),
        min: Duration::from_millis(25),
        max: Duration::from_millis(2000),
    };

    #[test]
    fn follows_rfc_6298() {
        let mut rtt = RttEstimator::new();
        assert_eq!(rtt.rto(&BOUNDS), ms(250));
        rtt.on_sample(ms(100), Stamp::ZERO);
        assert_eq!(rtt.smoothed(), ms(100));
        assert_eq!(rtt.variance(), ms(50));
        assert_eq!(rtt.rto(&BOUNDS), ms(300));
        rtt.on_sample(ms(180), Stamp::ZERO);
        // RTTVAR = (3*50 + 80)/4 = 57.5; SRTT = (7*100 + 180)/8 = 110
        assert_eq!(rtt.variance(), Duration::from_micros(57_500));
        assert_eq!(rtt.smoothed(), ms(110));
        assert_eq!(rtt.min(), Some(ms(100)));
    }

    #[test]
    fn the_minimum_forgets_samples_two_windows_old() {
        let mut rtt = RttEstimator::new();
        let at = |s: u64| Stamp::ZERO + Duration::from_secs(s);
        rtt.on_sample(ms(10), at(0));
        rtt.on_sample(ms(120), at(5));
        assert_eq!(rtt.min(), Some(ms(10)));
        rtt.on_sample(ms(120), at(12));
        assert_eq!(rtt.min(), Some(ms(10)), "the window before still counts");
        rtt.on_sample(ms(125), at(23));
        assert_eq!(rtt.min(), Some(ms(120)), "the longer path is the base now");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut rtt = RttEstimator::new();
        rtt.on_sample(ms(40), Stamp::ZERO);
        rtt.on_sample(ms(40), Stamp::ZERO);
        let base = rtt.rto(&BOUNDS);
        assert_eq!(rtt.backed_off_rto(1, &BOUNDS), base * 2);
        assert_eq!(rtt.backed_off_rto(2, &BOUNDS), base * 4);
        assert_eq!(rtt.backed_off_rto(200, &BOUNDS), ms(2000));
    }

    #[test]
    fn floor_applies_on_fast_links() {
        let mut rtt = RttEstimator::new();
        for _ in 0..50 {
            rtt.on_sample(Duration::from_micros(10), Stamp::ZERO);
        }
        assert_eq!(rtt.rto(&BOUNDS), ms(25));
    }
}
