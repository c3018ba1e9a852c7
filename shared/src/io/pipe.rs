//! A bounded crossbeam channel with one sender, whose receiver takes only
//! the messages whose sending has finished.
//!
//! Crossbeam's bounded channel sends in two steps: the sender claims a
//! slot, then writes the message into it. A receiver that reaches a
//! claimed slot before it is written spins until it is. That wait is a few
//! nanoseconds when the two threads run on two cores. When they share one
//! core and the sender is preempted between the two steps, the receiver
//! spins until the scheduler runs the sender again. The server's game tick
//! drains `net-io`'s events this way: `net-io` runs at a lower priority,
//! the tick's own timer is what preempts it, and a profile at 5,000
//! clients on a server pinned to one core caught one such drain taking
//! 29.8 ms, nearly a whole tick period (see `BENCHMARKS.md`).
//!
//! The sender here counts the messages it has finished sending and
//! publishes the count after each one. The receiver takes at most that
//! many, so it never reaches a slot still being written: a message in
//! flight is taken at the next drain instead of being waited for.
//!
//! The same holds the other way round: the game's commands go to `net-io`
//! through a pipe too, so `net-io` never spins on a tick preempted in the
//! middle of its send.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, SendError, Sender, TrySendError};

/// A bounded pipe of `capacity` messages: its one sender and one receiver.
pub fn pipe<T>(capacity: usize) -> (PipeSender<T>, PipeReceiver<T>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity);
    let published = Arc::new(AtomicU64::new(0));
    (
        PipeSender {
            inner: sender,
            sent: 0,
            published: Arc::clone(&published),
        },
        PipeReceiver {
            inner: receiver,
            taken: 0,
            published,
        },
    )
}

/// The sending side of a [`pipe`]. There is only one (it is not `Clone`):
/// the count it publishes is the count of every finished send.
#[derive(Debug)]
pub struct PipeSender<T> {
    inner: Sender<T>,
    sent: u64,
    published: Arc<AtomicU64>,
}

impl<T> PipeSender<T> {
    /// Sends `message` unless the pipe is full or its receiver is gone (the
    /// message is returned in the error).
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Disconnected`].
    pub fn try_send(&mut self, message: T) -> Result<(), TrySendError<T>> {
        self.inner.try_send(message)?;
        self.publish();
        Ok(())
    }

    /// Whether the pipe holds its capacity (a `try_send` now would fail).
    pub fn is_full(&self) -> bool {
        self.inner.is_full()
    }

    /// Sends `message`, waiting while the pipe is full; fails (returning
    /// it) only once the receiver is gone.
    ///
    /// # Errors
    /// [`SendError`] when the receiver is gone.
    pub fn send(&mut self, message: T) -> Result<(), SendError<T>> {
        self.inner.send(message)?;
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        self.sent += 1;
        // Release: whoever reads the count also sees the message written.
        self.published.store(self.sent, Ordering::Release);
    }
}

/// The receiving side of a [`pipe`].
#[derive(Debug)]
pub struct PipeReceiver<T> {
    inner: Receiver<T>,
    taken: u64,
    published: Arc<AtomicU64>,
}

impl<T> PipeReceiver<T> {
    /// Takes every message whose sending had finished when the call began,
    /// oldest first; never waits for the sender.
    pub fn try_iter(&mut self) -> impl Iterator<Item = T> + '_ {
        let ready = self.ready();
        (0..ready).map_while(|_| self.take())
    }

    /// Takes the oldest message if its sending has finished; never waits
    /// for the sender.
    pub fn try_recv(&mut self) -> Option<T> {
        if self.ready() == 0 {
            return None;
        }
        self.take()
    }

    /// How many messages had finished sending and are not taken yet: what
    /// [`try_recv`](Self::try_recv) takes, at most, before it waits on
    /// the sender's next ones.
    pub fn ready(&self) -> u64 {
        self.published.load(Ordering::Acquire) - self.taken
    }

    fn take(&mut self) -> Option<T> {
        let message = self.inner.try_recv().ok()?;
        self.taken += 1;
        Some(message)
    }

    /// How many messages wait in the pipe, those being sent included.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no message waits in the pipe.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_and_a_full_pipe_refuses_more() {
        let (mut tx, mut rx) = pipe(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2]);
        assert!(rx.is_empty());
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [3]);
        drop(rx);
        assert!(matches!(tx.try_send(4), Err(TrySendError::Disconnected(4))));
    }

    #[test]
    fn a_message_not_yet_published_waits_for_the_next_drain() {
        let (mut tx, mut rx) = pipe(8);
        tx.try_send(1).unwrap();
        // In the channel but not counted yet: as far as the receiver can
        // tell, a send that has claimed its slot and not finished.
        tx.inner.try_send(2).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1]);
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.len(), 1);
        tx.publish();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn a_blocking_send_waits_for_room() {
        const COUNT: u64 = 10_000;
        let (mut tx, mut rx) = pipe(1);
        let sender = std::thread::spawn(move || {
            for message in 0..COUNT {
                tx.send(message).unwrap();
            }
            tx
        });
        let mut next = 0;
        while next < COUNT {
            match rx.try_recv() {
                Some(message) => {
                    assert_eq!(message, next);
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        let mut tx = sender.join().unwrap();
        assert_eq!(rx.try_recv(), None);
        drop(rx);
        assert_eq!(tx.send(COUNT).unwrap_err().into_inner(), COUNT);
    }

    #[test]
    fn every_message_arrives_once_in_order_across_threads() {
        const COUNT: u64 = 200_000;
        let (mut tx, mut rx) = pipe(64);
        let sender = std::thread::spawn(move || {
            for mut message in 0..COUNT {
                loop {
                    match tx.try_send(message) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            message = back;
                            std::thread::yield_now();
                        }
                        Err(TrySendError::Disconnected(_)) => panic!("receiver gone"),
                    }
                }
            }
        });
        let mut next = 0;
        while next < COUNT {
            let finished = sender.is_finished();
            for message in rx.try_iter() {
                assert_eq!(message, next);
                next += 1;
            }
            // A sender that finished has published every message it sent.
            assert!(!finished || next == COUNT, "lost after {next}");
            std::thread::yield_now();
        }
        sender.join().unwrap();
        assert!(rx.is_empty());
    }
}
