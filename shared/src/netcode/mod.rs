//! The netcode.io 1.02 secure connection layer, sans-IO.
//!
//! A backend mints a [`ConnectToken`] with the private key it shares with the
//! dedicated servers; the [`Client`] uses it to connect to a [`Server`]; once
//! connected both sides exchange encrypted, authenticated payload packets of
//! 1 to 1200 bytes (the reliability layer in `transport` runs inside them).
//!
//! Neither side owns a socket, reads a clock or draws random numbers: the
//! caller passes `now: Instant` to every call (plus unix seconds where the
//! standard needs wall time, for token expiry), passes a
//! [`rand_core::CryptoRng`] or explicit bytes where keys and nonces are made,
//! hands in received datagrams and sends what `poll_transmit` /
//! `send_payload` write into its buffers. Received datagrams are decrypted in
//! place; in steady state no call allocates.
//!
//! ```
//! use std::time::Instant;
//! use shared::netcode::{Client, ClientConfig, ClientState, ConnectToken, Key, Server,
//!     ServerConfig, ServerEvent, TokenParams, MAX_PACKET_BYTES};
//! # struct Counter(u64);
//! # impl rand_core::TryRng for Counter { type Error = core::convert::Infallible;
//! #   fn try_next_u32(&mut self) -> Result<u32, Self::Error> { Ok(self.try_next_u64()? as u32) }
//! #   fn try_next_u64(&mut self) -> Result<u64, Self::Error> { self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); Ok(self.0) }
//! #   fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), Self::Error> { for b in d { *b = self.try_next_u64()? as u8 } Ok(()) } }
//! # impl rand_core::TryCryptoRng for Counter {}
//! # let mut rng = Counter(1); // use getrandom::SysRng in real code
//! let (server_addr, client_addr) = ("127.0.0.1:40000".parse().unwrap(), "127.0.0.1:50000".parse().unwrap());
//! let private_key = Key::generate(&mut rng);
//! let token = ConnectToken::generate(
//!     &TokenParams { protocol_id: 7, client_id: 42, create_timestamp: 1_000, expire_seconds: 30,
//!         timeout_seconds: 5, server_addresses: vec![server_addr], user_data: [0; 256] },
//!     &private_key, &mut rng).unwrap();
//! let mut server = Server::new(ServerConfig::new(7, private_key, vec![server_addr]), &mut rng).unwrap();
//! let mut client = Client::new(ClientConfig::new(7));
//! let now = Instant::now();
//! client.connect(&token, now, 1_000).unwrap();
//! let mut buf = [0u8; MAX_PACKET_BYTES];
//! // A real loop sends these over UDP; here they are handed across directly.
//! for _ in 0..3 {
//!     while let Some(t) = client.poll_transmit(now, &mut buf) {
//!         server.handle_datagram(now, 1_000, client_addr, &mut buf[..t.len]);
//!     }
//!     while let Some(t) = server.poll_transmit(now, &mut buf) {
//!         client.handle_datagram(now, server_addr, &mut buf[..t.len]);
//!     }
//! }
//! assert_eq!(client.state(), ClientState::Connected);
//! ```
//!
//! # Handshake and denials
//!
//! request (1078 bytes, clear, carrying the encrypted private token) →
//! challenge (≤ 333 bytes) → response → keep-alive (client index, max
//! clients). What the client can tell apart:
//!
//! | cause | client sees | server counts |
//! |---|---|---|
//! | server full | [`ClientState::ConnectionDenied`] (a denied packet) | `denials_sent` |
//! | token expired by wall clock at `connect` | [`ConnectError::Expired`], state [`ClientState::ConnectTokenExpired`] | [`DropReason::TokenExpired`] |
//! | token expires while connecting | [`ClientState::ConnectTokenExpired`] | — |
//! | token malformed / wrong version in the token | [`ConnectError::Token`] / [`ConnectError::InvalidToken`], state [`ClientState::InvalidConnectToken`] | [`DropReason::WrongVersion`], [`DropReason::TokenMalformed`] |
//! | token's protocol id ≠ the client's configured one | [`ConnectError::WrongProtocolId`], state [`ClientState::InvalidConnectToken`] | — |
//! | token's protocol id ≠ the server's | connect timeout ([`ClientState::ConnectionRequestTimedOut`]) | [`DropReason::WrongProtocolId`] |
//! | private part forged / wrong key | connect timeout | [`DropReason::TokenInvalid`] |
//! | server address not in token | connect timeout | [`DropReason::AddressNotInToken`] |
//! | token used before from another address | connect timeout | [`DropReason::TokenUsedFromOtherAddress`] |
//! | rate limited | connect timeout (or success on a retry) | [`DropReason::RateLimited`] |
//!
//! The standard sends nothing back in the timeout rows (answering would let
//! anyone probe the server), so the client cannot observe more than the
//! timeout; the server's counters name the cause.
//!
//! # Denial of service
//!
//! - Before a token decrypts, the server holds nothing per source except the
//!   fixed-size rate-limit table ([`HandshakeRateLimit`]).
//! - Handshake packets that yield nothing are limited per source, and past
//!   that by one spare budget of all sources together: one forging a
//!   player's address spends the address's limit, but the player's own
//!   packets keep a share of the spare, so its handshake is slowed, not
//!   stopped. The decryption work is bounded by the two rates for the
//!   sources the table tracks; a flood from more distinct sources than it
//!   holds (spoofed, each new or evicted one let in) costs one decryption
//!   of a 1078-byte request per packet, about what the kernel spends
//!   receiving it: bounded by the flood's bandwidth, not by the rates.
//! - Every reply is smaller than the packet that caused it: challenge ≤ 333
//!   bytes for a 1078-byte request, denied ≤ 25 bytes, keep-alive ≤ 33 bytes.
//!   One request or response causes at most one reply.
//! - A token is bound to the first address that used it (table keyed by the
//!   token's MAC, bounded by [`ServerConfig::max_token_entries`]). A client
//!   id holds at most 8 entries: a newer token takes the place of its token
//!   that expires first, which is then refused as expired (taken as new,
//!   it would number a handshake in blocks its keys already used). Filling
//!   the table takes an account per 8 entries, not many tokens for one.
//! - Half-open handshakes are bounded ([`ServerConfig::max_pending`]) and
//!   expire, and a client id holds at most one: a newer request for it,
//!   from any address, takes the older handshake's place (a response to
//!   the older one is then dropped: [`DropReason::UnknownAddress`] from
//!   another address, [`DropReason::DecryptFailed`] from the same one).
//!   An address holds one client id's handshake at a time: another's
//!   request from it is dropped ([`DropReason::AddressInHandshake`]) until
//!   that one connects or times out, so a request forged from a player's
//!   address with a token of the forger's own does not end the player's
//!   handshake. The price: a client that gives up a handshake and starts
//!   another account's from the same socket waits for the first to time
//!   out, and one who can forge a player's exact address and port holds
//!   it for as long as it repeats its request (a client that takes a new
//!   port for each connection is not held: the forger learns the port
//!   only from a request whose handshake is then protected).
//!   Filling the table takes as many accounts as it has entries, not many
//!   tokens for one.
//! - All tables are allocated at construction for their bounds. The
//!   handshake and token maps may each reallocate once, to twice their
//!   size, when removed entries pile up while they are over half full;
//!   nothing grows past that. The queue of packets owed may pass its
//!   reserve by one keep-alive a client, and is drained by every
//!   `poll_transmit`.
//!
//! # Nonces
//!
//! Each (key, direction) has exactly one sequence counter that only goes up:
//! the server's challenge, denied (after a challenge), keep-alive, payload and
//! disconnect packets to a client share the per-client counter, which carries
//! over from the handshake to the connection. Each handshake with a token
//! gets a block of 2^32 of that counter, `(base + attempt) * 2^32`, because
//! the key is the token's and would otherwise repeat on a reconnect; `base`
//! is random per server process (1 to 2^16 - 1), so that a restarted server
//! seeing the token again most likely (1 - 2^-16) does not start where the
//! last one did. The sequences then take five to seven bytes on the wire
//! (six, mostly). Denials sent
//! before any per-client state exists (server full at request time) use a
//! server-wide counter starting at a random point above 2^63. The server
//! also remembers, per token, the newest client sequence its ended
//! connections accepted, and drops anything up to it in a new connection
//! with that token (a late or replayed packet of an earlier one). The
//! client's counter starts, for a token it does not remember, at the
//! token's age in seconds times [`SEQUENCES_PER_SECOND`] (2^20),
//! and keeps counting across server addresses and across `connect` calls
//! with a token it used before, other tokens in between (it remembers its
//! last eight tokens). A new `Client` with a token an earlier one used (the
//! program run again with a saved token) so starts past the earlier one's
//! numbers: its packets repeat no nonce of the earlier session's, and
//! those, recorded and replayed, are refused as old also by a server that
//! never saw the token before (restarted, or the next address in it),
//! unless both began within the same second. A clock that reads before
//! the token's creation (behind the token maker's) numbers runs by how far
//! behind it is, within the token's first second's numbers (see
//! [`CLOCK_BEHIND_SPAN_SECS`]): runs on it keep their order, but one made
//! in the token's first second after it, or on a clock more than that
//! span behind, may repeat an earlier run's numbers. Challenge tokens use their own server key and
//! counter. A counter that would pass `u64::MAX` stops sending
//! ([`SendError::SequenceExhausted`]) instead of wrapping.
//!
//! Packets of an earlier attempt, late or replayed, are not taken for this
//! one's: once the client takes a challenge, it takes the server's
//! per-client packets only in the challenge's block (ours numbers a whole
//! handshake and its session in one; a reference server's challenge is
//! numbered server-wide and its session in block 0), which also holds
//! against a program run again, which remembers nothing, once the server's
//! own challenge came first (a challenge echoes nothing of the request, so
//! an earlier run's, replayed before it, still leads a fresh client into
//! that run's session; persist a token's ended blocks with it where that
//! matters, or mint one token per attempt); before that, it
//! remembers, per token, the blocks of its sessions that ended and of
//! handshakes a denial ended (the server never numbers anything in them
//! again), and per server the newest server-wide denial it took. Inherent in the protocol: a token handed to several servers
//! (failover) makes each of them number server-to-client packets in
//! blocks of their own choosing under the same key; a handshake the
//! client abandoned may go on in the same block when it tries again, so
//! its packets cannot be told apart; and a reference server numbers every
//! session from zero (block 0, never taken for an earlier one), so there a
//! late keep-alive can end a handshake early. Mint one token per
//! connection attempt where that matters.
//!
//! # Where this follows the standard, not older text or other code
//!
//! - Address types are 1 (IPv4) and 2 (IPv6), as the format tables say; older
//!   prose said `[0,1]` (an erratum).
//! - The challenge token in the response is 300 bytes (older prose said 360),
//!   and the request is 1078 bytes (older prose said 1062, before the 24-byte
//!   token nonce).
//! - The IETF nonce is four zero bytes then the little-endian sequence.
//! - Replay protection is checked before decryption and advanced after, with
//!   overflow-free arithmetic.
//! - Differences from `netcode-official` 1.0.0 (the Rust port of the
//!   reference), read from its source while testing interop; none affects
//!   the wire format:
//!   - its client restarts the connect-token expiry clock at each server
//!     address it fails over to; the standard (and ours) bounds the whole
//!     connection process, across addresses, by expire minus create;
//!   - its client restarts its packet sequence at zero when `connect` is
//!     called again, so reusing a token repeats (key, nonce) pairs; ours
//!     keeps counting for the same token;
//!   - its server sends challenges and denials from one global counter
//!     starting at 2^63 under each client's key; ours uses the per-client
//!     counter (see Nonces), keeping the global counter only for denials
//!     sent before a client has state;
//!   - it caps servers at 256 clients; ours makes it configuration (10,000
//!     is tested).
//! - The standard says sequence numbers start at zero. The client's start
//!   at the token's age in seconds times [`SEQUENCES_PER_SECOND`] for a
//!   token it does not remember and continue on reconnects with it; the
//!   server's start each handshake in a block of their own; both as
//!   described under Nonces. Peers accept this: replay protection only
//!   rejects old sequence numbers.
//!
//! # Additions to the standard
//!
//! - Per-source-IP handshake rate limit, checked before token decryption.
//! - The cheap "address already connected" check runs before decryption
//!   (the standard lists it after); the same packets are ignored.

mod addresses;
mod client;
mod crypto;
mod history;
mod packet;
mod ratelimit;
mod replay;
mod server;
mod stats;
mod token;
mod wire;

#[cfg(test)]
mod tests;

pub use client::{
    CLOCK_BEHIND_SPAN_SECS, Client, ClientConfig, ClientEvent, ClientState, ConnectError,
    SEQUENCES_PER_SECOND,
};
pub use ratelimit::HandshakeRateLimit;
pub use server::{
    AddressLookup, ClientIndex, ConfigError, DisconnectError, DisconnectReason, Located, SendError,
    Server, ServerConfig, ServerEvent,
};
pub use stats::{ClientStats, DropCounts, DropReason, ServerStats};
pub use token::{ConnectToken, TokenError, TokenParams};

use rand_core::CryptoRng;

/// `"NETCODE 1.02"` with its null terminator.
pub const VERSION_INFO: [u8; 13] = *b"NETCODE 1.02\0";
/// Size of a serialized connect token.
pub const CONNECT_TOKEN_BYTES: usize = 2048;
/// Size of the encrypted private part of a connect token (tag included).
pub const CONNECT_TOKEN_PRIVATE_BYTES: usize = 1024;
/// Size of the XChaCha20-Poly1305 nonce of a connect token.
pub const CONNECT_TOKEN_NONCE_BYTES: usize = 24;
/// Size of an encrypted challenge token (tag included).
pub const CHALLENGE_TOKEN_BYTES: usize = 300;
/// Size of the application data carried in a token.
pub const USER_DATA_BYTES: usize = 256;
/// Size of a key.
pub const KEY_BYTES: usize = 32;
/// Size of an AEAD tag.
pub const MAC_BYTES: usize = 16;
/// Largest payload in one packet.
pub const MAX_PAYLOAD_BYTES: usize = 1200;
/// Largest datagram netcode sends or accepts (a full payload packet with an
/// 8-byte sequence); buffers passed to `poll_transmit` must be this big.
pub const MAX_PACKET_BYTES: usize = 1 + 8 + MAX_PAYLOAD_BYTES + MAC_BYTES;
/// Server addresses a token may list.
pub const MAX_SERVER_ADDRESSES: usize = 32;
/// Redundant disconnect packets sent on a clean disconnect.
pub const NUM_DISCONNECT_PACKETS: usize = 10;
/// Size of a connection request packet.
pub const CONNECTION_REQUEST_BYTES: usize = packet::REQUEST_BYTES;

/// A 256-bit symmetric key. `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; KEY_BYTES]);

impl Key {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// A datagram written into the caller's buffer: send `buf[..len]` to
/// `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: std::net::SocketAddr,
    /// How many bytes of the buffer it occupies.
    pub len: usize,
}
