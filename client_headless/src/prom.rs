//! The server's Prometheus metrics: a bounded HTTP/1.0 GET, the few series
//! the report needs, and percentiles from histogram buckets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The tick duration histogram (seconds) of the server.
pub(crate) const TICK_DURATION: &str = "server_tick_duration_seconds";
/// Ticks that took longer than the tick period.
pub(crate) const TICK_OVERRUNS: &str = "server_tick_overruns_total";
/// Largest metrics page read; the rest is cut off.
const MAX_PAGE_BYTES: u64 = 8 * 1024 * 1024;

/// One scrape of the series the report uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServerSample {
    /// `server_tick_duration_seconds`, if present.
    pub(crate) tick: Option<PromHistogram>,
    /// `server_tick_overruns_total`, if present.
    pub(crate) overruns: Option<f64>,
}

/// A Prometheus histogram: cumulative counts per upper bound, ascending,
/// the last bound being `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PromHistogram {
    /// `(le, cumulative count)`.
    pub(crate) buckets: Vec<(f64, f64)>,
}

impl PromHistogram {
    /// Observations in total.
    pub(crate) fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// Observations above the largest finite bound (only `+Inf` holds
    /// them): [`quantile`](Self::quantile) and [`max`](Self::max) read that
    /// bound for them, however long they were.
    pub(crate) fn beyond_finite(&self) -> f64 {
        let finite = self
            .buckets
            .iter()
            .rev()
            .find(|(le, _)| le.is_finite())
            .map_or(0.0, |b| b.1);
        (self.count() - finite).max(0.0)
    }

    /// The observations made between `earlier` and `self` (bucket-wise
    /// difference; a counter reset, i.e. a restarted server, yields `self`).
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        let same_shape = earlier.buckets.len() == self.buckets.len()
            && earlier
                .buckets
                .iter()
                .zip(&self.buckets)
                .all(|(a, b)| a.0 == b.0 && a.1 <= b.1);
        if !same_shape {
            return self.clone();
        }
        Self {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(now, then)| (now.0, now.1 - then.1))
                .collect(),
        }
    }

    /// The `q` quantile (0..=1) the way Prometheus' `histogram_quantile`
    /// computes it: linear interpolation inside the bucket holding the rank,
    /// the first bucket starting at 0. A rank in the `+Inf` bucket returns
    /// the largest finite bound. `None` without observations.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 || !q.is_finite() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below) / (cumulative - below));
            }
            if le.is_finite() {
                lower = le;
            }
            below = cumulative;
        }
        Some(lower)
    }

    /// An upper estimate of the largest observation: the bound of the
    /// highest non-empty bucket (the largest finite bound for `+Inf`).
    pub(crate) fn max(&self) -> Option<f64> {
        let mut previous = 0.0;
        let mut last_finite = 0.0;
        let mut max = None;
        for &(le, cumulative) in &self.buckets {
            if cumulative > previous {
                max = Some(if le.is_finite() { le } else { last_finite });
            }
            if le.is_finite() {
                last_finite = le;
            }
            previous = cumulative;
        }
        max
    }
}

/// Parses the series of [`ServerSample`] out of a metrics page.
pub(crate) fn parse_sample(text: &str) -> ServerSample {
    ServerSample {
        tick: parse_histogram(text, TICK_DURATION),
        overruns: parse_value(text, TICK_OVERRUNS),
    }
}

/// The unlabelled sample `name value`.
pub(crate) fn parse_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        parse_number(rest.split_whitespace().next()?)
    })
}

/// The histogram `name` (its `name_bucket{le="..."}` lines), sorted by bound.
pub(crate) fn parse_histogram(text: &str, name: &str) -> Option<PromHistogram> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(prefix.as_str())?;
            let (labels, value) = rest.split_once('}')?;
            let le = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le=\""))?
                .strip_suffix('"')?;
            Some((
                parse_number(le)?,
                parse_number(value.split_whitespace().next()?)?,
            ))
        })
        .collect();
    if buckets.is_empty() {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(PromHistogram { buckets })
}

fn parse_number(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// The server's metrics page: its URL, split once, and the addresses its
/// host resolved to, kept for every later fetch: a slow resolver delays at
/// most the fetches made before its first answer, not every one of the run.
pub(crate) struct MetricsTarget {
    url: String,
    /// `host:port`: what is resolved, and the `Host` header.
    authority: String,
    path: String,
    /// The host's addresses, once a resolution succeeded.
    addrs: Option<Vec<SocketAddr>>,
    /// The answer of the resolution still running, if any (one at a time).
    resolving: Option<Receiver<std::io::Result<Vec<SocketAddr>>>>,
}

impl MetricsTarget {
    /// Splits `url` (plain `http://host:port/path`; port 80 when it is
    /// left out, `/metrics` when the path is); an error sentence when it is
    /// not such a URL.
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        // A port follows the last colon, past an IPv6 literal's brackets.
        let port = authority
            .rfind(':')
            .filter(|&i| !authority[i..].contains(']'))
            .map(|i| &authority[i + 1..]);
        if authority.is_empty() || authority.starts_with(':') {
            return Err(format!("{url}: no host"));
        }
        if let Some(port) = port
            && port.parse::<u16>().map_or(true, |p| p == 0)
        {
            return Err(format!("{url}: the port must be 1 to 65535, not {port:?}"));
        }
        let has_port = port.is_some();
        Ok(Self {
            url: url.to_owned(),
            authority: if has_port {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            },
            path: path.to_owned(),
            addrs: None,
            resolving: None,
        })
    }

    /// Fetches the page within `timeout`; see [`fetch_with`](Self::fetch_with).
    pub(crate) fn fetch(&mut self, timeout: Duration) -> Result<String, String> {
        self.fetch_with(timeout, resolve_host)
    }

    /// Resolves the host before the first fetch, waiting for it up to
    /// `within` where a fetch waits only within its own timeout: called
    /// before a run, so that a slow but working resolver does not cost the
    /// run its first scrape. A resolution that fails, or is still running
    /// by then, is left to the fetches.
    pub(crate) fn resolve_within(&mut self, within: Duration) {
        self.resolve_ahead(within, resolve_host);
    }

    /// [`resolve_within`](Self::resolve_within) with `resolve`.
    fn resolve_ahead<R>(&mut self, within: Duration, resolve: R)
    where
        R: FnOnce(&str) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
    {
        if self.addrs.is_none()
            && let Ok(addrs) = self.resolution(Instant::now() + within, resolve)
        {
            self.addrs = Some(addrs);
        }
    }

    /// Fetches the page within `timeout`, resolution included (a slow
    /// resolver or a slow answer cannot hold it longer), trying each address
    /// of the host in turn (`localhost` may be `::1` first, and the server
    /// on 127.0.0.1 only); the body of a `200` answer, or a sentence saying
    /// what failed. The host is resolved once, by `resolve` on a thread of
    /// its own, at the first fetch (and again at the next only when that
    /// resolution failed): a fetch whose timeout passes while it runs fails,
    /// and the next one waits for the same resolution. The thread ends when
    /// `resolve` returns.
    fn fetch_with<R>(&mut self, timeout: Duration, resolve: R) -> Result<String, String>
    where
        R: FnOnce(&str) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
    {
        let deadline = Instant::now() + timeout;
        let addrs = match self.addrs.take() {
            Some(addrs) => addrs,
            None => self
                .resolution(deadline, resolve)
                .map_err(|e| format!("{}: {e}", self.url))?,
        };
        let url = &self.url;
        let addrs = self.addrs.insert(addrs);
        let mut stream = connect(addrs, deadline).map_err(|e| format!("{url}: {e}"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| format!("{url}: {e}"))?;
        write!(
            stream,
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            self.path, self.authority
        )
        .map_err(|e| format!("{url}: {e}"))?;
        let mut body = Vec::new();
        ByDeadline { stream, deadline }
            .take(MAX_PAGE_BYTES)
            .read_to_end(&mut body)
            .map_err(|e| format!("{url}: {e}"))?;
        let text = String::from_utf8_lossy(&body);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{url}: not an HTTP response"))?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("{url}: {status}"));
        }
        Ok(body.to_owned())
    }

    /// The host's addresses by `deadline`: the answer of the resolution
    /// already running, or else of one started now with `resolve`.
    fn resolution<R>(&mut self, deadline: Instant, resolve: R) -> Result<Vec<SocketAddr>, String>
    where
        R: FnOnce(&str) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
    {
        let answer = match self.resolving.take() {
            Some(answer) => answer,
            None => {
                let (send, answer) = mpsc::sync_channel(1);
                let authority = self.authority.clone();
                std::thread::Builder::new()
                    .name("metrics-resolver".to_owned())
                    .spawn(move || {
                        // A send fails only when the target is gone: nobody
                        // is left to tell.
                        let _ = send.send(resolve(&authority));
                    })
                    .map_err(|e| format!("cannot start a resolver thread: {e}"))?;
                answer
            }
        };
        match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(resolved) => resolved.map_err(|e| e.to_string()),
            Err(RecvTimeoutError::Timeout) => {
                self.resolving = Some(answer);
                Err("the host name is still resolving".to_owned())
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err("the resolver stopped without an answer".to_owned())
            }
        }
    }
}

/// The addresses `authority` (`host:port`) resolves to, by the system's
/// resolver.
fn resolve_host(authority: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(authority.to_socket_addrs()?.collect())
}

/// A connection to the first of `addrs` (a host name's, in the order
/// they resolved) that takes one by `deadline`, each tried in turn with
/// what is left of the time; the error names every address that failed.
fn connect(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, String> {
    let mut failed = Vec::new();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failed.push(format!("{addr}: not tried, the timeout passed"));
            break;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(stream) => return Ok(stream),
            Err(error) => failed.push(format!("{addr}: {error}")),
        }
    }
    if failed.is_empty() {
        return Err("no address".to_owned());
    }
    Err(failed.join("; "))
}

/// A stream whose reads end, timed out, at a deadline.
struct ByDeadline {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for ByDeadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the answer took longer than the timeout",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const PAGE: &str = "\
# HELP server_tick_duration_seconds Wall-clock time spent in one tick (one app update).
# TYPE server_tick_duration_seconds histogram
server_tick_duration_seconds_bucket{le=\"0.001\"} 50
server_tick_duration_seconds_bucket{le=\"0.002\"} 90
server_tick_duration_seconds_bucket{le=\"0.004\"} 100
server_tick_duration_seconds_bucket{le=\"+Inf\"} 100
server_tick_duration_seconds_sum 0.1
server_tick_duration_seconds_count 100
# TYPE server_tick_overruns_total counter
server_tick_overruns_total 3
server_ticks_total 100
";

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn percentiles_interpolate_inside_the_bucket_like_prometheus() {
        let sample = parse_sample(PAGE);
        let tick = sample.tick.unwrap();
        assert_eq!(tick.count(), 100.0);
        // rank 50 is the top of the first bucket [0, 1 ms].
        assert!(close(tick.quantile(0.5), 0.001));
        // rank 25 is half way into the first bucket.
        assert!(close(tick.quantile(0.25), 0.0005));
        // rank 70: 20 of the 40 in (1, 2] ms.
        assert!(close(tick.quantile(0.7), 0.0015));
        // rank 99: 9 of the 10 in (2, 4] ms.
        assert!(close(tick.quantile(0.99), 0.0038));
        assert!(close(tick.max(), 0.004));
        assert_eq!(sample.overruns, Some(3.0));
    }

    #[test]
    fn ranks_in_the_infinite_bucket_report_the_largest_finite_bound() {
        let h = PromHistogram {
            buckets: vec![(0.01, 1.0), (0.1, 1.0), (f64::INFINITY, 10.0)],
        };
        assert!(close(h.quantile(0.99), 0.1));
        assert!(close(h.max(), 0.1));
        assert_eq!(h.beyond_finite(), 9.0);
        let within = PromHistogram {
            buckets: vec![(0.01, 1.0), (0.1, 4.0), (f64::INFINITY, 4.0)],
        };
        assert_eq!(within.beyond_finite(), 0.0);
    }

    #[test]
    fn empty_histograms_have_no_percentiles() {
        let h = PromHistogram {
            buckets: vec![(0.01, 0.0), (f64::INFINITY, 0.0)],
        };
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_scrapes() {
        let before = PromHistogram {
            buckets: vec![(0.001, 10.0), (0.002, 10.0), (f64::INFINITY, 10.0)],
        };
        let after = PromHistogram {
            buckets: vec![(0.001, 10.0), (0.002, 20.0), (f64::INFINITY, 20.0)],
        };
        let window = after.since(&before);
        assert_eq!(window.count(), 10.0);
        // All ten new ticks were in (1, 2] ms.
        assert!(close(window.quantile(0.5), 0.0015));
        // A restarted server (counts went down) gives the new page as is.
        assert_eq!(before.since(&after), before);
    }

    #[test]
    fn missing_series_are_none_and_similar_names_do_not_match() {
        let sample = parse_sample("server_tick_overruns_total_other 5\n");
        assert_eq!(sample, ServerSample::default());
    }

    /// A server that answers a byte at a time, each well within the
    /// timeout, must not hold a scrape past it.
    #[test]
    fn the_timeout_bounds_the_whole_fetch_not_each_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for byte in b"HTTP/1.0 200 OK\r\n\r\n".iter().cycle() {
                std::thread::sleep(Duration::from_millis(50));
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
            }
        });
        let start = std::time::Instant::now();
        let outcome = MetricsTarget::new(&url)
            .unwrap()
            .fetch(Duration::from_millis(300));
        let took = start.elapsed();
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn a_url_without_a_port_is_port_80() {
        for (url, authority, path) in [
            ("http://127.0.0.1/metrics", "127.0.0.1:80", "/metrics"),
            ("http://[::1]/m", "[::1]:80", "/m"),
            ("http://[::1]:9100", "[::1]:9100", "/metrics"),
            ("http://metrics.test:9100/x", "metrics.test:9100", "/x"),
            ("http://metrics.test", "metrics.test:80", "/metrics"),
        ] {
            let target = MetricsTarget::new(url).unwrap();
            assert_eq!((&*target.authority, &*target.path), (authority, path));
        }
        for bad in [
            "https://127.0.0.1/metrics",
            "127.0.0.1:9100",
            "http:///metrics",
            "http://127.0.0.1:/metrics",
            "http://h:abc/",
            "http://h:99999/",
            "http://[::1]:0/",
        ] {
            assert!(MetricsTarget::new(bad).is_err(), "{bad}");
        }
    }

    /// `localhost` may resolve to `::1` first, and a server listening on
    /// 127.0.0.1 only: an address that refuses is not the end.
    #[test]
    fn every_resolved_address_is_tried_in_turn() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = connect(&[closed, live.local_addr().unwrap()], deadline).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live.local_addr().unwrap());
        let error = connect(&[closed], deadline).unwrap_err();
        assert!(error.contains(&closed.to_string()), "{error}");
        assert_eq!(connect(&[], deadline).unwrap_err(), "no address");
    }

    /// A metrics server on 127.0.0.1 that answers [`PAGE`] to every
    /// request.
    /// Reads a request's head off `stream` before it is answered: a socket
    /// closed with unread bytes resets the connection, answer and all.
    pub(crate) fn read_request(stream: &mut TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0; 256];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    }

    fn serve_pages() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                read_request(&mut stream);
                let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{PAGE}");
            }
        });
        addr
    }

    /// A resolver that counts its calls in `calls` and answers `answer`.
    fn counting(
        calls: &Arc<AtomicUsize>,
        answer: std::io::Result<Vec<SocketAddr>>,
    ) -> impl FnOnce(&str) -> std::io::Result<Vec<SocketAddr>> + Send + 'static {
        let calls = Arc::clone(calls);
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            answer
        }
    }

    /// A resolver slower than a scrape's timeout but answering: resolved
    /// ahead of the run, within its longer wait, the first scrape finds
    /// the addresses and does not resolve again.
    #[test]
    fn a_slow_resolver_answered_ahead_of_the_run_costs_no_scrape() {
        let server = serve_pages();
        let mut target = MetricsTarget::new("http://metrics.test:9100/metrics").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = {
            let calls = Arc::clone(&calls);
            move |_: &str| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                Ok(vec![server])
            }
        };
        target.resolve_ahead(Duration::from_secs(5), slow);
        let page = target.fetch_with(
            Duration::from_millis(100),
            counting(&calls, Ok(vec![server])),
        );
        assert_eq!(page.as_deref(), Ok(PAGE));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A resolver whose DNS server does not answer must not hold every
    /// scrape of the run: the host resolves once, for all of them.
    #[test]
    fn the_host_is_resolved_once_for_every_scrape() {
        let server = serve_pages();
        let mut target = MetricsTarget::new("http://metrics.test:9100/metrics").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let page =
                target.fetch_with(Duration::from_secs(5), counting(&calls, Ok(vec![server])));
            assert_eq!(page.as_deref(), Ok(PAGE));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A resolution that failed is no answer to keep: the next scrape asks
    /// again.
    #[test]
    fn a_failed_resolution_is_tried_again_by_the_next_scrape() {
        let server = serve_pages();
        let mut target = MetricsTarget::new("http://metrics.test:9100/metrics").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let refused = std::io::Error::other("no such host");
        let error = target
            .fetch_with(Duration::from_secs(5), counting(&calls, Err(refused)))
            .unwrap_err();
        assert!(error.contains("no such host"), "{error}");
        let page = target.fetch_with(Duration::from_secs(5), counting(&calls, Ok(vec![server])));
        assert_eq!(page.as_deref(), Ok(PAGE));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A resolver that does not answer holds no scrape past its timeout,
    /// and the scrapes after it wait for the same resolution, not one each.
    #[test]
    fn a_resolver_that_does_not_answer_holds_no_scrape_past_its_timeout() {
        let server = serve_pages();
        let mut target = MetricsTarget::new("http://metrics.test:9100/metrics").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, held) = std::sync::mpsc::sync_channel::<()>(1);
        let slow = {
            let calls = Arc::clone(&calls);
            move |_: &str| {
                calls.fetch_add(1, Ordering::SeqCst);
                // Bounded, so that a resolution made inline fails the test
                // rather than hanging it.
                let _ = held.recv_timeout(Duration::from_secs(10));
                Ok(vec![server])
            }
        };
        let start = Instant::now();
        let error = target
            .fetch_with(Duration::from_millis(100), slow)
            .unwrap_err();
        assert!(error.contains("still resolving"), "{error}");
        let again = target.fetch_with(
            Duration::from_millis(100),
            counting(&calls, Ok(vec![server])),
        );
        assert!(
            again.as_ref().is_err_and(|e| e.contains("still resolving")),
            "{again:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
        release.send(()).unwrap();
        let page = target.fetch_with(Duration::from_secs(5), counting(&calls, Ok(vec![server])));
        assert_eq!(page.as_deref(), Ok(PAGE));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_unreachable_endpoint_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let mut target = MetricsTarget::new(&url).unwrap();
        assert!(target.fetch(Duration::from_millis(500)).is_err());
        assert!(MetricsTarget::new("https://example.invalid/").is_err());
    }
}
