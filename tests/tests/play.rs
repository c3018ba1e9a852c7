//! The single-player client, `client_headless play`, driven by a script
//! on its input: what is piped in arrives whole before the handshake
//! ends, and must still run once the connection is up (it was refused
//! line by line, "not connected yet", and the run exited 0 having done
//! nothing).

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{ServerOptions, ServerProcess, client_binary, output_within_input};

#[test]
fn a_script_piped_to_play_runs_once_connected() {
    let server = ServerProcess::start(&ServerOptions::default());
    let dir = std::env::temp_dir().join(format!("e2e-play-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.txt");
    std::fs::write(&script, "/say hello from a script\n/stats\n").unwrap();
    let lines_before = server.metric("chat_lines_total");
    let output = output_within_input(
        Command::new(client_binary()).args([
            "play",
            "--dev",
            "--client-id",
            "77",
            "--server",
            &server.game.to_string(),
        ]),
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
    // The line reached the server: its speaker's own copy went out.
    assert!(
        server.metric("chat_lines_total") > lines_before,
        "the server delivered no chat line\n{stdout}"
    );
}
