//! A thread that panics while stderr is not read (a log collector that
//! stalled) still ends: the default panic hook wrote the message from the
//! panicking thread itself and held it on the full pipe for ever, so the
//! watchers that stop the server when one of its threads has ended
//! (`JoinHandle::is_finished`) never saw it end.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child this test runs as.
const CHILD: &str = "SERVER_PANIC_STDERR_CHILD";
const TEST: &str = "a_thread_that_panics_while_stderr_is_not_read_still_ends";

#[test]
fn a_thread_that_panics_while_stderr_is_not_read_still_ends() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
    let mut child = Command::new(std::env::current_exe().expect("this test's binary"))
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::null())
        // Never read while the child runs.
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the child");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the panicking thread did not end while stderr was full ({status:?})"
    );
}

/// Fills stderr's pipe with log lines until the `log-writer` waits on it,
/// then panics on a thread: exit code 0 when that thread ends within 5 s.
fn child() -> ! {
    let _guard =
        server::logging::init(server::logging::LogFormat::Text, "info").expect("logging set up");
    // About 1 MB of short lines, far more than a pipe holds (64 KiB on
    // Linux). A write of up to 4 KiB to a pipe waits until it fits whole:
    // with the writer waiting to fit a short line, a longer message cannot.
    for _ in 0..10_000 {
        tracing::info!("x");
    }
    std::thread::sleep(Duration::from_millis(300));
    let panicking = std::thread::spawn(|| panic!("{}", "a thread's fault; ".repeat(20)));
    let began = Instant::now();
    while !panicking.is_finished() && began.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Not through the guard: its flush would wait on the full pipe.
    std::process::exit(if panicking.is_finished() { 0 } else { 1 });
}
