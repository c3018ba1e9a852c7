//! The `db-writer` thread: commits batches off the tick.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use super::{BatchWrites, InventoryStore, StoreError};

/// Batches queued for the writer at most. The inventory keeps one batch in
/// flight, so a full queue means a caller bug; [`StoreWriter::submit`]
/// then hands the batch back instead of blocking.
pub const WRITER_QUEUE: usize = 4;

/// A finished commit.
#[derive(Debug)]
pub struct CommitDone {
    /// The caller's tag for the batch.
    pub tag: u64,
    /// The outcome; `Ok` means durable.
    pub result: Result<(), StoreError>,
    /// How long the commit took on the writer thread.
    pub commit_time: Duration,
    /// When the batch was submitted.
    pub submitted: Instant,
}

/// Owns the writer thread. Dropping it closes the queue and waits for the
/// thread to finish the batches already queued.
pub struct StoreWriter {
    jobs: Option<Sender<(u64, Instant, BatchWrites)>>,
    done: Receiver<CommitDone>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Starts the `db-writer` thread on `store`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(mut store: Box<dyn InventoryStore>) -> std::io::Result<Self> {
        let (jobs, job_rx) =
            crossbeam_channel::bounded::<(u64, Instant, BatchWrites)>(WRITER_QUEUE);
        let (done_tx, done) = crossbeam_channel::bounded(WRITER_QUEUE);
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || {
                for (tag, submitted, batch) in job_rx {
                    let start = Instant::now();
                    let result = store.commit(&batch);
                    if let Err(error) = &result {
                        tracing::error!(%error, "inventory commit failed; rolled back");
                    }
                    let done = CommitDone {
                        tag,
                        result,
                        commit_time: start.elapsed(),
                        submitted,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues a batch without blocking.
    ///
    /// # Errors
    /// Gives the batch back when the queue is full or the thread is gone.
    pub fn submit(&self, tag: u64, batch: BatchWrites) -> Result<(), Box<BatchWrites>> {
        let Some(jobs) = &self.jobs else {
            return Err(Box::new(batch));
        };
        match jobs.try_send((tag, Instant::now(), batch)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, _, b)) | TrySendError::Disconnected((_, _, b))) => {
                Err(Box::new(b))
            }
        }
    }

    /// A finished commit, if any, without blocking.
    ///
    /// # Errors
    /// [`StoreError::WriterGone`] once the thread has ended (a store that
    /// panicked) with nothing left to report: a batch in flight then never
    /// finishes.
    pub fn try_done(&self) -> Result<Option<CommitDone>, StoreError> {
        match self.done.try_recv() {
            Ok(done) => Ok(Some(done)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(StoreError::WriterGone),
        }
    }

    /// Whether the thread has ended (a store that panicked): nothing
    /// submitted is committed any more.
    pub fn is_stopped(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits up to `timeout` for a finished commit (for shutdown and tests,
    /// never in the tick); `None` when none finished in time.
    ///
    /// # Errors
    /// [`StoreError::WriterGone`] once the thread has ended with nothing
    /// left to report.
    pub fn wait_done(&self, timeout: Duration) -> Result<Option<CommitDone>, StoreError> {
        match self.done.recv_timeout(timeout) {
            Ok(done) => Ok(Some(done)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(StoreError::WriterGone),
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.jobs = None;
        // Drain results so the thread never waits on a full result queue;
        // the iteration ends when the thread exits.
        for _ in self.done.iter() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::{AccountState, AuditReport, WorldState};

    /// A store whose commit panics, ending the thread.
    struct Broken;

    impl InventoryStore for Broken {
        fn load_world(&mut self) -> Result<WorldState, StoreError> {
            Err(StoreError::WriterGone)
        }
        fn load_account(&mut self, _: u64) -> Result<AccountState, StoreError> {
            Err(StoreError::WriterGone)
        }
        fn commit(&mut self, _: &BatchWrites) -> Result<(), StoreError> {
            panic!("the store broke")
        }
        fn audit(&mut self) -> Result<AuditReport, StoreError> {
            Err(StoreError::WriterGone)
        }
    }

    /// A writer thread that stopped is said to have: the exit said the
    /// last batch was not stored "within 6s", as if the disk were slow.
    #[test]
    fn waiting_on_a_stopped_writer_says_it_stopped() {
        let writer = StoreWriter::spawn(Box::new(Broken)).unwrap();
        writer.submit(1, BatchWrites::default()).unwrap();
        assert!(matches!(
            writer.wait_done(Duration::from_secs(30)),
            Err(StoreError::WriterGone)
        ));
    }
}
