//! Chat messages ([`CHAT`](super::channels::CHAT), reliable and ordered).
//! Ids 2xx.

use serde::{Deserialize, Serialize};

use super::NetMessage;

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
    WhisperName(String),
}

/// Client → server: say something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSend {
    /// To whom.
    pub scope: ChatScope,
    /// What (UTF-8 by construction; the server strips control characters,
    /// trims, and enforces the length limit).
    pub text: String,
}

impl NetMessage for ChatSend {
    const ID: u16 = 200;
}

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
/// in-order delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// Per-recipient sequence number, from 1.
    pub seq: u64,
    /// The speaker's account id (`None` for system lines).
    pub from: Option<u64>,
    /// The speaker's display name ("server" for system lines).
    pub from_name: String,
    /// How it was addressed.
    pub kind: ChatKind,
    /// The text.
    pub text: String,
}

impl NetMessage for ChatLine {
    const ID: u16 = 201;
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
}

/// Server → client: your chat message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRejected {
    /// Why.
    pub reason: ChatRejectReason,
    /// A sentence a player can read.
    pub message: String,
}

impl NetMessage for ChatRejected {
    const ID: u16 = 202;
}
