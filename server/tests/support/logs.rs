//! What the server logs, captured: for tests that check a log line.

use std::sync::{Arc, Mutex, OnceLock};

use tracing::Dispatch;

/// A writer into a shared buffer, for [`logged`].
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A subscriber that keeps every info line's call site enabled for the
/// whole process. With one subscriber registered, tracing caches a call
/// site's interest from the first thread to reach it: a test on another
/// thread, without a subscriber, would have it cached as never, and the
/// line would not reach [`logged`]'s. With two, it asks them all.
fn keep_info_enabled() {
    static SINK: OnceLock<Dispatch> = OnceLock::new();
    SINK.get_or_init(|| {
        Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(std::io::sink)
                .finish(),
        )
    });
}

/// What `run` logs on this thread (the app runs its systems on it).
pub(crate) fn logged(run: impl FnOnce()) -> String {
    keep_info_enabled();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}
