//! The metric registry: named families of counters, gauges and histograms,
//! updated lock-free from the tick and read by the HTTP thread.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Why a metric could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}")]
    InvalidName(String),
    /// A label name does not match `[a-zA-Z_][a-zA-Z0-9_]*`, starts with
    /// `__`, or is `le` on a histogram.
    #[error("invalid label name {label:?} on metric {metric:?}")]
    InvalidLabel {
        /// The metric being registered.
        metric: String,
        /// The offending label name.
        label: String,
    },
    /// The name is already registered as another kind of metric.
    #[error("metric {name:?} is already registered as a {registered}, not a {requested}")]
    KindMismatch {
        /// The metric name.
        name: String,
        /// The kind it was registered with first.
        registered: MetricKind,
        /// The kind asked for now.
        requested: MetricKind,
    },
    /// A label name is given twice in one series: Prometheus refuses the
    /// whole scrape over such a sample.
    #[error("label {label:?} is given more than once on metric {metric:?}")]
    DuplicateLabel {
        /// The metric being registered.
        metric: String,
        /// The label name given twice.
        label: String,
    },
    /// A histogram's sample name (its name and `_bucket`, `_sum` or
    /// `_count`) would also be another family's name, in either order of
    /// registration: a counter or gauge would export a duplicate sample,
    /// and a text-format parser would take a histogram so named for a
    /// sample of the other.
    #[error(
        "metric {name:?} clashes with metric {other:?}: {sample:?} would be both a histogram's \
         sample (its _bucket, _sum or _count) and a metric's name"
    )]
    NameClash {
        /// The metric being registered.
        name: String,
        /// The family registered already.
        other: String,
        /// The name both would claim.
        sample: String,
    },
    /// Histogram bucket bounds must be finite, non-empty and strictly increasing.
    #[error("invalid histogram buckets for {0:?}: need finite, strictly increasing bounds")]
    InvalidBuckets(String),
    /// A value made elsewhere cannot be exported under a name that
    /// exports another one already.
    #[error("metric {0:?} already exports another value")]
    AlreadyRegistered(String),
}

/// The kind of a metric family, as named in the Prometheus `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonically increasing count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted into cumulative buckets, with a sum.
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

impl std::fmt::Display for MetricKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A monotonically increasing counter. Cloning shares the value.
///
/// `Counter::default()` is detached: it counts but is exported nowhere,
/// which is what a plugin falls back to when registration failed.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that can go up and down, stored as an `f64`. Cloning shares the
/// value; `Gauge::default()` is detached (see [`Counter`]).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: f64) {
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct HistogramCore {
    /// Upper bounds, strictly increasing; the implicit last bucket is `+Inf`.
    bounds: Box<[f64]>,
    /// One count per bound plus one for `+Inf`; not cumulative.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

/// A histogram with fixed bucket bounds: observing is a bucket search and two
/// atomic adds, no allocation. Cloning shares the buckets.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the finite buckets.
    pub bounds: Vec<f64>,
    /// Cumulative counts, one per bound, then one for `+Inf`.
    pub cumulative: Vec<u64>,
    /// Sum of all observed values.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Total number of observations.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Histogram {
    /// A detached histogram (exported nowhere) with the given bounds.
    ///
    /// # Errors
    /// [`MetricError::InvalidBuckets`] unless the bounds are finite, non-empty
    /// and strictly increasing.
    pub fn detached(bounds: &[f64]) -> Result<Self, MetricError> {
        Self::new("detached", bounds)
    }

    fn new(name: &str, bounds: &[f64]) -> Result<Self, MetricError> {
        let valid = !bounds.is_empty()
            && bounds.iter().all(|b| b.is_finite())
            && bounds.windows(2).all(|w| w[0] < w[1]);
        if !valid {
            return Err(MetricError::InvalidBuckets(name.to_owned()));
        }
        Ok(Self(Arc::new(HistogramCore {
            bounds: bounds.into(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        })))
    }

    /// Records one observation. NaN is ignored.
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let core = &self.0;
        let index = core.bounds.partition_point(|&bound| bound < value);
        core.counts[index].fetch_add(1, Ordering::Relaxed);
        let _ = core
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Copies the current state.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let core = &self.0;
        let mut running = 0;
        let cumulative = core
            .counts
            .iter()
            .map(|count| {
                running += count.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            bounds: core.bounds.to_vec(),
            cumulative,
            sum: f64::from_bits(core.sum_bits.load(Ordering::Relaxed)),
        }
    }
}

/// `count` buckets starting at `start`, each `factor` times the previous,
/// rounded to 12 significant digits: the `le` labels read as written
/// (`0.016`, not the `0.016000000000000014` that repeated multiplication
/// by √2 gives), so a query can name a bound.
pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    (0..count)
        .map(|i| {
            let exact = start * factor.powi(i32::try_from(i).unwrap_or(i32::MAX));
            format!("{exact:.11e}").parse().unwrap_or(exact)
        })
        .collect()
}

#[derive(Debug)]
enum SeriesValue {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Series {
    labels: Vec<(String, String)>,
    value: SeriesValue,
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: MetricKind,
    series: Vec<Series>,
}

/// A set of metric families, rendered in the Prometheus text exposition
/// format by [`Registry::render`].
///
/// Registering is for startup (it takes a lock); updating a handle is a
/// relaxed atomic operation and never blocks. Registering the same name and
/// labels twice returns the same underlying value, so plugins may register
/// idempotently; a name re-registered as another kind is an error, as is a
/// label name given twice in one series or a name that is one of a
/// histogram's sample names (see [`MetricError::NameClash`]).
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

impl Registry {
    /// Registers (or finds) a counter without labels.
    ///
    /// # Errors
    /// See [`MetricError`].
    pub fn counter(&self, name: &str, help: &str) -> Result<Counter, MetricError> {
        self.counter_with_labels(name, help, &[])
    }

    /// Registers (or finds) one labelled series of a counter family, e.g.
    /// `net_drops_total{reason="queue_full"}`.
    ///
    /// # Errors
    /// See [`MetricError`].
    pub fn counter_with_labels(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Counter, MetricError> {
        let value = self.register(name, help, MetricKind::Counter, labels, || {
            Ok(SeriesValue::Counter(Counter::default()))
        })?;
        match value {
            SeriesValue::Counter(c) => Ok(c),
            _ => unreachable_kind(name, MetricKind::Counter),
        }
    }

    /// Exports `counter`, made before the registry (a process-wide count
    /// such as the log lines dropped), under `name` without labels.
    ///
    /// # Errors
    /// See [`MetricError`]; [`MetricError::AlreadyRegistered`] when `name`
    /// exports another value already.
    pub fn adopt_counter(
        &self,
        name: &str,
        help: &str,
        counter: &Counter,
    ) -> Result<(), MetricError> {
        let value = self.register(name, help, MetricKind::Counter, &[], || {
            Ok(SeriesValue::Counter(counter.clone()))
        })?;
        match value {
            SeriesValue::Counter(c) if Arc::ptr_eq(&c.0, &counter.0) => Ok(()),
            _ => Err(MetricError::AlreadyRegistered(name.to_owned())),
        }
    }

    /// Registers (or finds) a gauge without labels.
    ///
    /// # Errors
    /// See [`MetricError`].
    pub fn gauge(&self, name: &str, help: &str) -> Result<Gauge, MetricError> {
        self.gauge_with_labels(name, help, &[])
    }

    /// Registers (or finds) one labelled series of a gauge family.
    ///
    /// # Errors
    /// See [`MetricError`].
    pub fn gauge_with_labels(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Gauge, MetricError> {
        let value = self.register(name, help, MetricKind::Gauge, labels, || {
            Ok(SeriesValue::Gauge(Gauge::default()))
        })?;
        match value {
            SeriesValue::Gauge(g) => Ok(g),
            _ => unreachable_kind(name, MetricKind::Gauge),
        }
    }

    /// Registers (or finds) a histogram without labels. `bounds` are the
    /// finite bucket upper bounds; `+Inf` is implicit. When the series exists
    /// already, its original bounds are kept.
    ///
    /// # Errors
    /// See [`MetricError`].
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        bounds: &[f64],
    ) -> Result<Histogram, MetricError> {
        self.histogram_with_labels(name, help, &[], bounds)
    }

    /// Registers (or finds) one labelled series of a histogram family.
    ///
    /// # Errors
    /// See [`MetricError`].
    pub fn histogram_with_labels(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) -> Result<Histogram, MetricError> {
        let value = self.register(name, help, MetricKind::Histogram, labels, || {
            Histogram::new(name, bounds).map(SeriesValue::Histogram)
        })?;
        match value {
            SeriesValue::Histogram(h) => Ok(h),
            _ => unreachable_kind(name, MetricKind::Histogram),
        }
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Result<SeriesValue, MetricError>,
    ) -> Result<SeriesValue, MetricError> {
        if !is_metric_name(name) {
            return Err(MetricError::InvalidName(name.to_owned()));
        }
        for (label, _) in labels {
            let reserved =
                label.starts_with("__") || (kind == MetricKind::Histogram && *label == "le");
            if !is_label_name(label) || reserved {
                return Err(MetricError::InvalidLabel {
                    metric: name.to_owned(),
                    label: (*label).to_owned(),
                });
            }
        }
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        if let Some(pair) = labels.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(MetricError::DuplicateLabel {
                metric: name.to_owned(),
                label: pair[0].0.clone(),
            });
        }

        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let index = match families.iter().position(|f| f.name == name) {
            Some(index) => index,
            None => {
                if let Some(other) = families
                    .iter()
                    .find_map(|f| name_clash(name, kind, &f.name, f.kind))
                {
                    return Err(other);
                }
                families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    series: Vec::new(),
                });
                families.len() - 1
            }
        };
        let family = &mut families[index];
        if family.kind != kind {
            return Err(MetricError::KindMismatch {
                name: name.to_owned(),
                registered: family.kind,
                requested: kind,
            });
        }
        if let Some(series) = family.series.iter().find(|s| s.labels == labels) {
            return Ok(series.value.share());
        }
        let value = match make() {
            Ok(value) => value,
            Err(error) => {
                if family.series.is_empty() {
                    families.remove(index);
                }
                return Err(error);
            }
        };
        let shared = value.share();
        family.series.push(Series { labels, value });
        Ok(shared)
    }

    /// Renders every family in the Prometheus text exposition format 0.0.4
    /// into `out` (appending), in registration order.
    pub fn render(&self, out: &mut String) {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        for family in families.iter() {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            for series in &family.series {
                match &series.value {
                    SeriesValue::Counter(c) => {
                        write_sample(out, &family.name, "", &series.labels, None);
                        let _ = writeln!(out, " {}", c.get());
                    }
                    SeriesValue::Gauge(g) => {
                        write_sample(out, &family.name, "", &series.labels, None);
                        let _ = writeln!(out, " {}", PromFloat(g.get()));
                    }
                    SeriesValue::Histogram(h) => {
                        let snapshot = h.snapshot();
                        let bounds = snapshot.bounds.iter().copied().chain([f64::INFINITY]);
                        for (bound, count) in bounds.zip(&snapshot.cumulative) {
                            write_sample(out, &family.name, "_bucket", &series.labels, Some(bound));
                            let _ = writeln!(out, " {count}");
                        }
                        write_sample(out, &family.name, "_sum", &series.labels, None);
                        let _ = writeln!(out, " {}", PromFloat(snapshot.sum));
                        write_sample(out, &family.name, "_count", &series.labels, None);
                        let _ = writeln!(out, " {}", snapshot.count());
                    }
                }
            }
        }
    }
}

impl SeriesValue {
    fn share(&self) -> Self {
        match self {
            Self::Counter(c) => Self::Counter(c.clone()),
            Self::Gauge(g) => Self::Gauge(g.clone()),
            Self::Histogram(h) => Self::Histogram(h.clone()),
        }
    }
}

/// The suffixes of the samples a histogram family exports.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// The error for a new family `name` of `kind` one of whose names (its
/// own, and for a histogram those of its samples) is a name of the family
/// `other` of `other_kind`, if one is: a histogram exports
/// `{name}_bucket`, `{name}_sum` and `{name}_count`, a counter or gauge
/// `{name}` only (and no two families share a name).
fn name_clash(
    name: &str,
    kind: MetricKind,
    other: &str,
    other_kind: MetricKind,
) -> Option<MetricError> {
    let is_sample_of = |histogram: &str, sample: &str| {
        sample
            .strip_prefix(histogram)
            .is_some_and(|suffix| HISTOGRAM_SUFFIXES.contains(&suffix))
    };
    let histogram = MetricKind::Histogram;
    let sample = if kind == histogram && is_sample_of(name, other) {
        other
    } else if other_kind == histogram && is_sample_of(other, name) {
        name
    } else {
        return None;
    };
    Some(MetricError::NameClash {
        name: name.to_owned(),
        other: other.to_owned(),
        sample: sample.to_owned(),
    })
}

fn unreachable_kind<T>(name: &str, requested: MetricKind) -> Result<T, MetricError> {
    // `register` checked the family kind, so a series of another kind cannot
    // be found; report it as a mismatch rather than panicking.
    Err(MetricError::KindMismatch {
        name: name.to_owned(),
        registered: requested,
        requested,
    })
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    le: Option<f64>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (key, value) in labels {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{key}=\"{}\"", escape_label_value(value));
    }
    if let Some(le) = le {
        if !first {
            out.push(',');
        }
        let _ = write!(out, "le=\"{}\"", PromFloat(le));
    }
    out.push('}');
}

/// Formats an `f64` the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`).
struct PromFloat(f64);

impl std::fmt::Display for PromFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_prometheus_text_format() {
        let registry = Registry::default();
        let ticks = registry.counter("ticks_total", "Ticks run.").unwrap();
        let clients = registry.gauge("clients", "Connected clients.").unwrap();
        let rtt = registry
            .histogram("rtt_seconds", "Round-trip time.", &[0.01, 0.1])
            .unwrap();
        ticks.add(3);
        clients.set(2.0);
        rtt.observe(0.005);
        rtt.observe(0.05);
        rtt.observe(5.0);

        let mut out = String::new();
        registry.render(&mut out);
        let expected = "\
# HELP ticks_total Ticks run.
# TYPE ticks_total counter
ticks_total 3
# HELP clients Connected clients.
# TYPE clients gauge
clients 2
# HELP rtt_seconds Round-trip time.
# TYPE rtt_seconds histogram
rtt_seconds_bucket{le=\"0.01\"} 1
rtt_seconds_bucket{le=\"0.1\"} 2
rtt_seconds_bucket{le=\"+Inf\"} 3
rtt_seconds_sum 5.055
rtt_seconds_count 3
";
        assert_eq!(out, expected);
    }

    /// The tick histogram's bounds in steps of √2 were labelled
    /// `le="0.016000000000000014"`: a query for the 16 ms bucket found
    /// no series.
    #[test]
    fn bucket_labels_read_as_the_bounds_they_stand_for() {
        let registry = Registry::default();
        let bounds = exponential_buckets(0.000_25, std::f64::consts::SQRT_2, 26);
        registry
            .histogram("tick_seconds", "Ticks.", &bounds)
            .unwrap();
        let mut out = String::new();
        registry.render(&mut out);
        for le in ["0.0005", "0.001", "0.008", "0.016", "0.032", "1.024"] {
            assert!(out.contains(&format!("le=\"{le}\"")), "{le} in {out}");
        }
        for line in out.lines().filter(|l| l.contains("le=")) {
            let le = line.split('"').nth(1).unwrap();
            let digits = le.chars().filter(char::is_ascii_digit).count();
            assert!(digits <= 16, "{line}");
        }
        assert_eq!(
            exponential_buckets(0.001, 2.0, 3),
            [0.001, 0.002, 0.004],
            "a factor of 2 as before"
        );
    }

    #[test]
    fn labelled_series_share_one_family_and_escape_values() {
        let registry = Registry::default();
        let full = registry
            .counter_with_labels(
                "drops_total",
                "Drops by reason.",
                &[("reason", "queue \"full\"")],
            )
            .unwrap();
        let bad = registry
            .counter_with_labels(
                "drops_total",
                "Drops by reason.",
                &[("reason", "bad\\packet")],
            )
            .unwrap();
        full.inc();
        bad.add(2);
        let mut out = String::new();
        registry.render(&mut out);
        assert_eq!(out.matches("# TYPE drops_total counter").count(), 1);
        assert!(out.contains("drops_total{reason=\"queue \\\"full\\\"\"} 1\n"));
        assert!(out.contains("drops_total{reason=\"bad\\\\packet\"} 2\n"));
    }

    #[test]
    fn registering_twice_shares_the_value() {
        let registry = Registry::default();
        let a = registry.counter("x_total", "x").unwrap();
        let b = registry.counter("x_total", "x").unwrap();
        a.inc();
        assert_eq!(b.get(), 1);
    }

    #[test]
    fn an_adopted_counter_is_exported_once() {
        let registry = Registry::default();
        let counter = Counter::default();
        counter.add(2);
        registry.adopt_counter("kept_total", "k", &counter).unwrap();
        registry.adopt_counter("kept_total", "k", &counter).unwrap();
        counter.inc();
        let mut out = String::new();
        registry.render(&mut out);
        assert_eq!(out.matches("kept_total 3\n").count(), 1, "{out}");
        assert_eq!(
            registry.adopt_counter("kept_total", "k", &Counter::default()),
            Err(MetricError::AlreadyRegistered("kept_total".into()))
        );
        registry.gauge("level", "l").unwrap();
        assert!(matches!(
            registry.adopt_counter("level", "l", &counter),
            Err(MetricError::KindMismatch { .. })
        ));
    }

    #[test]
    fn registration_mistakes_are_errors() {
        let registry = Registry::default();
        registry.counter("x_total", "x").unwrap();
        assert_eq!(
            registry.gauge("x_total", "x").unwrap_err(),
            MetricError::KindMismatch {
                name: "x_total".into(),
                registered: MetricKind::Counter,
                requested: MetricKind::Gauge,
            }
        );
        assert_eq!(
            registry.counter("1bad", "x").unwrap_err(),
            MetricError::InvalidName("1bad".into())
        );
        assert!(matches!(
            registry.histogram_with_labels("h", "h", &[("le", "1")], &[1.0]),
            Err(MetricError::InvalidLabel { .. })
        ));
        assert_eq!(
            registry.histogram("h", "h", &[2.0, 1.0]).unwrap_err(),
            MetricError::InvalidBuckets("h".into())
        );
        // A label twice in one series would render `x{a="1",a="2"}`.
        assert_eq!(
            registry
                .counter_with_labels("x_total", "x", &[("a", "1"), ("a", "2")])
                .unwrap_err(),
            MetricError::DuplicateLabel {
                metric: "x_total".into(),
                label: "a".into(),
            }
        );
        assert_eq!(
            registry
                .histogram_with_labels("dup", "d", &[("b", "1"), ("a", "1"), ("b", "1")], &[1.0])
                .unwrap_err()
                .to_string(),
            "label \"b\" is given more than once on metric \"dup\""
        );
        // A histogram's sample names and another family's name, whichever
        // comes first.
        registry.histogram("rtt", "r", &[1.0]).unwrap();
        for sample in ["rtt_count", "rtt_sum", "rtt_bucket"] {
            assert_eq!(
                registry.counter(sample, "c").unwrap_err(),
                MetricError::NameClash {
                    name: sample.into(),
                    other: "rtt".into(),
                    sample: sample.into(),
                }
            );
        }
        assert!(matches!(
            registry.histogram("rtt_sum", "r", &[1.0]),
            Err(MetricError::NameClash { .. })
        ));
        registry.gauge("lag_sum", "l").unwrap();
        assert_eq!(
            registry
                .histogram("lag", "l", &[1.0])
                .unwrap_err()
                .to_string(),
            "metric \"lag\" clashes with metric \"lag_sum\": \"lag_sum\" would be both a \
             histogram's sample (its _bucket, _sum or _count) and a metric's name"
        );
        // Names that only begin like a histogram's samples are fine.
        registry.counter("rtt_counts", "c").unwrap();
        registry.counter("rtt_total", "c").unwrap();
        registry.histogram("rtt_sum_seconds", "r", &[1.0]).unwrap();
        // A failed registration leaves no empty family behind.
        let mut out = String::new();
        registry.render(&mut out);
        for refused in ["h", "dup", "rtt_count", "rtt_sum", "rtt_bucket", "lag"] {
            assert!(
                !out.contains(&format!("# TYPE {refused} ")),
                "{refused}: {out}"
            );
        }
        assert!(!out.contains("a=\""), "{out}");
    }

    #[test]
    fn histogram_bucket_bounds_are_inclusive_upper_bounds() {
        let h = Histogram::detached(&[1.0, 2.0]).unwrap();
        h.observe(1.0);
        h.observe(2.0);
        h.observe(2.5);
        h.observe(f64::NAN);
        let snapshot = h.snapshot();
        assert_eq!(snapshot.cumulative, vec![1, 2, 3]);
        assert_eq!(snapshot.count(), 3);
        assert_eq!(snapshot.sum, 5.5);
    }

    #[test]
    fn gauge_add_accumulates() {
        let g = Gauge::default();
        g.add(2.5);
        g.add(-1.0);
        assert_eq!(g.get(), 1.5);
    }
}
