//! The metrics endpoint over real loopback TCP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use server::metrics::{EndpointOptions, FAULT_HOLD, Metrics, MetricsEndpoint};

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

fn request(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    Reply {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

fn start(metrics: &Metrics, options: EndpointOptions) -> MetricsEndpoint {
    MetricsEndpoint::start("127.0.0.1:0".parse().unwrap(), metrics.clone(), options).unwrap()
}

/// Checks the Prometheus text format rules the scraper relies on and returns
/// the samples as (name with labels, value).
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad type line {line:?}"
            );
            assert!(
                helped.last().is_some_and(|h| h == name),
                "TYPE without HELP: {line:?}"
            );
            typed.push((name.to_owned(), kind.to_owned()));
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let name = series.split('{').next().unwrap();
            let (family, kind) = typed.last().expect("sample before any TYPE");
            let ok = match kind.as_str() {
                "histogram" => [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_owned()),
                _ => name == family,
            };
            assert!(ok, "sample {name} outside its family {family}");
            samples.push((series.to_owned(), value));
        }
    }
    samples
}

#[test]
fn metrics_are_served_in_prometheus_text_format() {
    let metrics = Metrics::default();
    let registry = metrics.registry();
    registry
        .counter("test_ticks_total", "Ticks.")
        .unwrap()
        .add(5);
    registry
        .counter_with_labels("test_drops_total", "Drops.", &[("reason", "full")])
        .unwrap()
        .inc();
    registry.gauge("test_clients", "Clients.").unwrap().set(3.0);
    let histogram = registry
        .histogram("test_seconds", "Durations.", &[0.1, 1.0])
        .unwrap();
    histogram.observe(0.05);
    histogram.observe(0.5);
    histogram.observe(2.0);
    let endpoint = start(&metrics, EndpointOptions::default());

    let reply = get(endpoint.local_addr(), "/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .headers
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        reply.headers
    );
    assert!(
        reply
            .headers
            .contains(&format!("Content-Length: {}", reply.body.len()))
    );
    let samples = parse_exposition(&reply.body);
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", reply.body))
            .1
    };
    assert_eq!(value("test_ticks_total"), 5.0);
    assert_eq!(value("test_drops_total{reason=\"full\"}"), 1.0);
    assert_eq!(value("test_clients"), 3.0);
    assert_eq!(value("test_seconds_bucket{le=\"0.1\"}"), 1.0);
    assert_eq!(value("test_seconds_bucket{le=\"1\"}"), 2.0);
    assert_eq!(value("test_seconds_bucket{le=\"+Inf\"}"), 3.0);
    assert_eq!(value("test_seconds_count"), 3.0);
    assert_eq!(value("test_seconds_sum"), 2.55);

    // Query strings are ignored.
    assert_eq!(get(endpoint.local_addr(), "/metrics?x=1").status, 200);
}

#[test]
fn healthz_follows_the_tick_heartbeat() {
    let metrics = Metrics::default();
    let endpoint = start(&metrics, EndpointOptions::default());
    let reply = get(endpoint.local_addr(), "/healthz");
    assert_eq!(reply.status, 503, "no tick yet");
    metrics.heartbeat().beat();
    let reply = get(endpoint.local_addr(), "/healthz");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok\n");

    // With a zero age limit every beat is already stale.
    let strict = start(
        &metrics,
        EndpointOptions {
            max_heartbeat_age: Duration::ZERO,
            ..EndpointOptions::default()
        },
    );
    assert_eq!(get(strict.local_addr(), "/healthz").status, 503);
}

/// From the first tick of a shutdown's drain the server turns players
/// away: a load balancer or matchmaker polling `/healthz` must stop
/// sending them, although the tick loop still beats.
#[test]
fn healthz_is_unavailable_once_the_server_shuts_down() {
    let metrics = Metrics::default();
    let endpoint = start(&metrics, EndpointOptions::default());
    metrics.heartbeat().beat();
    assert_eq!(get(endpoint.local_addr(), "/healthz").status, 200);
    metrics.mark_shutting_down();
    metrics.heartbeat().beat();
    let reply = get(endpoint.local_addr(), "/healthz");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "shutting down\n");
}

/// A server whose tick runs but whose store refuses every change is not
/// healthy: a supervisor or load balancer must see it until it recovers.
#[test]
fn healthz_is_unavailable_while_a_fault_stands() {
    let metrics = Metrics::default();
    let endpoint = start(&metrics, EndpointOptions::default());
    metrics.heartbeat().beat();
    metrics.faults().raise(
        "inventory store",
        "the last commit failed: disk full".into(),
        Instant::now(),
    );
    let reply = get(endpoint.local_addr(), "/healthz");
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.body,
        "inventory store: the last commit failed: disk full\n"
    );
    metrics.faults().clear("inventory store");
    assert_eq!(get(endpoint.local_addr(), "/healthz").status, 200);
    // A fault raised long enough ago is no longer news.
    metrics.faults().raise(
        "inventory store",
        "the last commit failed: disk full".into(),
        Instant::now() - FAULT_HOLD,
    );
    assert_eq!(get(endpoint.local_addr(), "/healthz").status, 200);
}

/// A HEAD gets the GET answer's head alone (health probes use it), and a
/// head ended by bare line feeds is read as one.
#[test]
fn head_requests_and_bare_line_feeds_are_served() {
    let metrics = Metrics::default();
    let endpoint = start(&metrics, EndpointOptions::default());
    let addr = endpoint.local_addr();
    let head = request(addr, b"HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{:?}", head.body);
    let length: usize = head
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .expect("a length");
    assert_eq!(length, get(addr, "/metrics").body.len());
    let started = Instant::now();
    let bare = request(addr, b"GET /metrics HTTP/1.1\nHost: test\n\n");
    assert_eq!(bare.status, 200);
    assert!(started.elapsed() < EndpointOptions::default().request_deadline);
}

#[test]
fn other_requests_get_errors() {
    let metrics = Metrics::default();
    let endpoint = start(
        &metrics,
        EndpointOptions {
            max_request_bytes: 256,
            ..EndpointOptions::default()
        },
    );
    let addr = endpoint.local_addr();
    assert_eq!(get(addr, "/").status, 404);
    assert_eq!(get(addr, "/metricsz").status, 404);
    let post = request(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(post.status, 405);
    assert!(
        post.headers.contains("\r\nAllow: GET, HEAD\r\n"),
        "{}",
        post.headers
    );
    assert_eq!(request(addr, b"nonsense\r\n\r\n").status, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1000));
    assert_eq!(request(addr, huge.as_bytes()).status, 431);
}

#[test]
fn a_silent_client_cannot_block_the_endpoint_for_long() {
    let metrics = Metrics::default();
    let endpoint = start(
        &metrics,
        EndpointOptions {
            request_deadline: Duration::from_millis(200),
            ..EndpointOptions::default()
        },
    );
    // Connects and never sends a byte.
    let connected_at = Instant::now();
    let mut silent = TcpStream::connect(endpoint.local_addr()).unwrap();
    assert_eq!(get(endpoint.local_addr(), "/metrics").status, 200);
    // Its connection is cut at its deadline, not held for good.
    assert!(
        is_closed_within(&mut silent, Duration::from_secs(10)),
        "the silent connection is still open"
    );
    assert!(connected_at.elapsed() >= Duration::from_millis(200));
}

/// A client that reads the response a little at a time is cut at the
/// request's deadline too: each write got the whole deadline again, and
/// one that sent anything at all counted as done, so the connection was
/// held for as long as the client kept reading a little.
#[test]
fn a_slow_reader_is_cut_at_the_deadline() {
    let metrics = Metrics::default();
    // A long page: 20,000 series of 1 kB, more than the sockets buffer.
    let padding = "p".repeat(1000);
    for k in 0..20_000 {
        metrics
            .registry()
            .counter_with_labels(
                "padding_total",
                "Series to make the page long.",
                &[("k", &k.to_string()), ("pad", &padding)],
            )
            .unwrap();
    }
    let endpoint = start(
        &metrics,
        EndpointOptions {
            request_deadline: Duration::from_millis(500),
            ..EndpointOptions::default()
        },
    );
    let mut stream = TcpStream::connect(endpoint.local_addr()).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // 16 KiB every 100 ms, past the deadline.
    let mut response = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let n = stream.read(&mut chunk).unwrap();
        response.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then all there is, at once.
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .expect("a length");
    assert!(length > 20_000_000, "the page is {length} bytes");
    assert!(
        body.len() < length,
        "the whole page of {length} bytes was sent to a reader this slow"
    );
}

/// Whether the server closed `stream` (a read sees its end, or a reset)
/// within `wait`.
fn is_closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn dropping_the_endpoint_stops_it() {
    let metrics = Metrics::default();
    let endpoint = start(&metrics, EndpointOptions::default());
    let addr = endpoint.local_addr();
    drop(endpoint);
    assert!(TcpStream::connect(addr).is_err());
}

/// Idle connections (a slowloris, a stuck scraper) do not queue a health
/// probe behind their deadlines: each connection is served on its own,
/// and when too many are in flight the oldest is cut.
#[test]
fn idle_connections_do_not_keep_a_health_probe_waiting() {
    // Idle connections hold their threads this long: a probe queued behind
    // even one of them would get no answer within its own read timeout.
    // (The heartbeat stays fresh as long, so the answer is 200 however slow
    // the machine.)
    const IDLE_DEADLINE: Duration = Duration::from_secs(600);
    const PROBE_READ_TIMEOUT: Duration = Duration::from_secs(30);
    let metrics = Metrics::default();
    metrics.heartbeat().beat();
    let endpoint = start(
        &metrics,
        EndpointOptions {
            request_deadline: IDLE_DEADLINE,
            max_heartbeat_age: IDLE_DEADLINE,
            ..EndpointOptions::default()
        },
    );
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(endpoint.local_addr()).unwrap())
        .collect();

    let mut probe = TcpStream::connect(endpoint.local_addr()).unwrap();
    probe.set_read_timeout(Some(PROBE_READ_TIMEOUT)).unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let read = probe.read_to_string(&mut response);
    assert!(
        read.is_ok(),
        "the probe got no answer within {PROBE_READ_TIMEOUT:?} while {} idle connections \
         were held ({read:?}; got {response:?})",
        idle.len()
    );
    assert!(
        response.starts_with("HTTP/1.1 200 "),
        "the probe was not answered 200: {response:?}"
    );
    // Sixteen in flight at most: the probe, the 41st, cut the oldest 25
    // (the first 25 idle ones) as it and they came in; the last 15 wait.
    let (mut idle, mut kept) = (idle, Vec::new());
    kept.extend(idle.drain(25..));
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            is_closed_within(stream, Duration::from_secs(10)),
            "idle connection {i} was not cut"
        );
    }
    for (i, stream) in kept.iter_mut().enumerate() {
        assert!(
            !is_closed_within(stream, Duration::from_millis(100)),
            "idle connection {} was cut",
            25 + i
        );
    }
}
