//! Exactly-once, in-order verification of reliable chat traffic.
//!
//! Three checks run on every connection of a bot:
//!
//! 1. **Sequence check** on every [`ChatLine`] received, whoever said it: the
//!    server numbers the lines it sends to one connection 1, 2, 3, ... A
//!    repeat is a *duplicate*; a number above the next expected one opens a
//!    gap; a line that later fills a gap arrived *out of order*; a gap still
//!    open when the connection ends is *lost*.
//! 2. **Own-line check**: each line the bot says carries a `client_ref`
//!    (1, 2, 3, ... per bot, across its connections). The server answers
//!    every `ChatSend` of a member in session with exactly one of: its own
//!    copy (a `ChatLine` with `reply_to == Some(client_ref)`) or a
//!    [`ChatRejected`](shared::protocol::chat::ChatRejected) with the same
//!    `client_ref`. Its own copy comes back in every scope
//!    (`server/src/chat/room.rs`, `ChatRoom::say`: global lines go to every
//!    member, the speaker included; nearby lines to the members within the
//!    radius *and always the speaker*, or only the speaker when it has no
//!    position; a whisper to `[speaker, recipient]`). Refusals:
//!    `RateLimited`, `Muted`, `TooLong`, `Empty`, `UnknownRecipient` (a
//!    whisper to someone offline), and `Kicked` for the send that gets its
//!    sender kicked (it is then disconnected). So every line said is
//!    `sent`; an answer to an awaited line is `delivered` (own copy) or
//!    `rejected` (refusal), and an answer to a line already answered is a
//!    `duplicate`. Lines still awaited when the connection ends are `lost`.
//!
//! 3. **Text check**: a bot's line reads `b<account>#<client_ref> ...`
//!    ([`ChatVerifier::next_line`]). Sequence numbers are given per
//!    recipient at delivery, so a line delivered twice, two lines of one
//!    speaker swapped, or another line's text under the right `reply_to`
//!    would pass the two checks above. So an own copy must carry the tag of
//!    the line said with its `reply_to` (else it is `mismatched`), and the
//!    tag numbers of each other speaker's lines must increase along one
//!    connection: a bot numbers its lines 1, 2, 3, ... across its
//!    connections and the server handles one client's sends in order, so a
//!    number seen again is a *duplicate* and a lower one *out of order*.
//!    Numbers may be skipped (lines refused, or said out of nearby range);
//!    a line whose tag does not name its speaker (a system line, a player
//!    who is no bot) is not compared, and a new connection of the listener
//!    starts again from nothing.
//!
//! Several lines may be in flight (at most [`MAX_IN_FLIGHT`]). The server
//! handles one client's sends in order and writes their answers in order,
//! but encodes all `ChatLine`s of a tick before all `ChatRejected`s of that
//! tick (server message types go out in registration order). So own copies
//! arrive in `client_ref` order, and so do refusals, but a refusal may
//! arrive after the copy of a later line: an own copy older than a copy or
//! refusal already received, or a refusal older than one already received,
//! is `out_of_order`; a refusal behind a newer copy is not.
//!
//! Before a connection ends on purpose the bot stops talking and waits
//! (bounded) until nothing is awaited, so `lost` means lost, not "still in
//! flight".

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use shared::protocol::chat::ChatLine;

/// Most sequence gaps (runs of missing numbers, each one entry whatever
/// its length) tracked at once. Past it the oldest gap is counted lost at
/// once, and a line of it that comes after all is a duplicate: lines come
/// in order on the reliable channel, so a gap that old will not be filled
/// (a connection that far behind has failed anyway). Whatever numbers the
/// server sends, a bot keeps at most this many.
const MAX_TRACKED_GAPS: usize = 64;

/// Most own lines awaiting an answer at once, per bot. At the limit
/// [`ChatVerifier::next_line`] refuses and the bot skips that chat slot
/// (counted in `chat_skipped`): 64 unanswered lines mean the server has
/// not answered for about a minute at the scenarios' rates.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// Most other speakers whose last tag number a bot keeps on one
/// connection (about 20 bytes each). Past it the lowest account is
/// forgotten: its next line is compared with nothing (a check missed, never
/// a fault counted wrongly). Global chat with a few hundred bots stays
/// within it.
const MAX_TRACKED_SPEAKERS: usize = 512;

/// Counters of reliable delivery, summed over bots and connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ReliableStats {
    /// Own lines said (the server answers each with its copy or a refusal).
    pub(crate) sent: u64,
    /// Own lines whose copy came back (counted once each).
    pub(crate) delivered: u64,
    /// Lines received again: a repeated sequence number, own copy, or
    /// tag number of another speaker.
    pub(crate) duplicates: u64,
    /// Lines that arrived after a later one: a filled sequence gap, an own
    /// copy behind a newer own copy or refusal, a refusal behind a newer
    /// refusal, or another speaker's line behind a newer one of the same
    /// speaker (by tag number).
    pub(crate) out_of_order: u64,
    /// Own lines never answered plus sequence numbers never received, by the
    /// end of their connection.
    pub(crate) lost: u64,
    /// Own lines the server refused with a `ChatRejected` (counted once
    /// each).
    pub(crate) rejected: u64,
    /// Every `ChatLine` received (own copies, other players', system).
    pub(crate) lines_received: u64,
    /// Own copies whose text does not carry the tag of the line said with
    /// their `reply_to`: the server answered a send with another text.
    pub(crate) mismatched: u64,
}

impl ReliableStats {
    /// Adds `other` into `self`, saturating (a server's absurd sequence
    /// number can make `lost` huge: it must stay huge, not wrap to 0).
    pub(crate) fn add(&mut self, other: &Self) {
        self.sent = self.sent.saturating_add(other.sent);
        self.delivered = self.delivered.saturating_add(other.delivered);
        self.duplicates = self.duplicates.saturating_add(other.duplicates);
        self.out_of_order = self.out_of_order.saturating_add(other.out_of_order);
        self.lost = self.lost.saturating_add(other.lost);
        self.rejected = self.rejected.saturating_add(other.rejected);
        self.lines_received = self.lines_received.saturating_add(other.lines_received);
        self.mismatched = self.mismatched.saturating_add(other.mismatched);
    }

    /// Nothing duplicated, reordered, lost or answered with another text.
    pub(crate) fn exactly_once(&self) -> bool {
        self.duplicates == 0 && self.out_of_order == 0 && self.lost == 0 && self.mismatched == 0
    }
}

/// The chat verifier of one bot (see the module documentation).
#[derive(Debug)]
pub(crate) struct ChatVerifier {
    account: u64,
    last_seq: u64,
    /// The open gaps below `last_seq`: first missing number to last.
    gaps: BTreeMap<u64, u64>,
    /// `client_ref`s said on this connection and not answered yet.
    awaited: BTreeSet<u32>,
    next_ref: u32,
    /// The newest `client_ref` answered by an own copy on this connection.
    newest_copy: Option<u32>,
    /// The newest `client_ref` answered by a refusal on this connection.
    newest_refusal: Option<u32>,
    /// Other speakers on this connection: account → the highest tag number
    /// of theirs received (at most [`MAX_TRACKED_SPEAKERS`]).
    speakers: BTreeMap<u64, u32>,
    stats: ReliableStats,
}

impl ChatVerifier {
    /// A verifier for the bot with this account id.
    pub(crate) fn new(account: u64) -> Self {
        Self {
            account,
            last_seq: 0,
            gaps: BTreeMap::new(),
            awaited: BTreeSet::new(),
            next_ref: 1,
            newest_copy: None,
            newest_refusal: None,
            speakers: BTreeMap::new(),
            stats: ReliableStats::default(),
        }
    }

    /// Own lines awaiting their copy.
    pub(crate) fn awaited(&self) -> usize {
        self.awaited.len()
    }

    /// Registers a line about to be said: its `client_ref` and text, or
    /// `None` when [`MAX_IN_FLIGHT`] lines are awaited already.
    pub(crate) fn next_line(&mut self, body: &str) -> Option<(u32, String)> {
        if self.awaited.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let client_ref = self.next_ref;
        // 2^32 lines per bot: far beyond any run.
        self.next_ref = self.next_ref.wrapping_add(1);
        self.awaited.insert(client_ref);
        self.stats.sent += 1;
        Some((client_ref, format!("b{}#{client_ref} {body}", self.account)))
    }

    /// Forgets the last line registered by [`next_line`](Self::next_line)
    /// (it could not be sent after all).
    pub(crate) fn unsend_last(&mut self) {
        let last = self.next_ref.wrapping_sub(1);
        if self.awaited.remove(&last) {
            self.stats.sent -= 1;
            self.next_ref = last;
        }
    }

    /// Checks one received line. Only this bot's own lines answer its
    /// sends: every bot numbers its sends from 1, so a `reply_to` on
    /// another player's line (a server's mistake) must not pass for one
    /// of this bot's answers, hiding a lost copy.
    pub(crate) fn on_line(&mut self, line: &ChatLine) {
        self.stats.lines_received += 1;
        self.check_seq(line.seq);
        let Some(from) = line.from else {
            // A system line: no tag to check.
            return;
        };
        if from == self.account {
            if let Some(client_ref) = line.reply_to {
                // A reference this bot said (on this connection or an
                // earlier one) names the text it said with it.
                let said = client_ref < self.next_ref;
                self.check_answer(client_ref, Answer::Copy);
                if said && tag(&line.text) != Some((self.account, client_ref)) {
                    self.stats.mismatched += 1;
                }
            }
        } else if let Some((account, number)) = tag(&line.text)
            && account == from
        {
            self.check_speaker(from, number);
        }
    }

    /// Another speaker's line tagged `number`: each speaker's numbers must
    /// increase along the connection.
    fn check_speaker(&mut self, speaker: u64, number: u32) {
        match self.speakers.get_mut(&speaker) {
            Some(last) if number > *last => *last = number,
            Some(last) if number == *last => self.stats.duplicates += 1,
            Some(_) => self.stats.out_of_order += 1,
            None => {
                if self.speakers.len() >= MAX_TRACKED_SPEAKERS {
                    self.speakers.pop_first();
                }
                self.speakers.insert(speaker, number);
            }
        }
    }

    /// The server refused the line with this `client_ref`: whether that is
    /// the line's first answer (not a duplicate, nor a number never sent).
    pub(crate) fn on_rejected(&mut self, client_ref: u32) -> bool {
        self.check_answer(client_ref, Answer::Refusal)
    }

    fn check_seq(&mut self, seq: u64) {
        if seq > self.last_seq {
            // A jump of any size is one gap.
            if seq > self.last_seq + 1 {
                self.gaps.insert(self.last_seq + 1, seq - 1);
            }
            self.last_seq = seq;
        } else if let Some((&first, &last)) = self.gaps.range(..=seq).next_back()
            && seq <= last
        {
            // The gap is filled at `seq`: what is left of it either side.
            self.gaps.remove(&first);
            if first < seq {
                self.gaps.insert(first, seq - 1);
            }
            if seq < last {
                self.gaps.insert(seq + 1, last);
            }
            self.stats.out_of_order += 1;
        } else {
            // Seen before (or 0, which is never valid).
            self.stats.duplicates += 1;
        }
        while self.gaps.len() > MAX_TRACKED_GAPS {
            if let Some((first, last)) = self.gaps.pop_first() {
                self.stats.lost = self.stats.lost.saturating_add(last - first + 1);
            }
        }
    }

    /// Numbers missing in the open gaps (saturating: a server's absurd
    /// number can make a gap of nearly the whole range).
    fn missing(&self) -> u64 {
        self.gaps.iter().fold(0u64, |sum, (first, last)| {
            sum.saturating_add(last - first + 1)
        })
    }

    /// Whether `client_ref` was awaited (this is its first answer).
    fn check_answer(&mut self, client_ref: u32, answer: Answer) -> bool {
        // A copy comes before every later answer (copies of a tick go out
        // before its refusals); a refusal only before later refusals.
        let newer_seen = match answer {
            Answer::Copy => self.newest_copy.max(self.newest_refusal),
            Answer::Refusal => self.newest_refusal,
        };
        let newest = match answer {
            Answer::Copy => &mut self.newest_copy,
            Answer::Refusal => &mut self.newest_refusal,
        };
        if self.awaited.remove(&client_ref) {
            match answer {
                Answer::Copy => self.stats.delivered += 1,
                Answer::Refusal => self.stats.rejected += 1,
            }
            if newer_seen.is_some_and(|n| client_ref < n) {
                self.stats.out_of_order += 1;
            }
            *newest = Some(newest.map_or(client_ref, |n| n.max(client_ref)));
            return true;
        }
        if client_ref < self.next_ref {
            // Answered already (by a copy or a refusal).
            self.stats.duplicates += 1;
        }
        // Otherwise a reference never said: not an answer to this bot.
        false
    }

    /// Ends the connection: open gaps and awaited lines become lost, and the
    /// sequence restarts at 1 for the next connection. Nonces keep growing.
    pub(crate) fn end_connection(&mut self) {
        self.stats.lost = self
            .stats
            .lost
            .saturating_add(self.missing())
            .saturating_add(self.awaited.len() as u64);
        self.gaps.clear();
        self.awaited.clear();
        self.newest_copy = None;
        self.newest_refusal = None;
        self.speakers.clear();
        self.last_seq = 0;
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> ReliableStats {
        self.stats
    }
}

/// The `(account, client_ref)` of the `b<account>#<client_ref>` tag a
/// bot's line starts with ([`ChatVerifier::next_line`]), if `text` starts
/// with one (digits only, then a space or the end).
fn tag(text: &str) -> Option<(u64, u32)> {
    let (account, rest) = text.strip_prefix('b')?.split_once('#')?;
    let client_ref = rest.split(' ').next().unwrap_or(rest);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(account) || !digits(client_ref) {
        return None;
    }
    Some((account.parse().ok()?, client_ref.parse().ok()?))
}

/// The two answers to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The speaker's own copy of the line.
    Copy,
    /// A `ChatRejected`.
    Refusal,
}

#[cfg(test)]
mod tests {
    use shared::protocol::chat::ChatKind;

    use super::*;

    /// A line as the server sends it: an own copy (`from` and `reply_to`)
    /// carries the tag of the line said with that reference.
    fn line(seq: u64, from: Option<u64>, reply_to: Option<u32>) -> ChatLine {
        let text = match (from, reply_to) {
            (Some(from), Some(client_ref)) => format!("b{from}#{client_ref} hello"),
            _ => "some text".into(),
        };
        ChatLine {
            seq,
            reply_to,
            from,
            from_name: "x".into(),
            kind: ChatKind::Global,
            text,
        }
    }

    fn say(v: &mut ChatVerifier) -> u32 {
        v.next_line("hello").expect("room in flight").0
    }

    /// Another player's line carrying a `reply_to` (a server's mistake)
    /// is not this bot's answer: every bot numbers its sends from 1, and
    /// counted, it hid the loss of the bot's own copy.
    #[test]
    fn only_the_bots_own_lines_answer_its_sends() {
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        v.on_line(&line(1, Some(9), Some(a)));
        assert_eq!((v.stats().delivered, v.awaited()), (0, 1));
        v.on_line(&line(2, Some(7), Some(a)));
        assert_eq!((v.stats().delivered, v.awaited()), (1, 0));
        // A refusal is a first answer once.
        let b = say(&mut v);
        assert!(v.on_rejected(b));
        assert!(!v.on_rejected(b));
        assert_eq!((v.stats().rejected, v.stats().duplicates), (1, 1));
    }

    #[test]
    fn several_lines_in_flight_answered_in_order_are_exactly_once() {
        let mut v = ChatVerifier::new(7);
        assert_eq!(v.next_line("hello"), Some((1, "b7#1 hello".to_owned())));
        let b = say(&mut v);
        let c = say(&mut v);
        assert_eq!(v.awaited(), 3);
        v.on_line(&line(1, Some(9), None));
        v.on_line(&line(2, Some(7), Some(1)));
        v.on_line(&line(3, None, None));
        v.on_line(&line(4, Some(7), Some(b)));
        v.on_rejected(c);
        v.end_connection();
        let s = v.stats();
        assert_eq!(
            (s.sent, s.delivered, s.rejected, s.lines_received),
            (3, 2, 1, 4)
        );
        assert!(s.exactly_once(), "{s:?}");
    }

    #[test]
    fn a_refusal_behind_a_newer_copy_is_in_order() {
        // The server encodes a tick's ChatLines before its ChatRejecteds.
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        let b = say(&mut v);
        let c = say(&mut v);
        v.on_line(&line(1, Some(7), Some(b)));
        v.on_rejected(a);
        v.on_rejected(c);
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.delivered, s.rejected), (1, 2));
        assert!(s.exactly_once(), "{s:?}");
    }

    #[test]
    fn repeated_sequence_numbers_copies_and_refusals_are_duplicates() {
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        let b = say(&mut v);
        v.on_line(&line(1, Some(7), Some(a)));
        v.on_line(&line(1, Some(7), Some(a)));
        // The repeat is caught twice: by its seq and by its client_ref.
        assert_eq!((v.stats().delivered, v.stats().duplicates), (1, 2));
        v.on_rejected(b);
        v.on_rejected(b);
        // A refusal of a line whose copy came back is a duplicate too.
        v.on_rejected(a);
        let s = v.stats();
        assert_eq!((s.rejected, s.duplicates, s.out_of_order), (1, 4, 0));
    }

    #[test]
    fn a_filled_gap_is_out_of_order_and_an_open_gap_is_lost() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&line(1, None, None));
        v.on_line(&line(4, None, None));
        v.on_line(&line(2, None, None));
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.out_of_order, s.lost, s.duplicates), (1, 1, 0));
    }

    #[test]
    fn an_answer_overtaking_an_older_one_of_its_kind_is_out_of_order() {
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        let b = say(&mut v);
        v.on_line(&line(1, Some(7), Some(b)));
        v.on_line(&line(2, Some(7), Some(a)));
        let s = v.stats();
        assert_eq!((s.delivered, s.out_of_order, s.duplicates), (2, 1, 0));

        let c = say(&mut v);
        let d = say(&mut v);
        v.on_rejected(d);
        v.on_rejected(c);
        let s = v.stats();
        assert_eq!((s.rejected, s.out_of_order, s.duplicates), (2, 2, 0));
    }

    #[test]
    fn unanswered_lines_are_lost_and_rejections_are_not() {
        let mut v = ChatVerifier::new(7);
        let refused = say(&mut v);
        say(&mut v);
        v.on_rejected(refused);
        assert_eq!(v.awaited(), 1);
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.sent, s.rejected, s.lost, s.delivered), (2, 1, 1, 0));
    }

    #[test]
    fn sequence_numbers_restart_with_each_connection_and_references_do_not() {
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        v.on_line(&line(1, None, None));
        v.on_line(&line(2, Some(7), Some(a)));
        v.end_connection();
        let b = say(&mut v);
        assert_eq!(b, a + 1);
        v.on_line(&line(1, Some(7), Some(b)));
        assert!(v.stats().exactly_once(), "{:?}", v.stats());
    }

    #[test]
    fn other_players_lines_and_references_never_said_are_not_answers() {
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        v.on_line(&line(1, Some(9), None));
        v.on_line(&line(2, Some(7), Some(a + 40)));
        v.on_rejected(a + 41);
        let s = v.stats();
        assert_eq!((s.delivered, s.rejected, s.duplicates), (0, 0, 0));
        assert_eq!(v.awaited(), 1);
    }

    #[test]
    fn an_unsent_line_is_forgotten_and_its_reference_reused() {
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        v.unsend_last();
        assert_eq!((v.awaited(), v.stats().sent), (0, 0));
        assert_eq!(say(&mut v), a);
    }

    #[test]
    fn lines_in_flight_are_bounded() {
        let mut v = ChatVerifier::new(7);
        for _ in 0..MAX_IN_FLIGHT {
            say(&mut v);
        }
        assert_eq!(v.next_line("one too many"), None);
        assert_eq!(v.stats().sent, MAX_IN_FLIGHT as u64);
        v.on_rejected(1);
        assert!(v.next_line("room again").is_some());
    }

    #[test]
    fn a_huge_gap_is_bounded() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&line(1_000_000, None, None));
        assert!(v.gaps.len() <= MAX_TRACKED_GAPS);
        v.end_connection();
        assert_eq!(v.stats().lost, 999_999);
    }

    #[test]
    fn a_jump_in_the_sequence_is_one_gap_whose_lines_may_still_come() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&line(1_000_000, None, None));
        assert_eq!(v.gaps.len(), 1);
        v.on_line(&line(500_000, None, None));
        v.on_line(&line(1, None, None));
        v.on_line(&line(999_999, None, None));
        v.on_line(&line(500_000, None, None));
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.out_of_order, s.duplicates, s.lost), (3, 1, 999_996));
    }

    #[test]
    fn the_oldest_gaps_past_the_bound_are_counted_lost_at_once() {
        let mut v = ChatVerifier::new(7);
        let gaps = MAX_TRACKED_GAPS as u64 + 10;
        for k in 1..=gaps {
            v.on_line(&line(2 * k, None, None));
        }
        assert_eq!(v.gaps.len(), MAX_TRACKED_GAPS);
        assert_eq!(v.stats().lost, 10);
        // A line of a gap still tracked is late; one of a gap counted
        // lost already is a duplicate.
        v.on_line(&line(2 * gaps - 1, None, None));
        assert_eq!((v.stats().out_of_order, v.stats().duplicates), (1, 0));
        v.on_line(&line(1, None, None));
        assert_eq!((v.stats().out_of_order, v.stats().duplicates), (1, 1));
        v.end_connection();
        assert_eq!(v.stats().lost, gaps - 1);
    }

    #[test]
    fn an_absurd_sequence_number_saturates_the_loss_instead_of_wrapping() {
        let mut v = ChatVerifier::new(7);
        say(&mut v);
        say(&mut v);
        v.on_line(&line(u64::MAX, None, None));
        v.end_connection();
        assert_eq!(v.stats().lost, u64::MAX);
        assert!(!v.stats().exactly_once());
        let mut total = v.stats();
        total.add(&v.stats());
        assert_eq!(total.lost, u64::MAX);
    }

    #[test]
    fn an_own_copy_behind_a_newer_refusal_is_out_of_order() {
        let mut v = ChatVerifier::new(7);
        let a = say(&mut v);
        let b = say(&mut v);
        v.on_rejected(b);
        v.on_line(&line(1, Some(7), Some(a)));
        assert_eq!(v.stats().out_of_order, 1);
        // A refusal behind a newer copy is the server's order.
        let c = say(&mut v);
        let d = say(&mut v);
        v.on_line(&line(2, Some(7), Some(d)));
        v.on_rejected(c);
        assert_eq!(v.stats().out_of_order, 1);
    }

    #[test]
    fn a_sequence_number_near_the_end_of_the_range_costs_no_loop_over_it() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&line(u64::MAX, None, None));
        v.on_line(&line(u64::MAX, None, None));
        v.end_connection();
        let s = v.stats();
        assert_eq!((s.lost, s.duplicates), (u64::MAX - 1, 1));
    }

    fn said_by(seq: u64, from: u64, reply_to: Option<u32>, text: &str) -> ChatLine {
        ChatLine {
            text: text.into(),
            ..line(seq, Some(from), reply_to)
        }
    }

    /// The server numbers each recipient's lines as it delivers them, so
    /// a wrong text under the right `reply_to` passes the sequence and
    /// answer checks: the own copy must carry the tag of the line said
    /// with that `client_ref`.
    #[test]
    fn an_own_copy_with_another_lines_text_is_not_exactly_once() {
        let mut v = ChatVerifier::new(7);
        let (a, text_a) = v.next_line("hello").unwrap();
        let (b, _) = v.next_line("hello").unwrap();
        v.on_line(&said_by(1, 7, Some(a), &text_a));
        assert!(v.stats().exactly_once(), "{:?}", v.stats());
        // Line a's text again, under b's reference.
        v.on_line(&said_by(2, 7, Some(b), &text_a));
        assert_eq!((v.stats().delivered, v.stats().mismatched), (2, 1));
        assert!(!v.stats().exactly_once(), "{:?}", v.stats());
        // Another bot's tag, or none, under an own reference.
        for text in ["b8#3 hello", "hello"] {
            let mut v = ChatVerifier::new(7);
            let (c, _) = v.next_line("hello").unwrap();
            v.on_line(&said_by(1, 7, Some(c), text));
            assert!(!v.stats().exactly_once(), "{text}: {:?}", v.stats());
        }
    }

    /// Another speaker's lines reach a listener in the order said, each
    /// once, whatever sequence numbers the server gave them: a tag number
    /// seen again is a duplicate, a lower one out of order.
    #[test]
    fn another_speakers_lines_repeated_or_reordered_are_caught_by_their_tags() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&said_by(1, 9, None, "b9#4 hello"));
        v.on_line(&said_by(2, 9, None, "b9#4 hello"));
        let s = v.stats();
        assert_eq!((s.duplicates, s.out_of_order), (1, 0), "{s:?}");
        v.on_line(&said_by(3, 9, None, "b9#6 hello"));
        v.on_line(&said_by(4, 9, None, "b9#5 hello"));
        let s = v.stats();
        assert_eq!((s.duplicates, s.out_of_order), (1, 1), "{s:?}");
        assert!(!s.exactly_once());
    }

    /// What is no fault: a speaker's lines the listener never got (refused
    /// by the server, out of nearby range), a new connection of the
    /// listener, lines of several speakers interleaved, system lines and
    /// players who are not bots (no tag, or another account's tag).
    #[test]
    fn gaps_reconnects_system_lines_and_untagged_speakers_are_no_fault() {
        let mut v = ChatVerifier::new(7);
        v.on_line(&said_by(1, 9, None, "b9#2 hello"));
        v.on_line(&said_by(2, 8, None, "b8#40 hello"));
        v.on_line(&said_by(3, 9, None, "b9#5 hello"));
        v.on_line(&line(4, None, None));
        v.on_line(&said_by(5, 3, None, "gg"));
        v.on_line(&said_by(6, 3, None, "gg"));
        v.on_line(&said_by(7, 3, None, "b9#1 copied a bot"));
        v.on_line(&said_by(8, 8, None, "b8#41 hello"));
        v.end_connection();
        // The listener's next connection compares nothing with the last.
        v.on_line(&said_by(1, 9, None, "b9#5 hello"));
        v.on_line(&said_by(2, 9, None, "b9#9 hello"));
        v.end_connection();
        let s = v.stats();
        assert!(s.exactly_once(), "{s:?}");
        assert_eq!(s.lines_received, 10);
    }

    /// A listener keeps the last tag number of at most
    /// [`MAX_TRACKED_SPEAKERS`] speakers; past it the lowest account is
    /// forgotten, and its next line is compared with nothing.
    #[test]
    fn the_speakers_remembered_are_bounded() {
        let mut v = ChatVerifier::new(7);
        let speakers = MAX_TRACKED_SPEAKERS as u64 + 1;
        for (seq, speaker) in (1..).zip(100..100 + speakers) {
            v.on_line(&said_by(seq, speaker, None, &format!("b{speaker}#5 hello")));
        }
        assert_eq!(v.speakers.len(), MAX_TRACKED_SPEAKERS);
        // Speaker 100 was forgotten: its line again is compared with
        // nothing. Speaker 200 is remembered: its line again is a duplicate.
        let seq = speakers + 1;
        v.on_line(&said_by(seq, 100, None, "b100#5 hello"));
        assert_eq!(v.stats().duplicates, 0);
        v.on_line(&said_by(seq + 1, 200, None, "b200#5 hello"));
        let s = v.stats();
        assert_eq!((s.duplicates, s.out_of_order), (1, 0), "{s:?}");
        assert_eq!(v.speakers.len(), MAX_TRACKED_SPEAKERS);
    }

    #[test]
    fn tags_are_read_only_where_a_bot_writes_them() {
        assert_eq!(tag("b7#3 hello"), Some((7, 3)));
        assert_eq!(tag("b7#3"), Some((7, 3)));
        for text in [
            "b7#3x hi", "b#3 hi", "b7# hi", "b+7#3 hi", "7#3 hi", "hi b7#3", "",
        ] {
            assert_eq!(tag(text), None, "{text}");
        }
    }
}
