//! A child process that cannot outlive its test (shared with the e2e
//! crate, which includes this file and re-exports it).

use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped when this handle drops:
/// when the test ends, and also when it panics before stopping the process
/// itself. Reaches the [`Child`] through `Deref`.
#[allow(
    unreachable_pub,
    reason = "public for the e2e crate, which re-exports it; private in the server's tests"
)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Kills and reaps the process now; harmless if it exited already.
    #[allow(
        unreachable_pub,
        reason = "public for the e2e crate, which re-exports it; private in the server's tests"
    )]
    pub fn kill_and_reap(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Runs `command` to its end and collects its output, as
/// [`Command::output`] does (stdin is null), but for at most `limit`: a
/// process still running then is killed and the test fails (a server
/// that should refuse to start and serves instead fails its test, not
/// hangs it).
#[allow(
    unreachable_pub,
    dead_code,
    reason = "public for the e2e crate, which re-exports it; not every test binary including this file runs a command to its end"
)]
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    output_within_input(command, Stdio::null(), limit)
}

/// [`output_within`], with `stdin` as the command's input.
#[allow(
    unreachable_pub,
    dead_code,
    reason = "public for the e2e crate, which re-exports it; not every test binary including this file runs a command to its end"
)]
pub fn output_within_input(command: &mut Command, stdin: Stdio, limit: Duration) -> Output {
    let mut child = KillOnDrop(
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}")),
    );
    // Read on threads, so that a full pipe never stalls the process.
    let stdout = read_to_end_on_a_thread(child.stdout.take());
    let stderr = read_to_end_on_a_thread(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child process") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} still ran after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("the stdout reader"),
        stderr: stderr.join().expect("the stderr reader"),
    }
}

/// Everything `pipe` yields until it closes, read on a thread of its own.
#[allow(dead_code, reason = "used by `output_within_input` only")]
fn read_to_end_on_a_thread<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}
