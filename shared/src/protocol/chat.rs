//! Chat messages ([`CHAT`](super::channels::CHAT), reliable and ordered).
//! Ids 2xx.

use serde::{Deserialize, Serialize};

use super::codec::put_varint;
use super::{EncodeAs, EncodeError, NetMessage};

/// Who a chat message is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatScope {
    /// Everyone on the server.
    Global,
    /// Players within the area-of-interest radius of the sender.
    Nearby,
    /// One player, by account id.
    WhisperId(u64),
    /// One player, by name.
    WhisperName(#[serde(deserialize_with = "super::codec::text")] String),
}

/// Client → server: say something.
///
/// The server answers every send of a member in session with exactly one
/// of: the speaker's own copy ([`ChatLine`] with `reply_to ==
/// Some(client_ref)`) or a [`ChatRejected`] with the same `client_ref`.
/// The send that gets its sender kicked for flooding, and any send after
/// it, is answered [`ChatRejectReason::Kicked`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSend {
    /// Chosen by the client and echoed in the answer, so the client can
    /// tell which send an answer is for, with several sends in flight. The
    /// server does not interpret it (it need not be unique or increasing).
    pub client_ref: u32,
    /// To whom.
    pub scope: ChatScope,
    /// What (UTF-8 by construction; the server strips control characters,
    /// trims, and enforces the length limit).
    #[serde(deserialize_with = "super::codec::text")]
    pub text: String,
}

impl NetMessage for ChatSend {
    const ID: u16 = 200;
}

/// The longest text a client should put in a [`ChatSend`], in bytes. The
/// server refuses anything longer than its own limit (`[chat] max_chars`,
/// 256 characters by default) with [`ChatRejectReason::TooLong`], but a
/// message past [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES) does not
/// even decode: a protocol violation, not an answer.
pub const MAX_SEND_TEXT_BYTES: usize = 16 * 1024;

/// How a delivered line was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatKind {
    /// Said to everyone.
    Global,
    /// Said nearby.
    Nearby,
    /// Whispered to the recipient (or, for the sender's copy, by them).
    Whisper,
    /// From the server: joins, leaves, admin `say`.
    System,
}

/// Server → client: one chat line.
///
/// `seq` counts the lines this client has been sent on this connection:
/// 1, 2, 3, ... with no gaps, so a client can verify exactly-once,
/// in-order delivery. [`ChatRejected`]s are not numbered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// Per-recipient sequence number, from 1.
    pub seq: u64,
    /// On the speaker's own copy, the [`ChatSend::client_ref`] of the send
    /// it answers; `None` on everyone else's copy and on system lines.
    pub reply_to: Option<u32>,
    /// The speaker's account id (`None` for system lines).
    pub from: Option<u64>,
    /// The speaker's display name ("server" for system lines).
    #[serde(deserialize_with = "super::codec::text")]
    pub from_name: String,
    /// How it was addressed.
    pub kind: ChatKind,
    /// The text.
    #[serde(deserialize_with = "super::codec::text")]
    pub text: String,
}

impl NetMessage for ChatLine {
    const ID: u16 = 201;
}

/// What every recipient's copy of one [`ChatLine`] shares: all but `seq`
/// and `reply_to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatLineBody {
    /// The speaker's account id (`None` for system lines).
    pub from: Option<u64>,
    /// The speaker's display name.
    pub from_name: String,
    /// How it was addressed.
    pub kind: ChatKind,
    /// The text.
    pub text: String,
}

impl ChatLineBody {
    /// One recipient's line.
    pub fn line(&self, seq: u64, reply_to: Option<u32>) -> ChatLine {
        ChatLine {
            seq,
            reply_to,
            from: self.from,
            from_name: self.from_name.clone(),
            kind: self.kind,
            text: self.text.clone(),
        }
    }
}

/// A [`ChatLineBody`] serialized once for all its recipients: each
/// recipient's [`ChatLineCopy`] only adds its `seq` and `reply_to` (the
/// fields that lead a `ChatLine` on the wire) in front of the shared bytes.
/// The buffer is reused by [`set`](Self::set).
#[derive(Debug, Clone, Default)]
pub struct EncodedChatLine {
    /// `from`, `from_name`, `kind`, `text` as bincode writes them.
    tail: Vec<u8>,
}

impl EncodedChatLine {
    /// Serializes `body`, replacing what was there.
    ///
    /// # Errors
    /// The serializer failed.
    pub fn set(&mut self, body: &ChatLineBody) -> Result<(), EncodeError> {
        self.tail.clear();
        // A struct's fields in order, like ChatLine's last four.
        super::codec::bincode_body_of(body, &mut self.tail)
    }

    /// One recipient's copy.
    pub fn copy_for(&self, seq: u64, reply_to: Option<u32>) -> ChatLineCopy<'_> {
        ChatLineCopy {
            seq,
            reply_to,
            tail: &self.tail,
        }
    }
}

/// One recipient's [`ChatLine`], encoded from an [`EncodedChatLine`].
#[derive(Debug, Clone, Copy)]
pub struct ChatLineCopy<'a> {
    seq: u64,
    reply_to: Option<u32>,
    tail: &'a [u8],
}

impl EncodeAs<ChatLine> for ChatLineCopy<'_> {
    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_varint(out, self.seq);
        match self.reply_to {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                put_varint(out, u64::from(r));
            }
        }
        out.extend_from_slice(self.tail);
        Ok(())
    }
}

/// Why the server refused a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatRejectReason {
    /// Sending too fast; wait a moment.
    RateLimited,
    /// Over the length limit.
    TooLong,
    /// Nothing left after trimming.
    Empty,
    /// Muted for repeated flooding.
    Muted,
    /// No such player to whisper to.
    UnknownRecipient,
    /// Flooding on after being muted: the server disconnects the sender
    /// right after this answer.
    Kicked,
}

/// Server → client: your chat message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRejected {
    /// The [`ChatSend::client_ref`] of the refused send.
    pub client_ref: u32,
    /// Why.
    pub reason: ChatRejectReason,
    /// A sentence a player can read.
    #[serde(deserialize_with = "super::codec::text")]
    pub message: String,
}

impl NetMessage for ChatRejected {
    const ID: u16 = 202;
}

/// What is wrong with a received [`ChatLine::seq`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// A line arrived again (or out of order, behind one already seen).
    #[error("chat line {got} is a duplicate or out of order (expected {expected})")]
    Duplicate {
        /// The sequence number the checker expected.
        expected: u64,
        /// The one that arrived.
        got: u64,
    },
    /// Lines between the expected one and this one never arrived.
    #[error("chat lines {expected}..{got} are missing")]
    Gap {
        /// The sequence number the checker expected.
        expected: u64,
        /// The one that arrived.
        got: u64,
    },
}

/// Client side: verifies that chat lines arrive exactly once and in order,
/// by their per-recipient sequence numbers (1, 2, 3, ...). Start a new
/// checker for every connection: the server numbers lines per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSequenceChecker {
    /// Wider than the numbers: after `u64::MAX` the next is past them
    /// all, and a second `u64::MAX` is a duplicate.
    next: u128,
}

impl Default for ChatSequenceChecker {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl ChatSequenceChecker {
    /// A checker for a fresh connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next line's sequence number. On an error the checker
    /// resynchronises after the received number, so one loss is reported
    /// once.
    ///
    /// # Errors
    /// [`SequenceError`] when `seq` is not exactly the next number.
    pub fn observe(&mut self, seq: u64) -> Result<(), SequenceError> {
        let next = self.next;
        self.next = next.max(u128::from(seq) + 1);
        let expected = u64::try_from(next).unwrap_or(u64::MAX);
        match u128::from(seq).cmp(&next) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(SequenceError::Duplicate { expected, got: seq }),
            std::cmp::Ordering::Greater => Err(SequenceError::Gap { expected, got: seq }),
        }
    }

    /// How many lines have been accounted for (the last good number).
    pub fn received(&self) -> u64 {
        u64::try_from(self.next - 1).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{EncodeBuffer, encode};

    fn kind() -> impl Strategy<Value = ChatKind> {
        prop_oneof![
            Just(ChatKind::Global),
            Just(ChatKind::Nearby),
            Just(ChatKind::Whisper),
            Just(ChatKind::System),
        ]
    }

    proptest! {
        #[test]
        fn a_copy_of_a_line_encoded_once_is_the_line_encoded_alone(
            seq in prop_oneof![0u64..300, any::<u64>()],
            reply_to in proptest::option::of(any::<u32>()),
            from in proptest::option::of(any::<u64>()),
            from_name in ".{0,20}",
            kind in kind(),
            text in ".{0,300}",
        ) {
            let body = ChatLineBody { from, from_name, kind, text };
            let mut once = EncodedChatLine::default();
            once.set(&body).unwrap();
            let mut buffer = EncodeBuffer::default();
            let copy = buffer.encode_as::<ChatLine>(&once.copy_for(seq, reply_to)).unwrap();
            prop_assert_eq!(copy, encode(&body.line(seq, reply_to)).unwrap());
        }
    }

    #[test]
    fn in_order_lines_pass_and_gaps_and_duplicates_are_reported() {
        let mut checker = ChatSequenceChecker::new();
        assert_eq!(checker.observe(1), Ok(()));
        assert_eq!(checker.observe(2), Ok(()));
        assert_eq!(
            checker.observe(2),
            Err(SequenceError::Duplicate {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(
            checker.observe(5),
            Err(SequenceError::Gap {
                expected: 3,
                got: 5
            })
        );
        assert_eq!(checker.observe(6), Ok(()));
        assert_eq!(checker.received(), 6);
    }

    /// The last number there is, then again: a duplicate (it passed,
    /// the next expected number saturating at it).
    #[test]
    fn the_largest_number_twice_is_a_duplicate() {
        let mut checker = ChatSequenceChecker::new();
        assert!(checker.observe(u64::MAX).is_err(), "a gap");
        assert_eq!(checker.received(), u64::MAX);
        assert_eq!(
            checker.observe(u64::MAX),
            Err(SequenceError::Duplicate {
                expected: u64::MAX,
                got: u64::MAX
            })
        );
    }

    #[test]
    fn chat_messages_round_trip_through_the_codec() {
        let line = ChatLine {
            seq: 7,
            reply_to: Some(u32::MAX),
            from: Some(3),
            from_name: "ada".into(),
            kind: ChatKind::Whisper,
            text: "héllo".into(),
        };
        let bytes = crate::protocol::encode(&line).unwrap();
        assert_eq!(crate::protocol::decode::<ChatLine>(&bytes).unwrap(), line);

        let send = ChatSend {
            client_ref: 41,
            scope: ChatScope::WhisperName("bob".into()),
            text: "hi".into(),
        };
        let bytes = crate::protocol::encode(&send).unwrap();
        assert_eq!(crate::protocol::decode::<ChatSend>(&bytes).unwrap(), send);

        let rejected = ChatRejected {
            client_ref: 41,
            reason: ChatRejectReason::UnknownRecipient,
            message: "no such player is online".into(),
        };
        let bytes = crate::protocol::encode(&rejected).unwrap();
        assert_eq!(
            crate::protocol::decode::<ChatRejected>(&bytes).unwrap(),
            rejected
        );
    }
}
