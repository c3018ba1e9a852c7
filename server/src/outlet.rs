//! Output written by a thread of its own: the admin console's answers on
//! stdout, the logs on stderr.
//!
//! A stream nobody reads (a pipe into a pager left on its first page, a
//! terminal paused with Ctrl-S, a log collector that stalled) fills, and a
//! thread writing to it waits. Through an [`Outlet`] only the outlet's own
//! thread waits: the tick and the I/O thread queue their lines and go on.
//! Up to a bound of bytes wait; a line beyond it is dropped and counted,
//! and the next line written is told how many were dropped before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::metrics::Counter;

/// A queue of lines and the thread that writes them (see the module docs).
#[derive(Debug)]
pub(crate) struct Outlet {
    lines: Sender<Vec<u8>>,
    state: Arc<State>,
    limit: usize,
    dropped: Counter,
}

/// What the queuing side and the writing thread share.
#[derive(Debug, Default)]
struct State {
    /// Bytes queued and not yet written (each line counts at least one).
    queued: AtomicUsize,
    /// Lines dropped since the last line written.
    dropped_since: AtomicU64,
}

/// A line's share of the bound: its bytes, at least one so that
/// [`Outlet::flush`] waits for empty lines too.
fn cost(line: &[u8]) -> usize {
    line.len().max(1)
}

impl Outlet {
    /// Starts the thread `name`, which hands each queued line to `write`
    /// with the number of lines dropped just before it; up to `limit`
    /// bytes wait. Each dropped line adds one to `dropped`.
    ///
    /// # Errors
    /// The thread could not be started.
    pub(crate) fn start(
        name: &str,
        limit: usize,
        dropped: Counter,
        mut write: impl FnMut(&[u8], u64) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (lines, queue) = crossbeam_channel::unbounded::<Vec<u8>>();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for line in queue {
                    write(&line, shared.dropped_since.swap(0, Ordering::Relaxed));
                    shared.queued.fetch_sub(cost(&line), Ordering::Relaxed);
                }
            })?;
        Ok(Self {
            lines,
            state,
            limit,
            dropped,
        })
    }

    /// Queues `line`, never waiting; `false` when it was dropped because
    /// the queue holds its limit already.
    pub(crate) fn send(&self, line: Vec<u8>) -> bool {
        let cost = cost(&line);
        let queued = self.state.queued.fetch_add(cost, Ordering::Relaxed);
        if queued.saturating_add(cost) > self.limit || self.lines.send(line).is_err() {
            self.state.queued.fetch_sub(cost, Ordering::Relaxed);
            self.state.dropped_since.fetch_add(1, Ordering::Relaxed);
            self.dropped.inc();
            return false;
        }
        true
    }

    /// Queues `line` past the limit (a panic's message: rare, and what an
    /// operator most needs); `false` only when the writer is gone.
    pub(crate) fn send_past_limit(&self, line: Vec<u8>) -> bool {
        let cost = cost(&line);
        self.state.queued.fetch_add(cost, Ordering::Relaxed);
        if self.lines.send(line).is_err() {
            self.state.queued.fetch_sub(cost, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Waits, up to `limit`, for the lines queued so far to be written;
    /// whether they were.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.state.queued.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crossbeam_channel::{Receiver, bounded};

    /// A line as its write was handed it, with the drops before it.
    type Written = (Vec<u8>, u64);

    /// An outlet whose writes report what they were handed, then wait
    /// for the test's go-ahead.
    fn stalled(limit: usize) -> (Outlet, Sender<()>, Receiver<Written>, Counter) {
        let (go, gate) = bounded::<()>(0);
        let (wrote, written) = crossbeam_channel::unbounded();
        let dropped = Counter::default();
        let outlet = Outlet::start(
            "outlet-test",
            limit,
            dropped.clone(),
            move |line, before| {
                let _ = wrote.send((line.to_vec(), before));
                let _ = gate.recv();
            },
        )
        .unwrap();
        (outlet, go, written, dropped)
    }

    #[test]
    fn a_stalled_writer_holds_lines_up_to_the_limit_then_drops_and_counts() {
        let (outlet, go, written, dropped) = stalled(10);
        let next = || written.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(outlet.send(b"aaaa".to_vec()));
        // The thread is inside its write of the first line, which counts
        // against the limit until written.
        assert_eq!(next(), (b"aaaa".to_vec(), 0));
        assert!(outlet.send(b"bbbb".to_vec()));
        assert!(!outlet.send(b"ccc".to_vec()), "11 bytes > 10");
        assert!(outlet.send(b"dd".to_vec()), "exactly the limit");
        assert!(!outlet.send(Vec::new()), "even an empty line costs a byte");
        assert_eq!(dropped.get(), 2);
        assert!(
            !outlet.flush(Duration::from_millis(20)),
            "nothing written yet"
        );

        // The next line written is told about both drops, then the count
        // starts again.
        go.send(()).unwrap();
        assert_eq!(next(), (b"bbbb".to_vec(), 2));
        go.send(()).unwrap();
        assert_eq!(next(), (b"dd".to_vec(), 0));
        go.send(()).unwrap();
        assert!(outlet.flush(Duration::from_secs(5)));
        assert!(outlet.send(b"0123456789".to_vec()), "room again");
        assert_eq!(dropped.get(), 2);
    }
}
