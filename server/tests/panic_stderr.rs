//! A thread that panics while stderr is not read (a log collector that
//! stalled) still ends: the default panic hook wrote the message from the
//! panicking thread itself and held it on the full pipe for ever, so the
//! watchers that stop the server when one of its threads has ended
//! (`JoinHandle::is_finished`) never saw it end. And the message is not
//! lost: it is written once stderr is read again.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set in the child this test runs as.
const CHILD: &str = "SERVER_PANIC_STDERR_CHILD";
const TEST: &str = "a_thread_that_panics_while_stderr_is_not_read_still_ends";
/// The panic's message, longer than a log line (see `child`).
const FAULT: &str = "a thread's fault; ";

#[test]
fn a_thread_that_panics_while_stderr_is_not_read_still_ends() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
    let mut child = Command::new(std::env::current_exe().expect("this test's binary"))
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        // No backtrace to symbolize while the clock runs.
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        // Not read until the child said how its thread fared.
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the child");
    let stdout = child.stdout.take().expect("the child's stdout");
    let (said, verdict) = mpsc::channel();
    std::thread::spawn(move || {
        // The harness's own `test NAME ... ` may begin the line.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            for verdict in ["thread ended", "thread stuck"] {
                if line.ends_with(verdict) {
                    let _ = said.send(verdict);
                }
            }
        }
    });
    let verdict = verdict.recv_timeout(Duration::from_secs(60));
    // Now read stderr: the log lines held, then the panic's message.
    let mut stderr = child.stderr.take().expect("the child's stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("poll the child").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = reader.join().expect("the stderr reader");
    assert_eq!(
        verdict,
        Ok("thread ended"),
        "the panicking thread did not end while stderr was full"
    );
    assert!(
        stderr.contains("panicked at") && stderr.contains(FAULT),
        "the panic's message was not written: {} bytes of stderr, ending {:?}",
        stderr.len(),
        &stderr[stderr.len().saturating_sub(300)..]
    );
}

/// Fills stderr's pipe with log lines until the `log-writer` waits on it,
/// then panics on a thread; says on stdout whether that thread ended
/// within 5 s, then waits for the logs to be written (the parent reads
/// stderr from then on).
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
    let panicking = std::thread::spawn(|| panic!("{}", FAULT.repeat(20)));
    let began = Instant::now();
    while !panicking.is_finished() && began.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ended = panicking.is_finished();
    println!(
        "{}",
        if ended {
            "thread ended"
        } else {
            "thread stuck"
        }
    );
    let flushed = server::logging::flush(Duration::from_secs(30));
    std::process::exit(if ended && flushed { 0 } else { 1 });
}
