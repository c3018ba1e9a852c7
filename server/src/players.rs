//! Who is connected, as far as the admin tools are concerned.
//!
//! The network plugin owns connections; it keeps the
//! [`PlayerRoster`] up to date (players as they join and leave, their
//! addresses and round-trip times once a second) so the console's
//! `players` command and other admin tools can list players without
//! knowing about the transport.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bevy_ecs::resource::Resource;

/// A connected client, as numbered by the connection layer (netcode.io
/// client ids are 64-bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ClientId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// What the admin tools show about one player.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayerSummary {
    /// Display name.
    pub name: String,
    /// Remote address, if known.
    pub addr: Option<SocketAddr>,
    /// Smoothed round-trip time, if measured.
    pub rtt: Option<Duration>,
}

/// The connected players, filled by whichever plugin owns connections.
#[derive(Resource, Clone, Debug, Default)]
pub struct PlayerRoster {
    players: BTreeMap<ClientId, PlayerSummary>,
}

impl PlayerRoster {
    /// Adds or replaces a player.
    pub fn insert(&mut self, client: ClientId, summary: PlayerSummary) {
        self.players.insert(client, summary);
    }

    /// Removes a player, returning what was known about them.
    pub fn remove(&mut self, client: ClientId) -> Option<PlayerSummary> {
        self.players.remove(&client)
    }

    /// One player.
    pub fn get(&self, client: ClientId) -> Option<&PlayerSummary> {
        self.players.get(&client)
    }

    /// One player, to update what is known about them.
    pub fn get_mut(&mut self, client: ClientId) -> Option<&mut PlayerSummary> {
        self.players.get_mut(&client)
    }

    /// All players, by id.
    pub fn iter(&self) -> impl Iterator<Item = (ClientId, &PlayerSummary)> {
        self.players.iter().map(|(id, summary)| (*id, summary))
    }

    /// Number of players.
    pub fn len(&self) -> usize {
        self.players.len()
    }

    /// Whether nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }
}
