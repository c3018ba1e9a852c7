//! The message types of the game. Ids are grouped by concern: 1xx session,
//! 2xx chat, 3xx inventory, 4xx movement, 5xx events.

use serde::{Deserialize, Serialize};

use super::NetMessage;
use crate::movement::MovementRules;

/// Server → client, once, right after connecting ([`CONTROL`](super::channels::CONTROL)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The player's account id (from the connect token).
    pub client_id: u64,
    /// The server's tick rate.
    pub tick_hz: u16,
    /// The server's movement rules, for the client's prediction (see
    /// [`Predictor`](crate::movement::Predictor)): predicting with other
    /// rules than the server's is corrected on every snapshot.
    pub rules: MovementRules,
}

impl NetMessage for Welcome {
    const ID: u16 = 100;
}

/// Server → client: a request was refused; a clear, player-facing reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNotice {
    /// What happened.
    #[serde(deserialize_with = "super::codec::text")]
    pub text: String,
}

impl NetMessage for ServerNotice {
    const ID: u16 = 101;
}

/// Emotes known to the game (0 to this, exclusive); the server ignores
/// any other.
pub const EMOTE_COUNT: u8 = 16;

/// Client → server: an emote (the example plugin of the template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmoteRequest {
    /// Which emote, below [`EMOTE_COUNT`].
    pub emote: u8,
}

impl NetMessage for EmoteRequest {
    const ID: u16 = 500;
}

/// Server → clients: someone emoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emote {
    /// Who.
    pub from: u64,
    /// Which emote.
    pub emote: u8,
}

impl NetMessage for Emote {
    const ID: u16 = 501;
}
