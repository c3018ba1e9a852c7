//! Counters: why datagrams were dropped, and what was sent and received.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

/// Why an incoming datagram was ignored. Every drop is counted under exactly
/// one reason; none changes connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Zero-length datagram.
    Empty,
    /// Larger than any valid netcode packet.
    Oversized,
    /// A connection request that is not exactly 1078 bytes.
    RequestWrongSize,
    /// Version info is not `NETCODE 1.02`.
    WrongVersion,
    /// Protocol id differs from this server's.
    WrongProtocolId,
    /// The connect token's expire timestamp is not in the future, or is no
    /// later than that of a token its client id had forgotten to make room
    /// for newer ones (see
    /// [`ServerConfig::max_token_entries`](super::ServerConfig::max_token_entries)).
    TokenExpired,
    /// The source IP exceeded its handshake rate limit.
    RateLimited,
    /// The private connect token did not decrypt: forged, corrupted, or minted
    /// with another key. The standard sends nothing back.
    TokenInvalid,
    /// The private token decrypted but its contents are out of range.
    TokenMalformed,
    /// This server's public address is not listed in the private token.
    AddressNotInToken,
    /// A connection request or response from an address already connected.
    AlreadyConnected,
    /// The token's client id is already connected (from another address).
    ClientIdInUse,
    /// The token was first used from a different address.
    TokenUsedFromOtherAddress,
    /// The table of used tokens is full of unexpired entries.
    TokenTableFull,
    /// The half-open (pending) handshake table is full.
    PendingTableFull,
    /// A connection request of one client id from an address where
    /// another's handshake is under way: it does not take that handshake's
    /// place (a request forged with a token of the sender's own would end
    /// a player's handshake). The address's next one may start once that
    /// one has connected or timed out.
    AddressInHandshake,
    /// A connection request whose token was first used before the token
    /// of its client id's handshake under way: an older token, which does
    /// not take a newer one's place (a recorded request of it, replayed,
    /// would end the player's handshake). Only tokens this server has seen
    /// are ordered: one it has not counts as the newest.
    TokenSuperseded,
    /// Shorter than the smallest packet of its type.
    Truncated,
    /// Packet type 7 or higher.
    UnknownPacketType,
    /// A packet type this side never accepts (e.g. a challenge sent to a server).
    UnexpectedPacketType,
    /// Sequence-length nibble outside 1 to 8.
    MalformedHeader,
    /// Body size does not match the packet type.
    WrongBodySize,
    /// An encrypted packet from an address with no encryption mapping.
    UnknownAddress,
    /// Sequence number already received or older than the replay window.
    Replayed,
    /// The AEAD tag did not verify.
    DecryptFailed,
    /// A connection response whose challenge token did not decrypt.
    ChallengeInvalid,
    /// A packet that is valid but not expected in the current state.
    WrongState,
    /// A reply could not be queued because the outbound queue was full.
    OutboundQueueFull,
    /// No slot is free, but one is about to be: its client has left and
    /// its owner has not released it yet (see [`Server::hold`]). Unlike a
    /// full server this is not denied; the client's handshake packets are
    /// resent and a later one finds the slot.
    ///
    /// [`Server::hold`]: super::Server::hold
    SlotReleasing,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; 29] = [
        Self::Empty,
        Self::Oversized,
        Self::RequestWrongSize,
        Self::WrongVersion,
        Self::WrongProtocolId,
        Self::TokenExpired,
        Self::RateLimited,
        Self::TokenInvalid,
        Self::TokenMalformed,
        Self::AddressNotInToken,
        Self::AlreadyConnected,
        Self::ClientIdInUse,
        Self::TokenUsedFromOtherAddress,
        Self::TokenTableFull,
        Self::PendingTableFull,
        Self::AddressInHandshake,
        Self::TokenSuperseded,
        Self::Truncated,
        Self::UnknownPacketType,
        Self::UnexpectedPacketType,
        Self::MalformedHeader,
        Self::WrongBodySize,
        Self::UnknownAddress,
        Self::Replayed,
        Self::DecryptFailed,
        Self::ChallengeInvalid,
        Self::WrongState,
        Self::OutboundQueueFull,
        Self::SlotReleasing,
    ];
}

/// Drop counters indexed by [`DropReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounts {
    /// How many datagrams were dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts.get(reason as usize).copied().unwrap_or(0)
    }

    /// Total drops over all reasons.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    pub(crate) fn add(&mut self, reason: DropReason) {
        if let Some(c) = self.counts.get_mut(reason as usize) {
            *c = c.saturating_add(1);
        }
    }

    /// Non-zero counters, for logs and metrics.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

/// Server counters, from [`Server::stats`](super::Server::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Ignored datagrams by reason.
    pub dropped: DropCounts,
    /// Datagrams passed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Bytes passed to `handle_datagram`.
    pub bytes_received: u64,
    /// Datagrams produced by `poll_transmit` and `send_payload`.
    pub datagrams_sent: u64,
    /// Bytes produced by `poll_transmit` and `send_payload`.
    pub bytes_sent: u64,
    /// Challenge packets sent.
    pub challenges_sent: u64,
    /// Connection denied packets sent (server full).
    pub denials_sent: u64,
    /// Clients that completed the handshake.
    pub clients_connected: u64,
    /// Clients that timed out.
    pub clients_timed_out: u64,
    /// Payload packets delivered to the application.
    pub payloads_received: u64,
    /// Disconnect events dropped because the event queue was full.
    pub events_dropped: u64,
}

/// Client counters, from [`Client::stats`](super::Client::stats). The
/// two counted on every datagram first (`repr(C)`), next to the client's
/// other hot fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ClientStats {
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Payload packets delivered to the application.
    pub payloads_received: u64,
    /// Ignored datagrams by reason.
    pub dropped: DropCounts,
}

pub(crate) fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

pub(crate) fn bump_by(counter: &mut u64, n: usize) {
    *counter = counter.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
}
