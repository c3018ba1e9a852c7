//! The single-player client, `client_headless play`, driven by a script
//! on its input: what is piped in arrives whole before the handshake
//! ends, and must still run once the connection is up (it was refused
//! line by line, "not connected yet", and the run exited 0 having done
//! nothing); and its answers are printed before it leaves (the end of
//! the input said goodbye at once, and nothing the server answered was
//! shown).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{
    KillOnDrop, ServerOptions, ServerProcess, client_binary, exit_within, output_within_input,
};

fn play(server: &ServerProcess, client_id: &str) -> Command {
    let mut command = Command::new(client_binary());
    command.args([
        "play",
        "--dev",
        "--client-id",
        client_id,
        "--server",
        &server.game.to_string(),
    ]);
    command
}

#[test]
fn a_script_piped_to_play_runs_once_connected() {
    let server = ServerProcess::start(&ServerOptions::default());
    let dir = std::env::temp_dir().join(format!("e2e-play-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.txt");
    // A line in another encoding: refused alone, in its turn (after the
    // line before it), and the rest runs.
    let mut lines = b"/stats\n/frobnicate\ncaf\xe9\n".to_vec();
    lines.extend_from_slice(b"/say hello from a script\n/inv\n/w nobody hi\n/stats\n");
    std::fs::write(&script, lines).unwrap();
    let lines_before = server.metric("chat_lines_total");
    let output = output_within_input(
        &mut play(&server, "77"),
        Stdio::from(std::fs::File::open(&script).unwrap()),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(!stdout.contains("not connected yet"), "{stdout}");
    // Each line answered in its turn, those before the connection too.
    let stats = stdout.find("rtt ");
    let unknown = stdout.find("unknown command /frobnicate");
    let not_text = stdout.find("not UTF-8");
    assert!(
        stats.is_some() && stats < unknown && unknown < not_text,
        "{stdout}"
    );
    // The line reached the server: its speaker's own copy went out.
    assert!(
        server.metric("chat_lines_total") > lines_before,
        "the server delivered no chat line\n{stdout}"
    );
    // And every answer was printed before the goodbye.
    for answer in ["hello from a script", "inventory v", "chat refused"] {
        assert!(stdout.contains(answer), "no {answer:?} in\n{stdout}");
    }
}

/// A script longer than the commands kept for the connection runs whole:
/// lines past the first 256 were dropped ("not connected yet: command
/// dropped") while the handshake went on, as stdin was read to its end.
#[test]
fn a_script_longer_than_the_connect_queue_runs_whole() {
    let server = ServerProcess::start(&ServerOptions::default());
    let dir = std::env::temp_dir().join(format!("e2e-play-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.txt");
    std::fs::write(&script, "/stats\n".repeat(300)).unwrap();
    // The server paused for a second: the whole script is read while the
    // handshake waits.
    let pid = server.pid().to_string();
    let signal = move |name: &str| {
        let status = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(status.success(), "kill {name}");
    };
    signal("-STOP");
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        signal("-CONT");
    });
    let output = output_within_input(
        &mut play(&server, "78"),
        Stdio::from(std::fs::File::open(&script).unwrap()),
        Duration::from_secs(30),
    );
    resume.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{:?}\n{stdout}", output.status);
    assert!(!stdout.contains("not connected yet"), "{stdout}");
    assert_eq!(stdout.matches("rtt ").count(), 300, "{stdout}");
}

/// A script whose connection never comes up still has its lines that
/// needed none answered: kept behind the commands waiting for the
/// connection, they were dropped with them when it failed.
#[test]
fn answers_kept_behind_waiting_commands_are_printed_when_the_connection_fails() {
    // A port nothing listens on: the handshake times out.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut command = Command::new(client_binary());
    command.args([
        "play",
        "--dev",
        "--client-id",
        "79",
        "--server",
        &addr.to_string(),
    ]);
    let dir = std::env::temp_dir().join(format!("e2e-play-closed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.txt");
    std::fs::write(&script, b"/inv\n/frobnicate\n").unwrap();
    let output = output_within_input(
        &mut command,
        Stdio::from(std::fs::File::open(&script).unwrap()),
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let unknown = stdout.find("unknown command /frobnicate");
    let ended = stdout.find("disconnected:");
    assert!(
        unknown.is_some() && unknown < ended,
        "{:?}\n{stdout}",
        output.status
    );
}

/// Output piped to a reader that quits (`play ... | grep -m1 welcome`):
/// the next line printed panicked the client (exit 101, no goodbye, the
/// server holding its slot until a timeout). It leaves, saying goodbye.
#[test]
fn a_reader_that_goes_away_ends_the_session_with_a_goodbye() {
    let server = ServerProcess::start(&ServerOptions::default());
    let mut child = KillOnDrop(
        play(&server, "78")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("welcome!") {
        line.clear();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "no welcome");
    }
    assert_eq!(server.metric("connected_clients"), 1.0);
    drop(stdout);
    // Something to print, to a reader that is gone.
    stdin.write_all(b"/stats\n").unwrap();
    stdin.flush().unwrap();
    let (status, stderr) = exit_within(&mut child, Duration::from_secs(10), "play still runs");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Its goodbye ended the session at once, not the server's timeout.
    server.sessions_end_soon("the session outlived its client");
}

/// `play ... </dev/null` as a smoke test: the end of input before the
/// connection is up waits for it (it disconnected at once and exited 0,
/// server up or not), so it exits 0 having connected and left, and 1 when
/// nothing answered.
#[test]
fn an_empty_input_connects_and_leaves_or_fails() {
    let server = ServerProcess::start(&ServerOptions::default());
    let output = output_within_input(
        &mut play(&server, "80"),
        Stdio::null(),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("connected (slot"), "{stdout}");

    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let output = output_within_input(
        Command::new(client_binary()).args([
            "play",
            "--dev",
            "--client-id",
            "81",
            "--server",
            &addr.to_string(),
        ]),
        Stdio::null(),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("disconnected: "), "{stdout}");
}
