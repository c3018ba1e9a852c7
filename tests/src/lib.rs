//! Helpers for the end-to-end and adversarial tests.
//!
//! # How the server runs
//!
//! Every test starts the **real server binary** (`target/<profile>/server`)
//! as a child process ([`ServerProcess`]), on loopback ports the OS picks
//! (the server announces them in its log, see [`server::readiness`]),
//! in a temporary data folder, and kills it when the handle drops. A
//! separate process gives the tests what they measure: the server's own
//! resident memory and CPU time from `/proc/<pid>/`, and "no panic" as
//! "the process is still running and serving". The binary is located next
//! to the test executable and built once per test executable with
//! `cargo build -p server` (a no-op when up to date; `CARGO_TARGET_DIR` is
//! inherited). Set `E2E_SERVER_BIN=/path/to/server` to use another binary.
//!
//! # Clients
//!
//! - [`HonestClient`]: the real stack ([`ClientEndpoint`] on a
//!   [`ClientSocket`]) playing like a player: movement input every tick,
//!   a chat line now and then; it counts what it receives and records how
//!   its session ended.
//! - [`RawClient`]: a real netcode.io client whose transport packets are
//!   written by the test, for fragment bombs, ack abuse and a reader that
//!   never acknowledges. It can also run a real transport [`Connection`]
//!   (see [`RawClient::attach_connection`]) whose packet sequence numbers
//!   it shifts, so crafted packets can be slipped in between real ones.
//!
//! Everything is loopback only, and every wait has a deadline.

#![expect(
    clippy::missing_panics_doc,
    reason = "test helpers panic on setup failures by design: a failed setup is a failed test"
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use server::readiness::wait_until_listening;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent};
use shared::io::{ClientSocket, unix_secs};
use shared::netcode::{self, ClientEvent, ClientState, ConnectToken, MAX_PACKET_BYTES};
use shared::protocol::chat::{ChatLine, ChatScope, ChatSend};
use shared::protocol::messages::Welcome;
use shared::protocol::movement::{MoveInput, Snapshot};
use shared::protocol::{self, NetMessage, PROTOCOL_ID, channels};
use shared::transport::wire::{self, PacketHeader, PacketKind};
use shared::transport::{Connection, DisconnectReason, Event};

/// Whether the long variants run (`E2E_LONG=1`).
pub fn long_variant() -> bool {
    std::env::var("E2E_LONG").is_ok_and(|v| v == "1")
}

/// Picks `fast` normally and `long` under `E2E_LONG=1`.
pub fn scale<T>(fast: T, long: T) -> T {
    if long_variant() { long } else { fast }
}

/// Raises this process's open-file limit to `sockets` and room for the
/// tests running beside it (1,024 more), as the bots raise theirs: many
/// hosts start processes at 1,024, and a test past it failed with "Too
/// many open files". Fails the test, saying what to do, when the hard
/// limit is lower.
#[cfg_attr(not(target_os = "linux"), expect(unused_variables))]
pub fn room_for_sockets(sockets: u64) {
    #[cfg(target_os = "linux")]
    {
        // One at a time: two tests reading the limit together, the one
        // needing less could set it back under the other's.
        static RAISING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = RAISING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let needed = sockets + 1_024;
        if let Err(limit) = client_headless::open_files::make_room(needed) {
            panic!(
                "this test needs about {needed} open files and may open {limit}: raise the \
                 limit (ulimit -n {needed})"
            );
        }
    }
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral TCP port")
}

/// A connect token signed with the public development key, for `server`.
pub fn dev_token(server: SocketAddr, client_id: u64, timeout_seconds: i32) -> ConnectToken {
    shared::keys::mint_token(
        &shared::keys::dev_key(),
        vec![server],
        client_id,
        120,
        timeout_seconds,
    )
    .expect("mint a dev token")
}

/// The tests' random choices and the attack traffic come from the same
/// generators as `client_headless chaos`.
pub use client_headless::chaos::generators::{self, Rng};

/// Seed for a test: `E2E_SEED` when set, else the clock (printed by the test).
pub fn seed() -> u64 {
    std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// The server binary: `E2E_SERVER_BIN`, else `target/<profile>/server`
/// built (or confirmed up to date) with `cargo build -p server` once per
/// test executable.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("server", "E2E_SERVER_BIN"))
}

/// The headless client binary (`client_headless load`, `chaos`):
/// `E2E_CLIENT_BIN`, else `target/<profile>/client_headless` built (or
/// confirmed up to date) with `cargo build -p client_headless` once per test
/// executable.
pub fn client_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("client_headless", "E2E_CLIENT_BIN"))
}

/// The binary `name` of the workspace package `name`: the path in
/// `override_var` when set, else `target/<profile>/<name>` after
/// `cargo build -p <name> --bin <name>` in the profile and target folder
/// this test executable was built with.
fn workspace_binary(name: &str, override_var: &str) -> PathBuf {
    if let Ok(path) = std::env::var(override_var) {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-exe>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet", "-p", name, "--bin", name]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    // The target folder is the one this executable was built into.
    if std::env::var_os("CARGO_TARGET_DIR").is_none()
        && let Some(target) = profile_dir.parent()
    {
        command.env("CARGO_TARGET_DIR", target);
    }
    let status = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run cargo build -p {name}: {e}"));
    assert!(status.success(), "cargo build -p {name} failed: {status}");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "no {name} binary at {}", path.display());
    path
}

/// How to start a [`ServerProcess`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--max-clients`.
    pub max_clients: u32,
    /// Extra TOML appended to a config file passed with `--config`.
    pub config_toml: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_clients: 256,
            config_toml: String::new(),
        }
    }
}

#[path = "../../server/tests/support/process.rs"]
mod process;
pub use process::{KillOnDrop, output_within, output_within_input};

/// Waits at most `limit` for `child` to exit (the test fails saying
/// `what` otherwise); returns its status and what it wrote to stderr.
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> (ExitStatus, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child process") {
            break status;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// The server binary running as a child process; killed on drop.
pub struct ServerProcess {
    child: KillOnDrop,
    /// The game's UDP address.
    pub game: SocketAddr,
    /// The metrics endpoint.
    pub metrics: SocketAddr,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts the server on fresh loopback ports with a fresh data folder.
    pub fn start(options: &ServerOptions) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let binary = server_binary();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("e2e-adv-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's folder");
        let config = dir.join("server.toml");
        std::fs::write(&config, &options.config_toml).expect("write the config file");
        let mut child = KillOnDrop(
            Command::new(binary)
                .current_dir(&dir)
                .arg("--config")
                .arg(&config)
                .args(["--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"])
                .args(["--max-clients", &options.max_clients.to_string()])
                .args(["--data-dir", "data", "--shutdown-grace-ms", "0"])
                .args(["--log-filter", "warn,server=info", "--log-format", "json"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the server binary"),
        );
        // The OS picks both ports; the server announces them once serving.
        let listening = match wait_until_listening(&mut child, Duration::from_secs(20)) {
            Ok(listening) => listening,
            Err(error) => {
                child.kill_and_reap();
                let _ = std::fs::remove_dir_all(&dir);
                panic!("{error}");
            }
        };
        let server = Self {
            child,
            game: listening.public,
            metrics: listening.metrics,
            dir,
        };
        // The page answers as soon as it is bound; the plugins register
        // their metrics as the app is built, which can come a moment
        // after: a read of one would fail as absent.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.scrape().contains("\nconnected_clients ") {
            assert!(
                Instant::now() < deadline,
                "the server's metrics were not registered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (a panic in the server's main
    /// thread or a fatal error ends it).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the server process, in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Open file descriptors of the server process (entries of
    /// `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/<pid>/fd")
            .count()
    }

    /// CPU time (user plus system) the server process has used.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
        // A line that does not parse fails the test: read as 0 it would
        // pass every CPU bound.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("no command name in /proc/<pid>/stat: {stat:?}"));
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> u64 {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "no CPU ticks at field {} of /proc/<pid>/stat: {stat:?}",
                        i + 3
                    )
                })
        };
        let ticks = field(11) + field(12);
        // USER_HZ is 100 on every Linux the tests run on.
        Duration::from_millis(ticks * 10)
    }

    /// The whole `/metrics` text.
    pub fn scrape(&self) -> String {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2))
            .expect("connect to /metrics");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send the request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read /metrics");
        text
    }

    /// One series' value (the test fails when it is absent).
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.scrape(), name)
    }

    /// The sum over every series of a metric family (the test fails when
    /// there is none).
    pub fn metric_sum(&self, name: &str) -> f64 {
        metric_family_sum(&self.scrape(), name)
    }

    /// [`metric`](Self::metric), 0 while the series is absent: for one
    /// registered at its first event (each reason of
    /// `net_dropped_datagrams_total`), read before it or waited for.
    pub fn metric_or_zero(&self, name: &str) -> f64 {
        series_value(&self.scrape(), name).unwrap_or(0.0)
    }

    /// [`metric_sum`](Self::metric_sum), 0 while no series is exported
    /// (see [`metric_or_zero`](Self::metric_or_zero)).
    pub fn metric_sum_or_zero(&self, name: &str) -> f64 {
        family_values(&self.scrape(), name).into_iter().sum()
    }

    /// Waits at most 3 s for every session to end (`connected_clients`
    /// 0): a client's goodbye ends its session at once, not after the
    /// server's 10 s timeout. The test fails saying `what` otherwise.
    pub fn sessions_end_soon(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.metric("connected_clients") > 0.0 {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The sum of every series of a metric family (`name{...} value` and
/// `name value`) in a `/metrics` text. The test fails when there is none:
/// a renamed or unregistered metric read as 0 would pass every upper
/// bound and every "none happened".
pub fn metric_family_sum(text: &str, name: &str) -> f64 {
    let values = family_values(text, name);
    assert!(!values.is_empty(), "the server exports no {name}");
    values.into_iter().sum()
}

/// One series' value in a `/metrics` text (`name` with its labels, if
/// any). The test fails when it is absent, as for [`metric_family_sum`].
pub fn metric_value(text: &str, name: &str) -> f64 {
    series_value(text, name).unwrap_or_else(|| panic!("the server exports no {name}"))
}

fn family_values(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.parse::<f64>().ok()
        })
        .collect()
}

fn series_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Stopped before its folder goes.
        self.child.kill_and_reap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What an [`HonestClient`] has seen.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The server's welcome arrived.
    pub welcomed: bool,
    /// Snapshots received.
    pub snapshots: u64,
    /// Chat lines received (sequence numbers checked: 1, 2, 3, ...).
    pub chat_lines: u64,
    /// A chat line arrived out of order or twice.
    pub chat_sequence_broken: bool,
    /// The chat lines received that decoded, in arrival order.
    pub chat: Vec<ChatLine>,
    /// How the session ended, if it did.
    pub ended: Option<DisconnectReason>,
}

/// A player on the real client stack.
pub struct HonestClient {
    /// Its account id.
    pub id: u64,
    socket: ClientSocket,
    /// What it has seen.
    pub seen: Seen,
    input_seq: u32,
    last_snapshot_tick: u32,
    next_input: Instant,
    /// When `play` sends the next chat line of its own; `None`: never.
    next_chat: Option<Instant>,
    /// The `client_ref` of the last chat line sent.
    chat_refs: u32,
    chat_interval: Duration,
    rng: Rng,
}

impl HonestClient {
    /// Starts connecting to `server` with a dev token (`timeout_seconds`);
    /// once welcomed, `play` sends a global chat line every 2 s.
    pub fn connect(server: SocketAddr, id: u64, timeout_seconds: i32) -> Self {
        Self::start(server, id, timeout_seconds, true)
    }

    /// As [`HonestClient::connect`], but `play` never sends a chat line of
    /// its own (the client still moves, and [`HonestClient::say`] still
    /// sends): for tests that count chat lines exactly, whatever the timing.
    pub fn connect_without_chat(server: SocketAddr, id: u64, timeout_seconds: i32) -> Self {
        Self::start(server, id, timeout_seconds, false)
    }

    fn start(server: SocketAddr, id: u64, timeout_seconds: i32, chats: bool) -> Self {
        let now = Instant::now();
        let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
        endpoint
            .connect(&dev_token(server, id, timeout_seconds), now, unix_secs())
            .expect("connect with a fresh token");
        let socket = ClientSocket::bind("127.0.0.1:0".parse().expect("an address"), endpoint)
            .expect("bind a client socket");
        Self {
            id,
            socket,
            seen: Seen::default(),
            input_seq: 0,
            last_snapshot_tick: 0,
            next_input: now,
            // Stay well inside the default chat rate limit (burst 10, 1/s).
            next_chat: chats.then(|| now + Duration::from_millis(500 + id % 1000)),
            chat_refs: 0,
            chat_interval: Duration::from_secs(2),
            rng: Rng::new(id),
        }
    }

    /// The client's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.socket().local_addr().expect("a bound socket")
    }

    /// Connected and not ended.
    pub fn is_connected(&self) -> bool {
        self.socket.endpoint.is_connected() && self.seen.ended.is_none()
    }

    /// Reads, handles timers, and plays: movement input at 30 Hz, a global
    /// chat line every 2 s (unless made with
    /// [`HonestClient::connect_without_chat`]).
    pub fn play(&mut self, now: Instant) {
        self.pump(now);
        if !self.is_connected() || !self.seen.welcomed {
            return;
        }
        if now >= self.next_input {
            self.next_input = now + Duration::from_millis(33);
            self.input_seq += 1;
            let angle = (self.rng.below(628) as f32) / 100.0;
            let input = MoveInput {
                seq: self.input_seq,
                velocity: glam::Vec2::new(angle.cos(), angle.sin()) * 2.0,
                ack_snapshot: self.last_snapshot_tick,
            };
            if let Ok(bytes) = protocol::encode(&input) {
                let _ = self.socket.endpoint.send(channels::MOVEMENT, bytes);
            }
        }
        if let Some(next_chat) = self.next_chat
            && now >= next_chat
        {
            self.next_chat = Some(now + self.chat_interval);
            self.say(&format!("hello from {} #{}", self.id, self.input_seq));
        }
        self.socket.flush(now);
    }

    /// The chat lines sent so far, by `play` and [`HonestClient::say`].
    pub fn lines_said(&self) -> u32 {
        self.chat_refs
    }

    /// Sends one global chat line (call `play` or `pump` to flush it).
    pub fn say(&mut self, text: &str) {
        self.chat_refs = self.chat_refs.wrapping_add(1);
        let chat = ChatSend {
            scope: ChatScope::Global,
            text: text.to_owned(),
            client_ref: self.chat_refs,
        };
        if let Ok(bytes) = protocol::encode(&chat) {
            let _ = self.socket.endpoint.send(channels::CHAT, bytes);
        }
    }

    /// Reads and handles everything waiting; sends nothing new.
    pub fn pump(&mut self, now: Instant) {
        let _ = self.socket.pump(now);
        while let Some(event) = self.socket.endpoint.poll_event() {
            match event {
                ClientEndpointEvent::Connected { .. } => {}
                ClientEndpointEvent::Message { payload, .. } => match protocol::message_id(payload)
                {
                    Some(Welcome::ID) => self.seen.welcomed = true,
                    Some(Snapshot::ID) => {
                        self.seen.snapshots += 1;
                        if let Ok(snapshot) = protocol::decode::<Snapshot>(payload) {
                            self.last_snapshot_tick = self.last_snapshot_tick.max(snapshot.tick);
                        }
                    }
                    Some(ChatLine::ID) => {
                        self.seen.chat_lines += 1;
                        if let Ok(line) = protocol::decode::<ChatLine>(payload) {
                            if line.seq != self.seen.chat_lines {
                                self.seen.chat_sequence_broken = true;
                            }
                            self.seen.chat.push(line);
                        }
                    }
                    _ => {}
                },
                ClientEndpointEvent::Disconnected { reason } => {
                    self.seen.ended.get_or_insert(reason);
                }
            }
        }
    }
}

/// Connects `count` honest clients (ids from `first_id`) and waits until
/// every one is welcomed. Panics after `limit`.
pub fn connect_honest(
    server: SocketAddr,
    first_id: u64,
    count: u64,
    limit: Duration,
) -> Vec<HonestClient> {
    welcome_all(server, first_id..first_id + count, true, limit)
}

/// As [`connect_honest`], with clients that never chat on their own
/// ([`HonestClient::connect_without_chat`]): not even while connecting, so
/// a test can count chat lines exactly however loaded the machine is.
pub fn connect_honest_without_chat(
    server: SocketAddr,
    first_id: u64,
    count: u64,
    limit: Duration,
) -> Vec<HonestClient> {
    welcome_all(server, first_id..first_id + count, false, limit)
}

/// Connects honest clients of accounts `ids` (chatting on their own if
/// `chat`) and plays them until every one is welcomed. Panics after
/// `limit`.
fn welcome_all(
    server: SocketAddr,
    ids: std::ops::Range<u64>,
    chat: bool,
    limit: Duration,
) -> Vec<HonestClient> {
    let mut clients: Vec<HonestClient> = ids
        .map(|id| HonestClient::start(server, id, 10, chat))
        .collect();
    let count = clients.len();
    let deadline = Instant::now() + limit;
    loop {
        let now = Instant::now();
        for client in &mut clients {
            client.play(now);
            if let Some(reason) = client.seen.ended {
                panic!(
                    "honest client {} ended while connecting: {reason:?}",
                    client.id
                );
            }
        }
        if clients.iter().all(|c| c.seen.welcomed) {
            return clients;
        }
        assert!(
            now < deadline,
            "only {} of {count} honest clients connected within {limit:?}",
            clients.iter().filter(|c| c.seen.welcomed).count()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Lets every client play once.
pub fn play_all(clients: &mut [HonestClient]) {
    let now = Instant::now();
    for client in clients {
        client.play(now);
    }
}

/// Lets every client play for `duration`.
pub fn play_for(clients: &mut [HonestClient], duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        play_all(clients);
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// At most how many times what a flood test needs the server to read it
/// sends: the kernel drops what the server's socket buffer cannot hold
/// (212,992 bytes by default), and `net-io` runs at nice 10, so on a busy
/// host the server may read a small share of a flood; the tests send
/// more, up to this bound, whatever the share.
pub const FLOOD_BOUND: u64 = 8;

/// Honest clients played on a thread of their own (every 3 ms, as
/// [`play_for`]) while a test does something long in between: left
/// unplayed for their timeout (10 s), their sessions would end, and a
/// test's "honest players were not affected" would see it on a slow host.
pub struct PlayingAside {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<HonestClient>>>,
}

impl PlayingAside {
    /// Starts playing `clients`.
    pub fn start(mut clients: Vec<HonestClient>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = std::sync::Arc::clone(&stop);
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    play_all(&mut clients);
                    std::thread::sleep(Duration::from_millis(3));
                }
                clients
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops playing and hands the clients back.
    pub fn stop(mut self) -> Vec<HonestClient> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread.take().expect("still playing");
        thread.join().expect("the playing thread panicked")
    }
}

impl Drop for PlayingAside {
    /// A test that fails in between stops the thread too.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Honest clients whose session ended, with the reasons.
pub fn ended(clients: &[HonestClient]) -> Vec<(u64, DisconnectReason)> {
    clients
        .iter()
        .filter_map(|c| c.seen.ended.map(|r| (c.id, r)))
        .collect()
}

/// A real netcode.io client on its own socket whose transport packets the
/// test writes, optionally around a real transport [`Connection`].
pub struct RawClient {
    socket: UdpSocket,
    netcode: netcode::Client,
    server: SocketAddr,
    buf: Vec<u8>,
    plain: Vec<u8>,
    /// The next sequence number crafted packets use.
    next_seq: u16,
    /// Added to the real connection's outgoing packet sequences (and taken
    /// off the acks coming back).
    offset: u16,
    conn: Option<Connection>,
    /// The transport disconnect reason the server sent, if any.
    pub server_reason: Option<DisconnectReason>,
    /// Transport packets received (decrypted payloads).
    pub packets_received: u64,
    /// Bytes of transport packets received.
    pub bytes_received: u64,
    /// Messages the real connection delivered, `(channel, payload)`.
    pub messages: Vec<(u8, Vec<u8>)>,
}

impl RawClient {
    /// Binds a socket and completes the handshake. Panics after `limit`.
    pub fn connect(server: SocketAddr, id: u64, timeout_seconds: i32, limit: Duration) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a raw client socket");
        socket.set_nonblocking(true).expect("non-blocking");
        let mut netcode = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
        netcode
            .connect(
                &dev_token(server, id, timeout_seconds),
                Instant::now(),
                unix_secs(),
            )
            .expect("connect with a fresh token");
        let mut client = Self {
            socket,
            netcode,
            server,
            buf: vec![0; MAX_PACKET_BYTES],
            plain: vec![0; netcode::MAX_PAYLOAD_BYTES],
            next_seq: 0,
            offset: 0,
            conn: None,
            server_reason: None,
            packets_received: 0,
            bytes_received: 0,
            messages: Vec::new(),
        };
        let deadline = Instant::now() + limit;
        while client.netcode.state() != ClientState::Connected {
            assert!(
                !client.netcode.state().is_error(),
                "raw client {id}: {:?}",
                client.netcode.state()
            );
            assert!(Instant::now() < deadline, "raw client {id} did not connect");
            client.pump(Instant::now());
            std::thread::sleep(Duration::from_millis(2));
        }
        client
    }

    /// The secure layer's state.
    pub fn state(&self) -> ClientState {
        self.netcode.state()
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket")
    }

    /// Runs a real transport connection inside this client from now on; its
    /// packet sequence numbers continue after the crafted ones.
    pub fn attach_connection(&mut self, now: Instant) {
        self.offset = self.next_seq;
        self.conn = Some(
            Connection::new(channels::transport_config(), now).expect("a valid transport config"),
        );
    }

    /// The real connection, if attached.
    pub fn connection(&mut self) -> Option<&mut Connection> {
        self.conn.as_mut()
    }

    /// Reads every waiting datagram, runs timers, sends what the real
    /// connection (if any) and the secure layer have to send.
    pub fn pump(&mut self, now: Instant) {
        self.read(now);
        self.netcode.handle_timeout(now);
        if let Some(conn) = self.conn.as_mut()
            && conn.poll_timeout().is_some_and(|t| t <= now)
        {
            conn.handle_timeout(now);
        }
        self.flush(now);
    }

    /// Reads every waiting datagram without sending anything.
    pub fn read(&mut self, now: Instant) {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let Some(ClientEvent::Payload(payload)) =
                self.netcode
                    .handle_datagram(now, from, &mut self.buf[..len])
            else {
                continue;
            };
            let mut packet = [0u8; netcode::MAX_PAYLOAD_BYTES];
            let data = &mut packet[..payload.len()];
            data.copy_from_slice(payload);
            self.packets_received += 1;
            self.bytes_received += data.len() as u64;
            let Ok((header, body)) = wire::decode_header(data) else {
                continue;
            };
            let has_ack = header.ack.is_some();
            if header.kind == PacketKind::Disconnect
                && let Some(&code) = body.first()
            {
                self.server_reason
                    .get_or_insert(DisconnectReason::from_code(code));
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            // The server acks wire sequence numbers; the connection knows its own.
            if has_ack {
                let latest = u16::from_le_bytes([data[3], data[4]]).wrapping_sub(self.offset);
                data[3..5].copy_from_slice(&latest.to_le_bytes());
            }
            conn.handle_datagram(now, data);
            while let Some(event) = conn.poll_event() {
                match event {
                    Event::Message { channel, payload } => {
                        self.messages.push((channel.0, payload.to_vec()));
                    }
                    Event::Disconnected { reason, .. } => {
                        self.server_reason.get_or_insert(reason);
                    }
                }
            }
        }
    }

    /// Sends what the real connection and the secure layer have to send.
    pub fn flush(&mut self, now: Instant) {
        if self.netcode.state() == ClientState::Connected
            && let Some(conn) = self.conn.as_mut()
        {
            while let Some(len) = conn.poll_transmit(now, &mut self.plain) {
                let seq = u16::from_le_bytes([self.plain[1], self.plain[2]]);
                let wire_seq = seq.wrapping_add(self.offset);
                self.plain[1..3].copy_from_slice(&wire_seq.to_le_bytes());
                self.next_seq = wire_seq.wrapping_add(1);
                if let Ok(t) = self
                    .netcode
                    .send_payload(now, &self.plain[..len], &mut self.buf)
                {
                    let _ = self.socket.send_to(&self.buf[..t.len], t.destination);
                }
            }
        }
        while let Some(t) = self.netcode.poll_transmit(now, &mut self.buf) {
            let _ = self.socket.send_to(&self.buf[..t.len], t.destination);
        }
    }

    /// Leaves as a client does: the secure layer's disconnect packets, sent
    /// at once.
    pub fn disconnect(&mut self) {
        self.netcode.disconnect();
        self.flush(Instant::now());
    }

    /// Seals `transport_packet` (1 to 1,200 bytes) and sends it; returns
    /// the bytes of the datagram the socket took (0 when it took none).
    pub fn send_raw(&mut self, transport_packet: &[u8]) -> usize {
        match self
            .netcode
            .send_payload(Instant::now(), transport_packet, &mut self.buf)
        {
            Ok(t) => self
                .socket
                .send_to(&self.buf[..t.len], t.destination)
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Sends `datagram` as it is from this client's socket (a sealed
    /// packet altered, say): the server reads it as this client's.
    pub fn send_datagram(&self, datagram: &[u8]) -> bool {
        self.socket.send_to(datagram, self.server).is_ok()
    }

    /// Seals `transport_packet` and returns the datagram without sending it.
    pub fn seal_copy(&mut self, transport_packet: &[u8]) -> Vec<u8> {
        let t = self
            .netcode
            .send_payload(Instant::now(), transport_packet, &mut self.buf)
            .expect("seal a payload");
        self.buf[..t.len].to_vec()
    }

    /// Takes the next crafted-packet sequence number. With a real
    /// connection attached, the connection's later packets are shifted
    /// past it.
    pub fn take_seq(&mut self) -> u16 {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        if self.conn.is_some() {
            self.offset = self.offset.wrapping_add(1);
        }
        seq
    }

    /// Writes a data packet with `messages` (header, payload) and the given
    /// ack into `out`; returns its length.
    pub fn craft(
        out: &mut [u8],
        sequence: u16,
        ack: Option<wire::AckInfo>,
        ack_eliciting: bool,
        messages: &[(wire::MessageHeader, &[u8])],
    ) -> usize {
        let header = PacketHeader {
            kind: PacketKind::Data,
            ack_eliciting,
            sequence,
            ack,
        };
        let mut writer = wire::PacketWriter::new(out, &header).expect("room for a header");
        for (h, payload) in messages {
            assert!(writer.write_message(h, payload), "message does not fit");
        }
        writer.len()
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }
}

/// Sends a message through a [`RawClient`]'s real connection.
pub fn raw_send<M: NetMessage>(
    client: &mut RawClient,
    channel: shared::transport::ChannelId,
    message: &M,
) {
    let bytes: Bytes = protocol::encode(message).expect("encode");
    client
        .connection()
        .expect("a real connection")
        .send_bytes(channel, bytes)
        .expect("queue the message");
}

/// A socket bound on `127.0.<a>.<b>` (any 127/8 address is loopback on Linux).
pub fn bind_loopback(a: u8, b: u8) -> UdpSocket {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, a, b), 0))
        .unwrap_or_else(|e| panic!("bind 127.0.{a}.{b}: {e}"));
    socket.set_nonblocking(true).expect("non-blocking");
    socket
}

/// Reads and counts (datagrams, bytes) waiting on a non-blocking socket.
pub fn drain_count(socket: &UdpSocket) -> (u64, u64) {
    let mut buf = [0u8; 2048];
    let (mut n, mut bytes) = (0, 0);
    for _ in 0..100_000 {
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                n += 1;
                bytes += len as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (n, bytes)
}

/// Mebibytes, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
