//! The game's wire protocol: the channel layout both sides use, the
//! message codec, and the message types.
//!
//! | module | ids | channel |
//! |---|---|---|
//! | [`messages`] | 1xx session, 5xx events | `CONTROL`, `EVENTS` |
//! | [`chat`] | 2xx | `CHAT` |
//! | [`inventory`] | 3xx | `INVENTORY` |
//! | [`movement`] | 4xx | `MOVEMENT`, `SNAPSHOT` |
//!
//! Every message travels as `id: u16 (little endian)` followed by its
//! bincode 2 (serde) body. A message type implements [`NetMessage`] with a
//! unique [`NetMessage::ID`]; the server registers each type on one channel
//! and rejects it anywhere else.

pub mod channels;
pub mod chat;
mod codec;
pub mod inventory;
pub mod messages;
pub mod movement;

pub use codec::{
    DecodeError, EncodeBuffer, EncodeError, MAX_MESSAGE_BYTES, decode, decode_body, encode,
    message_id,
};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Identifies this game's protocol in connect tokens and handshakes;
/// bump [`PROTOCOL_VERSION`] when the messages change incompatibly.
pub const PROTOCOL_ID: u64 = 0x4741_4d45_0000_0000 | PROTOCOL_VERSION as u64;
/// The message schema version, folded into [`PROTOCOL_ID`]. It also
/// covers the channel layout of [`channels::transport_config`]: both sides
/// must agree on it (version 2: reliable windows of 256 messages, where a
/// peer of version 1 could send ids up to 1,024 ahead, a protocol violation
/// now; version 3: trade updates carry a revision, which an accept names,
/// and the items each side offers; the welcome carries the movement rules).
pub const PROTOCOL_VERSION: u16 = 3;

/// A message type that can cross the wire.
pub trait NetMessage: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Unique among all message types of the protocol (both directions).
    const ID: u16;

    /// Appends the encoded body (without the id) to `out`: bincode by
    /// default. A type sent in bulk may write the same bytes by hand,
    /// faster; its tests must show the output equals bincode's.
    ///
    /// # Errors
    /// The serializer failed (bincode only fails on unsupported types).
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        codec::bincode_body(self, out)
    }

    /// Decodes a body (without the id), all of it: bincode by default. A
    /// type received in bulk may read the bytes by hand, faster; its tests
    /// must show it accepts exactly what bincode accepts, with the same
    /// values.
    ///
    /// # Errors
    /// The body is malformed, too long, or followed by other bytes.
    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        codec::bincode_decode_body(body)
    }
}

/// A value that encodes exactly as a message `M` without being one: for
/// example one recipient's copy of a message whose shared part was
/// serialized once for everyone ([`chat::ChatLineCopy`]). Every message
/// encodes as itself.
pub trait EncodeAs<M: NetMessage> {
    /// Appends the body `M` would encode to (without the id) to `out`.
    ///
    /// # Errors
    /// The serializer failed.
    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

impl<M: NetMessage> EncodeAs<M> for M {
    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode_body(out)
    }
}
