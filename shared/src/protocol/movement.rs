//! Movement input ([`MOVEMENT`](super::channels::MOVEMENT), unreliable
//! sequenced: a stale input is dropped by the channel). Ids 4xx.
//!
//! The world is a 2D plane (`x`, `y` in metres). Snapshots (server →
//! client, [`SNAPSHOT`](super::channels::SNAPSHOT)) are defined with the
//! movement plugin.

use glam::Vec2;
use serde::{Deserialize, Serialize};

use super::NetMessage;

/// Client → server, every tick: the intended velocity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MoveInput {
    /// Increases by one per input; snapshots echo the last one processed so
    /// the client can reconcile its prediction.
    pub seq: u32,
    /// Intended velocity in metres per second; the server clamps its
    /// length to the maximum speed and rejects non-finite values.
    pub velocity: Vec2,
}

impl NetMessage for MoveInput {
    const ID: u16 = 400;
}
