//! Exactly-once, in-order verification of reliable chat traffic.
//!
//! Two independent checks run on every connection of a bot:
//!
//! 1. **Sequence check** on every [`ChatLine`] received, whoever said it: the
//!    server numbers the lines it sends to one connection 1, 2, 3, ... A
//!    repeat is a *duplicate*; a number above the next expected one opens a
//!    gap; a line that later fills a gap arrived *out of order*; a gap still
//!    open when the connection ends is *lost*.
//! 2. **Own-line check**: each line the bot says carries a nonce
//!    (`b<account>#<n>`). The server answers every `ChatSend` of a member in
//!    session with exactly one of: its own copy (`ChatLine` with `from` =
//!    the speaker) or a
//!    [`ChatRejected`](shared::protocol::chat::ChatRejected). Its own copy
//!    comes back in every scope (`server/src/chat/room.rs`, `ChatRoom::say`:
//!    global lines go to every member, the speaker included; nearby lines to
//!    the members within the radius *and always the speaker*, or only the
//!    speaker when it has no position; a whisper to `[speaker, recipient]`).
//!    Refusals: `RateLimited`, `Muted`, `TooLong`, `Empty`,
//!    `UnknownRecipient` (a whisper to someone offline). The one send with
//!    no answer at all is a kicked flooder's, which is disconnected anyway.
//!    So every line said is `sent`; an own copy coming back is `delivered`
//!    (once), again `duplicate`, or ahead of an older line still awaited
//!    `out_of_order`. A `ChatRejected` answers the oldest awaited line: it
//!    is `rejected`, not lost. Lines still awaited when the connection ends
//!    are `lost`.
//!
//! The bot keeps at most one line awaited: the server encodes `ChatLine`s
//! and `ChatRejected`s in two independent systems, so a refusal and a copy
//! produced in the same tick may leave in either order, and a
//! `ChatRejected` does not say which line it refuses.
//!
//! Before a connection ends on purpose the bot stops talking and waits
//! (bounded) until nothing is awaited, so `lost` means lost, not "still in
//! flight".

use std::collections::{BTreeSet, VecDeque};

use serde::Serialize;
use shared::protocol::chat::ChatLine;

/// Most sequence gaps tracked at once; gaps beyond it are counted lost at
/// once (a connection that far behind has failed anyway).
const MAX_TRACKED_GAPS: usize = 4096;

/// Counters of reliable delivery, summed over bots and connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ReliableStats {
    /// Own lines said (the server answers each with its copy or a refusal).
    pub(crate) sent: u64,
    /// Own lines whose copy came back (counted once each).
    pub(crate) delivered: u64,
    /// Lines received again: a repeated sequence number or own copy.
    pub(crate) duplicates: u64,
    /// Lines that arrived after a later one: a filled sequence gap or an own
    /// copy overtaking an older awaited one.
    pub(crate) out_of_order: u64,
    /// Own lines never answered plus sequence numbers never received, by the
    /// end of their connection.
    pub(crate) lost: u64,
    /// Own lines the server refused with a `ChatRejected`.
    pub(crate) rejected: u64,
    /// Every `ChatLine` received (own copies, other players', system).
    pub(crate) lines_received: u64,
}

impl ReliableStats {
    /// Adds `other` into `self`.
    pub(crate) fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.lost += other.lost;
        self.rejected += other.rejected;
        self.lines_received += other.lines_received;
    }

    /// Nothing duplicated, reordered or lost.
    pub(crate) fn exactly_once(&self) -> bool {
        self.duplicates == 0 && self.out_of_order == 0 && self.lost == 0
    }
}

/// The chat verifier of one bot (see the module documentation).
#[derive(Debug)]
pub(crate) struct ChatVerifier {
    account: u64,
    last_seq: u64,
    gaps: BTreeSet<u64>,
    awaited: VecDeque<u64>,
    next_nonce: u64,
    highest_answered: u64,
    stats: ReliableStats,
}

impl ChatVerifier {
    /// A verifier for the bot with this account id.
    pub(crate) fn new(account: u64) -> Self {
        Self {
            account,
            last_seq: 0,
            gaps: BTreeSet::new(),
            awaited: VecDeque::new(),
            next_nonce: 1,
            highest_answered: 0,
            stats: ReliableStats::default(),
        }
    }

    /// Own lines awaiting their copy.
    pub(crate) fn awaited(&self) -> usize {
        self.awaited.len()
    }

    /// Registers a line about to be said and returns its text.
    pub(crate) fn next_line(&mut self, body: &str) -> String {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.awaited.push_back(nonce);
        self.stats.sent += 1;
        format!("b{}#{nonce} {body}", self.account)
    }

    /// Forgets the last line registered by [`next_line`](Self::next_line)
    /// (it could not be sent after all).
    pub(crate) fn unsend_last(&mut self) {
        if self.awaited.pop_back().is_some() {
            self.stats.sent -= 1;
            self.next_nonce -= 1;
        }
    }

    /// Checks one received line.
    pub(crate) fn on_line(&mut self, line: &ChatLine) {
        self.stats.lines_received += 1;
        self.check_seq(line.seq);
        if line.from == Some(self.account)
            && let Some(nonce) = own_nonce(&line.text, self.account)
        {
            self.check_own(nonce);
        }
    }

    /// The server refused the oldest awaited line.
    pub(crate) fn on_rejected(&mut self) {
        if self.awaited.pop_front().is_some() {
            self.stats.rejected += 1;
        }
    }

    fn check_seq(&mut self, seq: u64) {
        let expected = self.last_seq + 1;
        if seq == expected {
            self.last_seq = seq;
        } else if seq > expected {
            for missing in expected..seq {
                if self.gaps.len() < MAX_TRACKED_GAPS {
                    self.gaps.insert(missing);
                } else {
                    self.stats.lost += 1;
                }
            }
            self.last_seq = seq;
        } else if self.gaps.remove(&seq) {
            self.stats.out_of_order += 1;
        } else {
            // Seen before (or 0, which is never valid).
            self.stats.duplicates += 1;
        }
    }

    fn check_own(&mut self, nonce: u64) {
        match self.awaited.iter().position(|&n| n == nonce) {
            Some(0) => {
                self.awaited.pop_front();
                self.stats.delivered += 1;
            }
            Some(index) => {
                self.awaited.remove(index);
                self.stats.delivered += 1;
                self.stats.out_of_order += 1;
            }
            None if nonce < self.next_nonce => self.stats.duplicates += 1,
            // A nonce never said: another process with the same account.
            None => {}
        }
        self.highest_answered = self.highest_answered.max(nonce);
    }

    /// Ends the connection: open gaps and awaited lines become lost, and the
    /// sequence restarts at 1 for the next connection. Nonces keep growing.
    pub(crate) fn end_connection(&mut self) {
        self.stats.lost += self.gaps.len() as u64 + self.awaited.len() as u64;
        self.gaps.clear();
        self.awaited.clear();
        self.last_seq = 0;
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> ReliableStats {
        self.stats
    }
}

/// The nonce in an own line's text `b<account>#<nonce> ...`.
fn own_nonce(text: &str, account: u64) -> Option<u64> {
    let rest = text.strip_prefix('b')?;
    let (who, rest) = rest.split_once('#')?;
    if who.parse::<u64>().ok()? != account {
        return None;
    }
    let digits = rest.split(' ').next()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use shared::protocol::chat::ChatKind;

    use super::*;

    fn line(seq: u64, from: Option<u64>, text: &str) -> ChatLine {
        ChatLine {
            seq,
            from,
            from_name: "x".into(),
            kind: ChatKind::Global,
            text: text.into(),
        }
    }

    #[test]
    fn an_in_order_stream_with_own_copies_is_exactly_once() {
        let mut v = ChatVerifier::new(7);
        let a = v.next_line("hello");
        let b = v.next_line("again");
        assert_eq!(a, "b7#1 hello");
        v.on_line(&line(1, Some(9), "b9#1 someone else"));
        v.on_line(&line(2, Some(7), &a));
        v.on_line(&line(3, None, "server says hi"));
        v.on_line(&line(4, Some(7), &b));
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.sent, s.delivered, s.lines_received), (2, 2, 4));
        assert!(s.exactly_once(), "{s:?}");
    }

    #[test]
    fn repeated_sequence_numbers_and_own_copies_are_duplicates() {
        let mut v = ChatVerifier::new(7);
        let a = v.next_line("x");
        v.on_line(&line(1, Some(7), &a));
        v.on_line(&line(1, Some(7), &a));
        let s = v.stats();
        // The repeat is caught twice: by its seq and by its nonce.
        assert_eq!((s.delivered, s.duplicates), (1, 2));
    }

    #[test]
    fn a_filled_gap_is_out_of_order_and_an_open_gap_is_lost() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&line(1, None, "a"));
        v.on_line(&line(4, None, "d"));
        v.on_line(&line(2, None, "b"));
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.out_of_order, s.lost, s.duplicates), (1, 1, 0));
    }

    #[test]
    fn an_own_copy_overtaking_an_older_one_is_out_of_order() {
        let mut v = ChatVerifier::new(7);
        let a = v.next_line("a");
        let b = v.next_line("b");
        v.on_line(&line(1, Some(7), &b));
        v.on_line(&line(2, Some(7), &a));
        let s = v.stats();
        assert_eq!((s.delivered, s.out_of_order, s.duplicates), (2, 1, 0));
    }

    #[test]
    fn unanswered_lines_are_lost_and_rejections_are_not() {
        let mut v = ChatVerifier::new(7);
        v.next_line("refused");
        v.next_line("never answered");
        v.on_rejected();
        assert_eq!(v.awaited(), 1);
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.sent, s.rejected, s.lost, s.delivered), (2, 1, 1, 0));
    }

    #[test]
    fn sequence_numbers_restart_with_each_connection() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&line(1, None, "a"));
        v.on_line(&line(2, None, "b"));
        v.end_connection();
        v.on_line(&line(1, None, "a"));
        assert!(v.stats().exactly_once());
    }

    #[test]
    fn other_accounts_nonces_are_not_taken_for_ours() {
        assert_eq!(own_nonce("b7#12 hi", 7), Some(12));
        assert_eq!(own_nonce("b77#12 hi", 7), None);
        assert_eq!(own_nonce("hello", 7), None);
        let mut v = ChatVerifier::new(7);
        v.next_line("mine");
        v.on_line(&line(1, Some(7), "b7#99 not said by this process"));
        assert_eq!(v.stats().duplicates, 0);
        assert_eq!(v.awaited(), 1);
    }

    #[test]
    fn a_huge_gap_is_bounded() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&line(1_000_000, None, "far ahead"));
        assert!(v.gaps.len() <= MAX_TRACKED_GAPS);
        v.end_connection();
        assert_eq!(v.stats().lost, 999_999);
    }
}
