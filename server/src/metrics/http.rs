//! A deliberately small HTTP/1.1 endpoint for `/metrics` and `/healthz`.
//!
//! One thread (`metrics-http`) accepts connections and serves each on a
//! short-lived thread of its own, with a bounded request size and a
//! deadline for the whole request ([`EndpointOptions::request_deadline`]).
//! At most 16 connections (`MAX_IN_FLIGHT`) are served at once; a newcomer
//! beyond that cuts the oldest, so that slow or silent clients (a
//! slowloris, a stuck scraper) never keep a health probe waiting behind
//! their deadlines. Every response closes the connection. Scrapers poll
//! every few seconds; this is plenty.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bevy_ecs::resource::Resource;
use tracing::{debug, warn};

use super::Metrics;

/// Limits and thresholds of the [`MetricsEndpoint`].
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// Largest request head accepted; larger requests get `431` and are closed.
    pub max_request_bytes: usize,
    /// Time allowed to receive the request head and send the response.
    pub request_deadline: Duration,
    /// `/healthz` answers `200` while the last tick completed less than this
    /// long ago, `503` otherwise.
    pub max_heartbeat_age: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        Self {
            max_request_bytes: 8 * 1024,
            request_deadline: Duration::from_secs(2),
            max_heartbeat_age: Duration::from_secs(2),
        }
    }
}

/// The running metrics HTTP endpoint. Dropping it stops the thread.
///
/// Also a bevy resource, so that the app owns it and it lives as long as the
/// server does.
#[derive(Resource, Debug)]
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `bind` and starts serving `metrics` on a new thread.
    ///
    /// # Errors
    /// Binding the socket or spawning the thread failed.
    pub fn start(bind: SocketAddr, metrics: Metrics, options: EndpointOptions) -> io::Result<Self> {
        let listener = TcpListener::bind(bind)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || serve(&listener, &metrics, &options, &stop)
            })?;
        Ok(Self {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let woke = TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok();
        if let Some(thread) = self.thread.take()
            && woke
        {
            let _ = thread.join();
        }
    }
}

/// Connections served at once; a newcomer beyond this cuts the oldest.
const MAX_IN_FLIGHT: usize = 16;

/// A connection being served: a handle to cut it with.
struct InFlight {
    id: u64,
    started: Instant,
    stream: TcpStream,
}

fn serve(listener: &TcpListener, metrics: &Metrics, options: &EndpointOptions, stop: &AtomicBool) {
    let in_flight: Arc<Mutex<Vec<InFlight>>> = Arc::default();
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                let Ok(handle_to_cut) = stream.try_clone() else {
                    continue;
                };
                let id = next_id;
                next_id += 1;
                {
                    let mut served = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                    if served.len() >= MAX_IN_FLIGHT
                        && let Some(oldest) = (0..served.len()).min_by_key(|&i| served[i].started)
                    {
                        // Its thread's read or write fails at once and ends.
                        let _ = served.swap_remove(oldest).stream.shutdown(Shutdown::Both);
                    }
                    served.push(InFlight {
                        id,
                        started: Instant::now(),
                        stream: handle_to_cut,
                    });
                }
                let (metrics, options, registry) =
                    (metrics.clone(), options.clone(), Arc::clone(&in_flight));
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let (mut request, mut body) = (Vec::new(), String::new());
                        if let Err(error) =
                            handle(stream, &metrics, &options, &mut request, &mut body)
                        {
                            debug!(%error, "metrics request failed");
                        }
                        registry
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .retain(|c| c.id != id);
                    });
                if let Err(error) = spawned {
                    warn!(%error, "cannot serve a metrics request");
                    in_flight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .retain(|c| c.id != id);
                }
            }
            Err(error) => {
                warn!(%error, "metrics endpoint accept failed");
                // Persistent errors (e.g. out of file descriptors) must not spin.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    /// The methods a 405 names.
    allow: Option<&'static str>,
    /// A HEAD request: the head of the GET answer, no body.
    head_only: bool,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str) -> Self {
        Self {
            status,
            content_type,
            allow: None,
            head_only: false,
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    options: &EndpointOptions,
    request: &mut Vec<u8>,
    body: &mut String,
) -> io::Result<()> {
    let deadline = Instant::now() + options.request_deadline;
    request.clear();
    body.clear();
    let head = read_head(&mut stream, request, options.max_request_bytes, deadline)?;
    let mut unread_input = matches!(head, Head::TooLarge);
    let response = match head {
        Head::Complete => {
            let response = route(request, metrics, options, body);
            // Another method may have sent a body, left unread.
            unread_input |= response.allow.is_some();
            response
        }
        Head::TooLarge => {
            body.push_str("request too large\n");
            Response::new("431 Request Header Fields Too Large", TEXT)
        }
    };
    let allow = response
        .allow
        .map_or(String::new(), |methods| format!("Allow: {methods}\r\n"));
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        body.len()
    );
    write_before(&mut stream, head.as_bytes(), deadline)?;
    if !response.head_only {
        write_before(&mut stream, body.as_bytes(), deadline)?;
    }
    if unread_input {
        // Closing with unread input makes the kernel send a reset, which
        // can destroy the response before the client reads it. Signal the
        // end of the response, then discard input until the client closes
        // (bounded by the request deadline and a byte budget).
        stream.shutdown(Shutdown::Write)?;
        drain(
            &mut stream,
            request,
            16 * options.max_request_bytes,
            deadline,
        );
    }
    Ok(())
}

fn drain(stream: &mut TcpStream, scratch: &mut Vec<u8>, budget: usize, deadline: Instant) {
    scratch.resize(scratch.capacity().max(1024), 0);
    let mut left = budget;
    while left > 0 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

enum Head {
    Complete,
    TooLarge,
}

/// Reads until the blank line ending the request head, within `limit`
/// bytes and before `deadline`. A request body, if any, is ignored.
fn read_head(
    stream: &mut TcpStream,
    request: &mut Vec<u8>,
    limit: usize,
    deadline: Instant,
) -> io::Result<Head> {
    let mut chunk = [0u8; 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(remaining))?;
        let room = (limit + 1 - request.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // Only the newly read bytes (plus three before) can complete the
        // head: a blank line, its ends CRLF or, leniently, LF alone.
        let scan_from = request.len().saturating_sub(3);
        request.extend_from_slice(&chunk[..n]);
        let tail = &request[scan_from..];
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            return Ok(Head::Complete);
        }
        if request.len() > limit {
            return Ok(Head::TooLarge);
        }
    }
}

/// Writes all of `bytes` before `deadline`. The socket's send timeout
/// holds for each call, and a call that sends part of the bytes succeeds:
/// each call gets only what is left of the deadline, or a client reading a
/// little at a time would hold the connection for as long as it liked.
fn write_before(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(remaining))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn route(
    request: &[u8],
    metrics: &Metrics,
    options: &EndpointOptions,
    body: &mut String,
) -> Response {
    let line_end = request
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(request.len());
    let line = std::str::from_utf8(&request[..line_end]).unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        body.push_str("bad request\n");
        return Response::new("400 Bad Request", TEXT);
    };
    if !version.starts_with("HTTP/1.") {
        body.push_str("bad request\n");
        return Response::new("400 Bad Request", TEXT);
    }
    let path = target.split('?').next().unwrap_or(target);
    if method != "GET" && method != "HEAD" {
        body.push_str("method not allowed\n");
        return Response {
            allow: Some("GET, HEAD"),
            ..Response::new("405 Method Not Allowed", TEXT)
        };
    }
    let response = route_get(path, metrics, options, body);
    Response {
        head_only: method == "HEAD",
        ..response
    }
}

/// The answer to a GET of `path`.
fn route_get(
    path: &str,
    metrics: &Metrics,
    options: &EndpointOptions,
    body: &mut String,
) -> Response {
    match path {
        "/metrics" => {
            metrics.registry().render(body);
            Response::new("200 OK", PROMETHEUS)
        }
        "/healthz" => {
            let now = Instant::now();
            if metrics.is_shutting_down() {
                body.push_str("shutting down\n");
                Response::new("503 Service Unavailable", TEXT)
            } else if let Some(faults) = metrics.faults().describe(now) {
                body.push_str(&faults);
                Response::new("503 Service Unavailable", TEXT)
            } else if metrics.heartbeat().is_fresh(now, options.max_heartbeat_age) {
                body.push_str("ok\n");
                Response::new("200 OK", TEXT)
            } else {
                body.push_str("tick loop stalled or not started\n");
                Response::new("503 Service Unavailable", TEXT)
            }
        }
        _ => {
            body.push_str("not found\n");
            Response::new("404 Not Found", TEXT)
        }
    }
}
