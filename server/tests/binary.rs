//! The built `server` binary: configuration precedence as the process sees
//! it, health, and graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use server::readiness::{Announcements, Listening};

#[path = "support/process.rs"]
mod process;

use process::{KillOnDrop, output_within};

const SERVER: &str = env!("CARGO_BIN_EXE_server");

/// The longest a run of the binary expected to exit by itself (a refused
/// start, `token`, `audit`, `--print-config`) may take: one that serves
/// instead fails its test rather than hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A fresh empty directory for one test, removed when the test ends,
/// whether it passed or failed.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = PathBuf;

    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

fn scratch_dir(name: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("server-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    ScratchDir(dir)
}

/// The server with a clean environment (no inherited GAMESERVER_* or
/// RUST_LOG), run from `dir`.
fn server(dir: &PathBuf) -> Command {
    run_in(dir, SERVER)
}

/// `program` with a clean environment, run from `dir`.
fn run_in(dir: &PathBuf, program: &str) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

/// The server serving in `dir` on loopback ports of the system's
/// choosing, data in `dir/data`, its logs on a pipe (see `read_log`);
/// killed when the handle drops.
fn serve(dir: &PathBuf) -> KillOnDrop {
    serve_as(server(dir))
}

/// `command` (the server, or something that runs it) serving as [`serve`]
/// says.
fn serve_as(mut command: Command) -> KillOnDrop {
    KillOnDrop(
        command
            .args(["--metrics-bind", "127.0.0.1:0"])
            .args(["--bind", "127.0.0.1:0", "--data-dir", "data"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn print_config(command: &mut Command) -> String {
    let output = output_within(command.arg("--print-config"), RUN_LIMIT);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = scratch_dir("precedence");
    std::fs::write(
        dir.join("custom.toml"),
        "tick_hz = 20\nmax_clients = 50\ndata_dir = \"/from/file\"\n",
    )
    .unwrap();

    // No file anywhere: the embedded defaults, from any directory.
    let defaults = print_config(&mut server(&dir));
    assert!(defaults.contains("tick_hz = 30\n"), "{defaults}");
    // `bind` is the default for the key: said, not pinned.
    assert!(
        defaults
            .contains("# bind = \"127.0.0.1:7777\" (not set: the default without a key file)\n"),
        "{defaults}"
    );
    assert!(!defaults.lines().any(|line| line.starts_with("bind")));

    // The file overrides defaults.
    let file = print_config(server(&dir).args(["--config", "custom.toml"]));
    assert!(file.contains("tick_hz = 20\n"), "{file}");
    assert!(file.contains("max_clients = 50\n"));
    assert!(file.contains("metrics_bind = \"127.0.0.1:9100\"\n"));

    // The environment overrides the file (GAMESERVER_CONFIG names it).
    let env = print_config(
        server(&dir)
            .env("GAMESERVER_CONFIG", "custom.toml")
            .env("GAMESERVER_TICK_HZ", "60")
            .env("GAMESERVER_DATA_DIR", "/from/env"),
    );
    assert!(env.contains("tick_hz = 60\n"), "{env}");
    assert!(env.contains("data_dir = \"/from/env\"\n"));
    assert!(env.contains("max_clients = 50\n"));

    // Flags override the environment, with or without `run`, even a
    // value of it that would be refused.
    for run in [&[][..], &["run"][..]] {
        let cli = print_config(
            server(&dir)
                .args(run)
                .args(["--config", "custom.toml", "--tick-hz", "10"])
                .env("GAMESERVER_TICK_HZ", "500")
                .env("GAMESERVER_DATA_DIR", "/from/env"),
        );
        assert!(cli.contains("tick_hz = 10\n"), "{cli}");
        assert!(cli.contains("data_dir = \"/from/env\"\n"));
        assert!(cli.contains("max_clients = 50\n"));
    }

    // assets/server.toml in the working directory is picked up by default.
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("assets/server.toml"), "max_clients = 7\n").unwrap();
    let local = print_config(&mut server(&dir));
    assert!(local.contains("max_clients = 7\n"), "{local}");
}

#[test]
fn invalid_settings_exit_with_a_clear_error() {
    let dir = scratch_dir("invalid");
    let check = |output: Output, needle: &str| {
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(needle), "{stderr}");
    };
    check(
        output_within(server(&dir).args(["--tick-hz", "500"]), RUN_LIMIT),
        "500 is not in 1..=128",
    );
    check(
        output_within(server(&dir).env("GAMESERVER_TICK_HZ", "0"), RUN_LIMIT),
        "0 is not in 1..=128",
    );
    check(
        output_within(server(&dir).env("GAMESERVER_TICK_HZ", "0"), RUN_LIMIT),
        "came from the environment variable GAMESERVER_TICK_HZ",
    );
    std::fs::write(dir.join("bad.toml"), "tick_hz = 0\n").unwrap();
    check(
        output_within(server(&dir).args(["--config", "bad.toml"]), RUN_LIMIT),
        "tick_hz in bad.toml: tick rate 0 Hz is out of range",
    );
    check(
        output_within(server(&dir).args(["--config", "missing.toml"]), RUN_LIMIT),
        "cannot read config file missing.toml",
    );
    check(
        output_within(server(&dir).args(["--log-format", "xml"]), RUN_LIMIT),
        "invalid value 'xml'",
    );
    check(
        output_within(server(&dir).env("RUST_LOG", "warning"), RUN_LIMIT),
        "\"warning\" is neither a level",
    );
}

/// A start that fails with every log line filtered out still says why.
#[test]
fn a_failed_start_says_why_with_logging_off() {
    let dir = scratch_dir("silent-failure");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = output_within(
        server(&dir)
            .args(["--log-filter", "off", "--metrics-bind", "127.0.0.1:0"])
            .args(["--bind", &addr, "--data-dir", "data"]),
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("error: startup failed: "), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

/// Reads the server's stderr on a thread: the addresses it announces
/// (it binds port 0, so no other test can take them first), then, once
/// the server exits, the whole log.
fn read_log(child: &mut Child) -> (Listening, JoinHandle<String>) {
    let stderr: ChildStderr = child.stderr.take().unwrap();
    let (announced, listening) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut announcements = Announcements::default();
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addresses) = announcements.read_line(&line) {
                let _ = announced.send(addresses);
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let listening = listening
        .recv_timeout(Duration::from_secs(20))
        .expect("the server announces its addresses");
    (listening, log)
}

/// The nice value of `pid`'s thread named `name`, from `/proc`.
#[cfg(target_os = "linux")]
fn thread_nice(pid: u32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // After the parenthesised name: state is field 3, nice field 19.
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(16)?
                .parse()
                .ok()
        })
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The child's exit status once it exits, or `None` if it is still running
/// after `timeout`: it is then killed and reaped, so that a thread reading
/// its log sees the end.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_health_and_metrics_then_exits_cleanly_on_sigterm() {
    let dir = scratch_dir("sigterm");
    let mut child = serve(&dir);
    let (listening, logs) = read_log(&mut child);
    let metrics = listening.metrics;

    // Readiness: /healthz turns 200 once the tick loop runs. Bounded retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        match http_get(metrics, "/healthz") {
            Some((200, _)) => break true,
            _ if Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(healthy, "server never became healthy");
    let (status, body) = http_get(metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE server_tick_duration_seconds histogram"),
        "{body}"
    );
    assert!(body.contains("server_ticks_total "));
    #[cfg(target_os = "linux")]
    {
        // The default net_io_nice: net-io ten steps below the tick (main).
        let main = thread_nice(child.id(), "server").expect("the main thread");
        let net_io = thread_nice(child.id(), "net-io").expect("the net-io thread");
        assert_eq!(net_io, (main + 10).min(19));
    }

    stops_gracefully_on(&mut child, logs, "TERM", 1);
}

/// Sends `signal` to a serving server `times` times, 200 ms apart (each
/// then handled on its own, within the 1 s grace of the shutdown the first
/// began), and checks it shuts down as asked: exit code 0 after a graceful
/// shutdown for a signal.
fn stops_gracefully_on(
    child: &mut KillOnDrop,
    logs: JoinHandle<String>,
    signal: &str,
    times: usize,
) {
    for sent in 0..times {
        if sent > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }
    let status = wait_with_timeout(child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("server did not exit within 10 s of SIG{signal}"));
    let logs = logs.join().unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("shutdown started"), "{logs}");
    assert!(
        logs.contains("reason=signal") || logs.contains("reason: signal"),
        "{logs}"
    );
    assert!(logs.contains("shutdown complete"), "{logs}");
}

/// The terminal a server runs in closing (an SSH session dropped) hangs it
/// up: players get their goodbye and the store its last commit, as for
/// SIGTERM, not the default end by signal. The hangup comes twice, as it
/// does from a closing terminal (the shell passes it on, then the kernel
/// sends its own): the second must not end the shutdown on the spot.
#[test]
fn a_hangup_shuts_the_server_down_gracefully() {
    let dir = scratch_dir("sighup");
    let mut child = serve(&dir);
    let (_, logs) = read_log(&mut child);
    stops_gracefully_on(&mut child, logs, "HUP", 2);
}

/// Started with `nohup` (SIGHUP ignored), the server was asked to outlive
/// its terminal: a hangup leaves it serving.
#[cfg(unix)]
#[test]
fn a_server_started_under_nohup_serves_on_through_a_hangup() {
    let dir = scratch_dir("nohup");
    let mut nohup = run_in(&dir, "nohup");
    nohup.arg(SERVER);
    let mut child = serve_as(nohup);
    let (listening, logs) = read_log(&mut child);
    let healthy = |expected: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = matches!(http_get(listening.metrics, "/healthz"), Some((200, _)));
            if ok == expected || Instant::now() > deadline {
                return ok;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(healthy(true), "server never became healthy");
    let kill = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the hangup stopped it");
    assert!(healthy(true), "the hangup started a shutdown");
    stops_gracefully_on(&mut child, logs, "TERM", 1);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = scratch_dir("json");
    let mut child = KillOnDrop(
        server(&dir)
            .args(["--metrics-bind", "127.0.0.1:0", "--log-format", "json"])
            .args(["--bind", "127.0.0.1:0", "--shutdown-grace-ms", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (listening, logs) = read_log(&mut child);
    let metrics = listening.metrics;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(http_get(metrics, "/healthz"), Some((200, _))) {
        assert!(Instant::now() < deadline, "server never became healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
    let logs = logs.join().unwrap();
    assert!(!logs.is_empty());
    for line in logs.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\""),
            "not a JSON log line: {line}"
        );
    }
}

#[test]
fn token_prints_a_base64_connect_token_for_the_given_server() {
    let dir = scratch_dir("token");
    let output = output_within(
        server(&dir)
            .args(["token", "--client-id", "42", "--server", "127.0.0.1:7777"])
            .args(["--server", "[::1]:7778", "--expires", "120"]),
        RUN_LIMIT,
    );
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let token = shared::netcode::ConnectToken::from_base64(text.trim()).unwrap();
    assert_eq!(token.protocol_id, shared::protocol::PROTOCOL_ID);
    assert_eq!(
        token.server_addresses,
        vec![
            "127.0.0.1:7777".parse().unwrap(),
            "[::1]:7778".parse().unwrap()
        ]
    );
    assert_eq!(token.expire_timestamp - token.create_timestamp, 120);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("development key"), "{stderr}");
}

/// A token for an address no server can have (the bind address
/// copied, port 0) was printed, exit 0: every handshake with it was then
/// dropped as `AddressNotInToken`, and the player just timed out.
#[test]
fn token_refuses_addresses_players_cannot_send_to() {
    let dir = scratch_dir("token-unreachable");
    for addr in ["0.0.0.0:7777", "[::]:7777", "127.0.0.1:0", "239.1.2.3:7777"] {
        let output = output_within(
            server(&dir).args(["token", "--client-id", "1", "--server", addr]),
            RUN_LIMIT,
        );
        assert_eq!(output.status.code(), Some(2), "{addr}: {output:?}");
        assert!(output.stdout.is_empty(), "{addr}: a token printed");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains("no address players can send to"),
            "{stderr}"
        );
    }
}

/// `token` refuses a key file holding the development key, as `run` does:
/// it minted tokens for a server that would never start with that key.
#[test]
fn token_refuses_a_key_file_holding_the_dev_key() {
    let dir = scratch_dir("token-devkey");
    std::fs::write(dir.join("server.key"), include_str!("../../assets/dev.key")).unwrap();
    let output = output_within(
        server(&dir)
            .args(["token", "--client-id", "1", "--server", "127.0.0.1:7777"])
            .args(["--key-file", "server.key"]),
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("public development key"), "{stderr}");
}

#[test]
fn a_production_key_file_holding_the_dev_key_is_refused() {
    let dir = scratch_dir("devkey");
    std::fs::write(dir.join("server.key"), include_str!("../../assets/dev.key")).unwrap();
    let output = output_within(
        server(&dir)
            .args(["--key-file", "server.key", "--bind", "127.0.0.1:0"])
            .args(["--metrics-bind", "127.0.0.1:0"]),
        RUN_LIMIT,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("public development key"), "{stderr}");
}

/// A pseudo-terminal: (the side a user types into, the side the process
/// reads as its terminal).
#[cfg(target_os = "linux")]
#[expect(unsafe_code, reason = "openpty has no safe wrapper in std")]
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut user, mut terminal) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the out-pointers; the
    // name, termios and window-size arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut user,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe {
        (
            std::fs::File::from_raw_fd(user),
            std::fs::File::from_raw_fd(terminal),
        )
    }
}

/// A server in `dir` whose stdin is a terminal (its console on), stdout
/// and stderr piped; and the terminal's keyboard.
#[cfg(target_os = "linux")]
fn console_server(dir: &PathBuf) -> (std::fs::File, KillOnDrop) {
    let (keyboard, terminal) = pty();
    let child = KillOnDrop(
        server(dir)
            .args(["--metrics-bind", "127.0.0.1:0"])
            .args(["--bind", "127.0.0.1:0", "--data-dir", "data"])
            .stdin(Stdio::from(terminal))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    (keyboard, child)
}

#[cfg(target_os = "linux")]
#[test]
fn console_answers_into_a_closed_stdout_do_not_stop_the_server() {
    let dir = scratch_dir("console-stdout");
    let (mut keyboard, mut child) = console_server(&dir);
    // Whoever read the server's stdout is gone (`server | head -1`, say).
    drop(child.stdout.take());
    let (_, logs) = read_log(&mut child);
    keyboard.write_all(b"status\nplayers\nhelp\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server stopped on a console answer"
    );
    keyboard.write_all(b"shutdown\n").unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10))
        .expect("server did not exit within 10 s of the shutdown command");
    let logs = logs.join().unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
}

/// Console answers into a stdout nobody reads (`server | less` left on
/// its first page) fill its pipe: the tick that answers must not wait for
/// it.
#[cfg(target_os = "linux")]
#[test]
fn console_answers_into_a_stdout_nobody_reads_do_not_stop_the_tick() {
    let dir = scratch_dir("console-stalled-stdout");
    let (mut keyboard, mut child) = console_server(&dir);
    // Kept open, never read.
    let _stdout = child.stdout.take();
    let (listening, logs) = read_log(&mut child);
    // Far more than the pipe's 64 KiB of answers.
    for _ in 0..300 {
        keyboard.write_all(b"help\n").unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        http_get(listening.metrics, "/healthz").map(|(code, _)| code),
        Some(200),
        "the tick loop stopped on a console answer"
    );
    keyboard.write_all(b"shutdown\n").unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10))
        .expect("server did not exit within 10 s of the shutdown command");
    let logs = logs.join().unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
}

/// SIGTERM while the store opens (here held back by another connection's
/// write transaction) stops the server before it serves: it never
/// announces the game socket, and exits 0.
#[test]
fn a_signal_while_starting_stops_the_server_before_it_serves() {
    let dir = scratch_dir("startup-signal");
    // A first run creates the database.
    let mut first = serve(&dir);
    let (_, first_logs) = read_log(&mut first);
    first.kill().unwrap();
    first.wait().unwrap();
    drop(first_logs.join());

    let db = rusqlite::Connection::open(dir.join("data").join("inventory.sqlite3")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut child = serve(&dir);
    let stderr = child.stderr.take().unwrap();
    let (metrics_up, up) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(server::readiness::METRICS_ANNOUNCEMENT) {
                let _ = metrics_up.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    up.recv_timeout(Duration::from_secs(20))
        .expect("the metrics endpoint is announced");
    // The handlers are installed before it; the store waits for the lock.
    std::thread::sleep(Duration::from_millis(500));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    db.execute_batch("COMMIT").unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10))
        .expect("server did not exit within 10 s of SIGTERM");
    let logs = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        !logs.contains(server::readiness::GAME_ANNOUNCEMENT),
        "the game socket was announced: {logs}"
    );
    assert!(logs.contains("stopped before serving"), "{logs}");
}

/// Longest the console tests' typing may take (a few seconds on a slow
/// host).
#[cfg(target_os = "linux")]
const TYPING_LIMIT: Duration = Duration::from_secs(60);

/// `handle`'s result, waited for at most `limit`: a thread typing into a
/// terminal whose server has stopped reading it (gone, say) blocks in its
/// write for ever, and the test would hang instead of failing.
#[cfg(target_os = "linux")]
fn join_within<T>(handle: std::thread::JoinHandle<T>, limit: Duration, what: &str) -> T {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what} did not end within {limit:?}: the server stopped reading its console"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    handle.join().unwrap()
}

/// The server serving in `dir` with a pseudo-terminal as its console (the
/// side to type into returned, its echo read and thrown away) and its
/// logs read up to its announcements, then held unread.
#[cfg(target_os = "linux")]
fn serve_with_stderr_held(
    dir: &PathBuf,
) -> (KillOnDrop, std::fs::File, BufReader<ChildStderr>, Listening) {
    let (keyboard, terminal) = pty();
    let mut echo = keyboard.try_clone().unwrap();
    std::thread::spawn(move || std::io::copy(&mut echo, &mut std::io::sink()));
    let mut child = KillOnDrop(
        server(dir)
            .args(["--metrics-bind", "127.0.0.1:0"])
            .args(["--bind", "127.0.0.1:0", "--data-dir", "data"])
            .stdin(Stdio::from(terminal))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut announcements = Announcements::default();
    let listening = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no announcements");
        if let Some(listening) = announcements.read_line(line.trim_end()) {
            break listening;
        }
    };
    (child, keyboard, stderr, listening)
}

/// Logs into a stderr nobody reads (a terminal paused with Ctrl-S, a
/// collector that stalled) fill its pipe: the tick that logs must not wait
/// for it, and a shutdown still ends the process in time.
#[cfg(target_os = "linux")]
#[test]
fn logs_into_a_stderr_nobody_reads_do_not_stop_the_tick() {
    let dir = scratch_dir("stalled-stderr");
    let (mut child, mut keyboard, mut stderr, listening) = serve_with_stderr_held(&dir);
    // Each `say` logs its text: ~200 KB of lines, three pipes' worth.
    let text = "x".repeat(2000);
    let typing = std::thread::spawn(move || {
        for _ in 0..100 {
            if keyboard
                .write_all(format!("say {text}\n").as_bytes())
                .is_err()
            {
                return None;
            }
        }
        Some(keyboard)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        http_get(listening.metrics, "/healthz").map(|(code, _)| code),
        Some(200),
        "the tick loop stopped on a log line"
    );
    // 200 KB wait well within the bound: none dropped yet.
    let (_, metrics) = http_get(listening.metrics, "/metrics").unwrap();
    assert!(
        metrics.contains("\nlog_lines_dropped_total 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nconsole_answers_dropped_total 0\n"),
        "{metrics}"
    );
    let mut keyboard =
        join_within(typing, TYPING_LIMIT, "typing").expect("the console took every line");
    keyboard.write_all(b"shutdown\n").unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10))
        .expect("server did not exit within 10 s of the shutdown command");
    assert_eq!(status.code(), Some(0));
    let mut held = String::new();
    stderr.read_to_string(&mut held).unwrap();
    // What the pipe held when the process ended: the stall was real.
    let said = held.matches("admin say").count();
    assert!(
        (1..100).contains(&said),
        "{said} of 100 lines reached the pipe"
    );
}

/// Past the 8 MiB a stalled stderr may hold, log lines are dropped and
/// counted; once stderr is read again, a warning says at once how many,
/// the count /metrics gave: before the lines held, not queued behind them
/// (where, while the queue stays full, it would be dropped itself).
#[cfg(target_os = "linux")]
#[test]
fn log_lines_dropped_at_a_stalled_stderr_are_counted_and_told() {
    let dir = scratch_dir("dropped-logs");
    let (mut child, mut keyboard, mut stderr, listening) = serve_with_stderr_held(&dir);
    let dropped = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("log_lines_dropped_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no log_lines_dropped_total: {metrics}"))
    };
    // 2,400 lines of 4 KB: 9.6 MB, past the 8 MiB held.
    let text = "x".repeat(4_000);
    let typing = std::thread::spawn(move || {
        for _ in 0..2_400 {
            keyboard
                .write_all(format!("say {text}\n").as_bytes())
                .unwrap();
        }
        keyboard
    });
    let mut keyboard = join_within(typing, TYPING_LIMIT, "typing");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while Instant::now() < deadline {
        let (_, metrics) = http_get(listening.metrics, "/metrics").unwrap();
        let now = dropped(&metrics);
        if now > 0 && now == seen {
            break;
        }
        seen = now;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(seen > 0, "nothing dropped");
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        rest
    });
    std::thread::sleep(Duration::from_secs(1));
    keyboard.write_all(b"shutdown\n").unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10))
        .expect("server did not exit within 10 s of the shutdown command");
    assert_eq!(status.code(), Some(0));
    let rest = drain.join().unwrap();
    let at = rest
        .find("log lines dropped: stderr was not being read")
        .unwrap_or_else(|| panic!("no warning of {seen} dropped lines"));
    let warning = rest[at..].lines().next().unwrap_or_default();
    assert!(
        warning.contains(&format!("dropped={seen}")),
        "{warning:.200}"
    );
    // Written before the lines held, it says the gap is not there.
    assert!(
        warning.contains("the gap falls among or after the lines held"),
        "{warning:.200}"
    );
    let held_after = rest[at..].matches("admin say").count();
    assert!(
        held_after >= 1_000,
        "the warning came after the lines held ({held_after} after it)"
    );
    assert!(
        rest.contains("shutdown complete"),
        "the last lines were lost"
    );
}

/// A second server on a data directory in use exits at once with an
/// error naming the directory; `server audit` still reads it.
#[test]
fn a_second_server_on_a_data_dir_in_use_refuses_to_start_and_the_audit_still_runs() {
    let dir = scratch_dir("data-dir-lock");
    let mut first = serve(&dir);
    let (_, first_logs) = read_log(&mut first);

    let mut second = serve(&dir);
    let mut stderr = second.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_with_timeout(&mut second, Duration::from_secs(20));
    let logs = logs.join().unwrap();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(1)),
        "the second server exits with an error: {logs}"
    );
    assert!(
        logs.contains("is in use by another server process"),
        "{logs}"
    );

    let audit = output_within(
        server(&dir).args(["audit", "--data-dir", "data"]),
        RUN_LIMIT,
    );
    assert!(audit.status.success(), "{audit:?}");
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["balanced"], true);

    first.kill().unwrap();
    first.wait().unwrap();
    drop(first_logs.join());
}

/// `server audit` and `server token` read the config file as `server run`
/// does: its `data_dir` and `key_file` are theirs too.
#[test]
fn audit_and_token_read_the_config_file_like_the_server() {
    let dir = scratch_dir("subcommand-config");
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(
        dir.join("assets/server.toml"),
        "data_dir = \"elsewhere\"\nkey_file = \"server.key\"\n",
    )
    .unwrap();
    let key = shared::netcode::Key::from_bytes([7; 32]);
    std::fs::write(dir.join("server.key"), shared::keys::key_to_base64(&key)).unwrap();
    drop(server::persistence::SqliteStore::open(&dir.join("elsewhere")).unwrap());

    // `run`'s environment is none of theirs: a bad GAMESERVER_BIND does
    // not stop them.
    let output = output_within(
        server(&dir)
            .arg("audit")
            .env("GAMESERVER_BIND", "not an address"),
        RUN_LIMIT,
    );
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["balanced"], true);

    let output = output_within(
        server(&dir)
            .args(["token", "--client-id", "42", "--server", "127.0.0.1:7777"])
            .env("GAMESERVER_BIND", "not an address"),
        RUN_LIMIT,
    );
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("development key"), "{stderr}");
}
