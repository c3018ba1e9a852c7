//! The `db-reader` thread: reads accounts off the tick.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::Poll;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use super::{AccountState, InventoryStore, StoreError};

/// Reads queued for the reader thread at most, and as many results
/// waiting to be picked up. Accounts asked for beyond it wait in the
/// [`AccountReader`]'s own queue, in the order they were asked for, and
/// go to the thread as it takes the queued ones: a burst of connects
/// never blocks the caller and never loses an account.
pub const READER_QUEUE: usize = 64;

/// A read to do: the account and the slots its inventory is prepared for.
type Job = (u64, usize);

/// What became of an account the caller asked for.
enum Want<T> {
    /// Not read yet.
    Waiting,
    /// Read (and prepared); handed out at the next ask.
    Done(Result<T, StoreError>),
}

/// Owns the `db-reader` thread, which reads accounts from a store of its
/// own (a read-only connection next to the writer's) and turns each into
/// the caller's `T` with `prepare`, so that decoding runs off the tick
/// too. Ask with [`AccountReader::poll_load`] until it is ready.
///
/// At most one read of an account is under way at a time: an account
/// asked for again (its player came back) while a read of it is queued or
/// running gets that read's result instead of a second read. A result
/// read before the caller had the account in memory could otherwise be
/// handed out after the first result had let the account change, in a
/// later session.
///
/// Memory stays bounded by the accounts asked for and not yet handed out
/// or forgotten (the players online): results for accounts nobody waits
/// for are dropped.
///
/// Dropping it drops the reads still queued, waits for the one running
/// and joins the thread.
pub struct AccountReader<T> {
    jobs: Option<Sender<Job>>,
    /// The thread's end of `jobs`, to drop the queued reads on drop.
    queued: Receiver<Job>,
    loaded: Receiver<(u64, Result<T, StoreError>)>,
    /// The accounts asked for and not yet handed out or forgotten.
    wanted: HashMap<u64, Want<T>>,
    /// Accounts with a read queued or running (result not yet received).
    reading: HashSet<u64>,
    /// Wanted accounts whose read is not queued yet (the queue was full),
    /// oldest first.
    unsent: VecDeque<Job>,
    /// The thread has ended: nothing more will be read.
    gone: bool,
    thread: Option<JoinHandle<()>>,
}

impl<T> std::fmt::Debug for AccountReader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountReader")
            .field("wanted", &self.wanted.len())
            .field("reading", &self.reading.len())
            .field("unsent", &self.unsent.len())
            .field("gone", &self.gone)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> AccountReader<T> {
    /// Starts the `db-reader` thread on `store`; every account read is
    /// handed to `prepare` there, with the slots it was asked for.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(
        mut store: Box<dyn InventoryStore>,
        prepare: fn(AccountState, usize) -> T,
    ) -> std::io::Result<Self> {
        let (jobs, queued) = crossbeam_channel::bounded::<Job>(READER_QUEUE);
        let (loaded_tx, loaded) = crossbeam_channel::bounded(READER_QUEUE);
        let job_rx = queued.clone();
        let thread = std::thread::Builder::new()
            .name("db-reader".into())
            .spawn(move || {
                for (account, slots) in job_rx {
                    let result = store
                        .load_account(account)
                        .map(|state| prepare(state, slots));
                    if loaded_tx.send((account, result)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            queued,
            loaded,
            wanted: HashMap::new(),
            reading: HashSet::new(),
            unsent: VecDeque::new(),
            gone: false,
            thread: Some(thread),
        })
    }
}

impl<T> AccountReader<T> {
    /// `account`, read and prepared for `slots` slots, or
    /// [`Poll::Pending`] while it is queued or being read; never blocks.
    /// The first ask queues the read (or, with the queue full, remembers
    /// it for a later ask); ask again until it is ready.
    ///
    /// # Errors
    /// The store's error; [`StoreError::ReaderGone`] once the thread has
    /// ended (a store that panicked).
    pub fn poll_load(&mut self, account: u64, slots: usize) -> Poll<Result<T, StoreError>> {
        self.receive();
        match self.wanted.remove(&account) {
            Some(Want::Done(result)) => return Poll::Ready(result),
            _ if self.gone => {
                self.unsent.retain(|&(a, _)| a != account);
                return Poll::Ready(Err(StoreError::ReaderGone));
            }
            Some(Want::Waiting) => {}
            None if self.reading.contains(&account) => {}
            None => self.unsent.push_back((account, slots)),
        }
        self.wanted.insert(account, Want::Waiting);
        self.send();
        Poll::Pending
    }

    /// Nobody waits for `account` any more: its result, if it comes, is
    /// dropped (a read already running finishes).
    pub fn forget(&mut self, account: u64) {
        if self.wanted.remove(&account).is_some() && !self.reading.contains(&account) {
            self.unsent.retain(|&(a, _)| a != account);
        }
    }

    /// Whether the thread has ended (a store that panicked): nothing is
    /// read any more.
    pub fn is_stopped(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Takes the thread's results: kept for the accounts still wanted.
    fn receive(&mut self) {
        loop {
            match self.loaded.try_recv() {
                Ok((account, result)) => {
                    self.reading.remove(&account);
                    if let Some(want) = self.wanted.get_mut(&account) {
                        *want = Want::Done(result);
                    }
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.gone = true;
                    return;
                }
            }
        }
    }

    /// Queues the unsent reads, oldest first, while the queue has room.
    fn send(&mut self) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        while let Some(&job) = self.unsent.front() {
            match jobs.try_send(job) {
                Ok(()) => {
                    self.unsent.pop_front();
                    self.reading.insert(job.0);
                }
                Err(TrySendError::Full(_)) => return,
                Err(TrySendError::Disconnected(_)) => {
                    self.gone = true;
                    return;
                }
            }
        }
    }
}

impl<T> Drop for AccountReader<T> {
    fn drop(&mut self) {
        self.jobs = None;
        // The reads still queued are not wanted any more; the thread ends
        // after the one it is doing.
        for _ in self.queued.try_iter() {}
        // Drain results so the thread never waits on a full result queue;
        // the iteration ends when the thread exits.
        for _ in self.loaded.iter() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use crossbeam_channel::RecvTimeoutError;

    use super::*;
    use crate::persistence::{AuditReport, BatchWrites, WorldState};

    /// A store that answers an account with its id as the inventory
    /// version, counts its reads per account, and holds a read of
    /// `gated` until the test opens the gate (or 10 s pass: then it
    /// fails, and so does the test).
    struct GatedStore {
        gated: u64,
        gate: Receiver<()>,
        entered: Sender<u64>,
        reads: Arc<Mutex<HashMap<u64, usize>>>,
        panic_on: Option<u64>,
    }

    impl InventoryStore for GatedStore {
        fn load_world(&mut self) -> Result<WorldState, StoreError> {
            Ok(WorldState::default())
        }
        fn load_account(&mut self, account: u64) -> Result<AccountState, StoreError> {
            *self
                .reads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(account)
                .or_default() += 1;
            assert_ne!(self.panic_on, Some(account), "the store broke");
            let _ = self.entered.send(account);
            if account == self.gated {
                self.gate
                    .recv_timeout(Duration::from_secs(10))
                    .map_err(|_| StoreError::Injected)?;
            }
            Ok(AccountState {
                inventory: Some(shared::protocol::inventory::InventorySnapshot {
                    version: account,
                    slots: Vec::new(),
                }),
                applied: Vec::new(),
            })
        }
        fn commit(&mut self, _: &BatchWrites) -> Result<(), StoreError> {
            Err(StoreError::Injected)
        }
        fn audit(&mut self) -> Result<AuditReport, StoreError> {
            Err(StoreError::Injected)
        }
    }

    struct Gates {
        open: Sender<()>,
        entered: Receiver<u64>,
        reads: Arc<Mutex<HashMap<u64, usize>>>,
    }

    impl Gates {
        fn reads(&self, account: u64) -> usize {
            self.reads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&account)
                .copied()
                .unwrap_or(0)
        }

        /// Waits (bounded) until the thread has started reading `account`.
        fn entered(&self, account: u64) {
            loop {
                match self.entered.recv_timeout(Duration::from_secs(10)) {
                    Ok(a) if a == account => return,
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                        panic!("account {account} was never read")
                    }
                }
            }
        }
    }

    /// The version each account's inventory is read with (its id), or
    /// the error.
    fn prepare(state: AccountState, slots: usize) -> (u64, usize) {
        (state.inventory.map_or(0, |i| i.version), slots)
    }

    fn reader(gated: u64, panic_on: Option<u64>) -> (AccountReader<(u64, usize)>, Gates) {
        let (open, gate) = crossbeam_channel::unbounded();
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let reads = Arc::new(Mutex::new(HashMap::new()));
        let store = GatedStore {
            gated,
            gate,
            entered: entered_tx,
            reads: Arc::clone(&reads),
            panic_on,
        };
        let reader = AccountReader::spawn(Box::new(store), prepare).unwrap();
        (
            reader,
            Gates {
                open,
                entered,
                reads,
            },
        )
    }

    /// Asks for `account` until it is ready (bounded).
    fn wait(
        reader: &mut AccountReader<(u64, usize)>,
        account: u64,
    ) -> Result<(u64, usize), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Poll::Ready(result) = reader.poll_load(account, 24) {
                return result.map_err(|e| e.to_string());
            }
            assert!(Instant::now() < deadline, "account {account} never loaded");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// With the thread held on one read, more accounts are asked for than
    /// the queue holds: every ask returns at once, and once the thread
    /// goes on every account is read, once.
    #[test]
    fn accounts_beyond_the_queue_wait_their_turn_and_are_read_once() {
        let (mut reader, gates) = reader(1, None);
        assert!(reader.poll_load(1, 24).is_pending());
        gates.entered(1);
        let accounts = 2..(2 + 2 * READER_QUEUE as u64);
        for account in accounts.clone() {
            assert!(reader.poll_load(account, 24).is_pending());
        }
        // Asked again while full: still waiting, nothing asked twice.
        for account in accounts.clone() {
            assert!(reader.poll_load(account, 24).is_pending());
        }
        assert_eq!(reader.unsent.len(), READER_QUEUE);
        gates.open.send(()).unwrap();
        assert_eq!(wait(&mut reader, 1), Ok((1, 24)));
        for account in accounts {
            assert_eq!(wait(&mut reader, account), Ok((account, 24)));
            assert_eq!(gates.reads(account), 1, "account {account}");
        }
        assert!(reader.wanted.is_empty() && reader.reading.is_empty());
    }

    /// A result for an account forgotten meanwhile is dropped; an account
    /// forgotten and asked for again while its read runs gets that read,
    /// not a second one.
    #[test]
    fn a_forgotten_account_is_dropped_and_one_asked_again_shares_its_read() {
        let (mut reader, gates) = reader(1, None);
        assert!(reader.poll_load(1, 24).is_pending());
        gates.entered(1);
        assert!(reader.poll_load(2, 24).is_pending());
        reader.forget(2);
        reader.forget(1);
        assert!(reader.poll_load(1, 24).is_pending());
        gates.open.send(()).unwrap();
        assert_eq!(wait(&mut reader, 1), Ok((1, 24)));
        assert_eq!(gates.reads(1), 1, "one read for both asks");
        // Account 2's result came (it was queued) and was dropped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reader.reading.is_empty() {
            assert!(Instant::now() < deadline, "account 2's read never ended");
            reader.receive();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(reader.wanted.is_empty(), "nothing kept for account 2");
    }

    /// An account forgotten before its read was queued is not read.
    #[test]
    fn an_account_forgotten_before_its_turn_is_not_read() {
        let (mut reader, gates) = reader(1, None);
        assert!(reader.poll_load(1, 24).is_pending());
        gates.entered(1);
        let accounts = 2..(2 + READER_QUEUE as u64 + 1);
        for account in accounts.clone() {
            assert!(reader.poll_load(account, 24).is_pending());
        }
        let last = accounts.end - 1;
        reader.forget(last);
        assert!(reader.unsent.is_empty());
        gates.open.send(()).unwrap();
        for account in 2..last {
            assert_eq!(wait(&mut reader, account), Ok((account, 24)));
        }
        assert_eq!(gates.reads(last), 0);
    }

    /// A store that panics ends the thread: every load then fails with
    /// `ReaderGone`, and the reader says it stopped.
    #[test]
    fn a_reader_whose_thread_died_fails_loads_and_says_so() {
        let (mut reader, gates) = reader(0, Some(1));
        assert!(reader.poll_load(1, 24).is_pending());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reader.is_stopped() {
            assert!(Instant::now() < deadline, "the thread still runs");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            wait(&mut reader, 1),
            Err(StoreError::ReaderGone.to_string())
        );
        assert_eq!(
            wait(&mut reader, 2),
            Err(StoreError::ReaderGone.to_string())
        );
        assert_eq!(gates.reads(2), 0);
        assert!(reader.wanted.is_empty());
    }
}
