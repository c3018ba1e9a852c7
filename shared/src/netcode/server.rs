//! The sans-IO netcode.io server.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, DefaultHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;

use crate::prefetch::prefetch;

use super::addresses::{AddressHash, AddressTable, same_address};
use super::crypto::{PacketCipher, prf_u64};
use super::packet::{self, CHALLENGE_BODY_BYTES, PacketKind, Side};
use super::ratelimit::{HandshakeRateLimit, RateLimiter};
use super::replay::ReplayWindow;
use super::stats::{DropReason, ServerStats, bump, bump_by};
use super::token;
use super::{
    CHALLENGE_TOKEN_BYTES, CONNECT_TOKEN_PRIVATE_BYTES, Key, MAC_BYTES, MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES, NUM_DISCONNECT_PACKETS, Transmit, USER_DATA_BYTES, VERSION_INFO,
};

/// Lowest first sequence number of the server-wide counter used for
/// connection denied packets sent before any per-client state exists (each
/// server starts at a random point above it). Per-client counters stay
/// below it, so the two ranges never meet under one key.
const GLOBAL_SEQUENCE_START: u64 = 1 << 63;

/// Upper bound on how long a half-open handshake lives when the token
/// disables timeouts.
const MAX_PENDING_LIFETIME: Duration = Duration::from_secs(60);

/// Server configuration. [`ServerConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Unique to this game or application; requests for another are dropped.
    pub protocol_id: u64,
    /// Key shared with the backend that mints connect tokens.
    pub private_key: Key,
    /// The addresses clients use to reach this server. A token is accepted
    /// only if it lists one of them.
    pub public_addresses: Vec<SocketAddr>,
    /// Client slots. When all are taken, new clients get a connection denied
    /// packet. Memory for every slot is allocated up front.
    pub max_clients: usize,
    /// Half-open handshakes (valid token, no response yet) held at once. At the
    /// limit new requests are dropped ([`DropReason::PendingTableFull`]). Each
    /// entry expires after the token's timeout (at most one minute if the token
    /// disables timeouts) or at the token's expiry, whichever is first. A
    /// client id holds at most one: a request for a client id whose
    /// handshake is held, from any address, takes that handshake's place
    /// (the player trying again, e.g. from the new port its NAT moved it
    /// to), and a response to the old one is dropped
    /// ([`DropReason::UnknownAddress`] from another address).
    pub max_pending: usize,
    /// Used tokens remembered (token MAC -> first address). At the limit,
    /// entries whose token has expired are purged (at most once a second);
    /// if none has, new tokens are dropped ([`DropReason::TokenTableFull`]).
    /// A client id holds at most 8: its ninth token takes the place of the
    /// one of its eight that expires first, which is then refused as
    /// expired ([`DropReason::TokenExpired`]), so filling the table takes
    /// an eighth as many accounts as it has entries. So are the account's
    /// other new tokens that expire no later than one it lost: a backend
    /// that mints an account's tokens with one lifetime (each expiring
    /// after the one before) never meets this; one that mixes lifetimes
    /// (hour-long tokens, then a minute-long one) may, past 8 tokens.
    /// Memory, allocated at start: about 500 bytes an entry (the tokens
    /// and the index of each client id's), ≈ 8 MB at 16,384.
    /// A purge is what makes a wall clock stepped forward matter: tokens
    /// that expire before the stepped time stay refused until the clock,
    /// corrected, passes it (so that a purged token never comes back).
    pub max_token_entries: usize,
    /// A keep-alive is sent to a client after this long without sending it
    /// anything.
    pub keepalive_interval: Duration,
    /// How often [`Server::handle_timeout`] scans clients for timeouts and
    /// keep-alives; [`Server::poll_timeout`] returns the next scan.
    pub service_interval: Duration,
    /// Per-source-IP limit on connection requests and responses.
    pub rate_limit: HandshakeRateLimit,
}

impl ServerConfig {
    /// A configuration with defaults: 64 clients, 10 Hz keep-alives.
    pub fn new(protocol_id: u64, private_key: Key, public_addresses: Vec<SocketAddr>) -> Self {
        Self {
            protocol_id,
            private_key,
            public_addresses,
            max_clients: 64,
            max_pending: 1024,
            max_token_entries: 16 * 1024,
            keepalive_interval: Duration::from_millis(100),
            service_interval: Duration::from_millis(20),
            rate_limit: HandshakeRateLimit::default(),
        }
    }
}

/// A configuration the server cannot run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `public_addresses` is empty.
    #[error("the server needs at least one public address")]
    NoPublicAddress,
    /// `max_clients` is zero or does not fit the keep-alive's u32.
    #[error("max_clients must be in 1..=u32::MAX, got {0}")]
    MaxClients(usize),
    /// `max_pending` or `max_token_entries` is zero.
    #[error("max_pending and max_token_entries must be at least 1")]
    ZeroTable,
}

/// A client slot on the server: the standard's client index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientIndex(u32);

impl ClientIndex {
    /// The index of slot `slot` (lookups with a slot that holds no client
    /// simply find nothing).
    pub const fn from_slot(slot: u32) -> Self {
        Self(slot)
    }

    /// The slot number, in `0..max_clients`.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// A datagram's sender, hashed, its line of the address table on its way:
/// the first half of a lookup ([`Server::lookup`], then
/// [`Server::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLookup {
    from: SocketAddr,
    hash: AddressHash,
}

/// A datagram's sender looked up ahead of handling the datagram (see
/// [`Server::locate`]): the lookup stands while no client has joined or left
/// since, and is done again otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    sender: AddressLookup,
    slot: Option<u32>,
    /// [`Server`]'s `addresses_version` at the lookup.
    version: u64,
}

impl Located {
    /// The connected client the datagram came from, if any (at the lookup).
    pub fn client(&self) -> Option<ClientIndex> {
        self.slot.map(ClientIndex)
    }
}

/// Why a client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent a disconnect packet.
    ClientDisconnected,
    /// Nothing arrived from the client within the token's timeout.
    TimedOut,
}

/// What the server tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// A client completed the handshake and owns `client`.
    ClientConnected {
        /// Its slot.
        client: ClientIndex,
        /// From the connect token.
        client_id: u64,
        /// From the connect token, opaque to netcode.
        user_data: Box<[u8; USER_DATA_BYTES]>,
    },
    /// A client left; its slot is free again.
    ClientDisconnected {
        /// The slot it occupied.
        client: ClientIndex,
        /// From its connect token.
        client_id: u64,
        /// Why.
        reason: DisconnectReason,
    },
    /// A payload from a connected client, decrypted in place in the caller's
    /// datagram buffer.
    Payload {
        /// The sender.
        client: ClientIndex,
        /// 1 to 1200 bytes.
        data: &'a [u8],
    },
}

/// Why a payload could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No client in that slot.
    #[error("no client is connected in that slot")]
    UnknownClient,
    /// Payloads are 1 to 1200 bytes.
    #[error("payload must be 1 to {MAX_PAYLOAD_BYTES} bytes, got {0}")]
    PayloadSize(usize),
    /// The output buffer cannot hold the packet.
    #[error("output buffer too small (need {MAX_PACKET_BYTES} bytes)")]
    BufferTooSmall,
    /// The connection's block of 2^32 sequence numbers is used up (years
    /// at game rates); reconnect with a new token.
    #[error("packet sequence numbers exhausted")]
    SequenceExhausted,
}

/// Why a disconnect could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectError {
    /// No client in that slot.
    #[error("no client is connected in that slot")]
    UnknownClient,
}

/// Keyed SipHash for tables indexed by attacker-chosen values: SipHash
/// that has absorbed the two key words first. The state after them is kept
/// and cloned for every hash (absorbing the key again cost two SipHash
/// rounds on every lookup, one per datagram).
#[derive(Clone)]
pub(super) struct KeyedHash(DefaultHasher);

impl KeyedHash {
    pub(super) fn new(key: [u64; 2]) -> Self {
        let mut h = DefaultHasher::new();
        h.write_u64(key[0]);
        h.write_u64(key[1]);
        Self(h)
    }
}

impl BuildHasher for KeyedHash {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        self.0.clone()
    }
}

struct Connection {
    address: SocketAddr,
    client_id: u64,
    user_data: Box<[u8; USER_DATA_BYTES]>,
    send: PacketCipher,
    recv: PacketCipher,
    next_sequence: u64,
    replay: ReplayWindow,
    last_received: Instant,
    last_sent: Instant,
    timeout: Option<Duration>,
    confirmed: bool,
    keepalive_queued: bool,
    /// The token's entry in `token_uses`, told the newest sequence this
    /// connection accepted when it ends.
    token_mac: [u8; MAC_BYTES],
}

struct Slot {
    generation: u32,
    connection: Option<Connection>,
    /// Its owner keeps state for the slot past its connection (see
    /// [`Server::hold`]): not free until released.
    held: bool,
}

struct Pending {
    client_id: u64,
    user_data: [u8; USER_DATA_BYTES],
    token_mac: [u8; MAC_BYTES],
    send: PacketCipher,
    recv: PacketCipher,
    next_sequence: u64,
    /// The first challenge sequence this handshake can have sent: a
    /// response to an older one answers an earlier attempt with the same
    /// token (denied, or given up), whose client has moved on.
    challenges_from: u64,
    timeout: Option<Duration>,
    expires: Instant,
}

/// Half-open handshakes by source address, at most one per client id:
/// one account holds one entry however many tokens it has.
struct PendingTable {
    by_address: HashMap<SocketAddr, Pending, KeyedHash>,
    /// The address of each client id's handshake: an entry for each entry
    /// of `by_address`, added and removed with it.
    by_client_id: HashMap<u64, SocketAddr, KeyedHash>,
}

impl PendingTable {
    /// Room for `capacity` handshakes, allocated now.
    fn new(capacity: usize, hash: KeyedHash) -> Self {
        Self {
            by_address: HashMap::with_capacity_and_hasher(capacity, hash.clone()),
            by_client_id: HashMap::with_capacity_and_hasher(capacity, hash),
        }
    }

    fn len(&self) -> usize {
        self.by_address.len()
    }

    fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    /// `from`'s handshake, unless it has ended by `now` (its timeout or
    /// its token's expiry): the service tick forgets it later, and a
    /// datagram handled before that must find it over.
    fn live(&self, from: &SocketAddr, now: Instant) -> Option<&Pending> {
        self.by_address
            .get(from)
            .filter(|pending| pending.expires > now)
    }

    /// `client_id`'s handshake, from any address, unless it has ended by
    /// `now`.
    fn live_of_client(&self, client_id: u64, now: Instant) -> Option<&Pending> {
        let from = self.by_client_id.get(&client_id)?;
        self.live(from, now)
    }

    /// `from`'s handshake, to change anything but its client id.
    fn get_mut(&mut self, from: &SocketAddr) -> Option<&mut Pending> {
        self.by_address.get_mut(from)
    }

    /// Whether [`insert`](Self::insert)ing a handshake of `client_id` at
    /// `from` takes the place of one held (and so needs no room).
    fn replaces(&self, from: &SocketAddr, client_id: u64) -> bool {
        self.by_address.contains_key(from) || self.by_client_id.contains_key(&client_id)
    }

    /// Holds `pending` for `from`, in place of `from`'s handshake and of
    /// its client id's from any address.
    fn insert(&mut self, from: SocketAddr, pending: Pending) {
        self.remove(&from);
        if let Some(earlier) = self.by_client_id.insert(pending.client_id, from) {
            self.by_address.remove(&earlier);
        }
        self.by_address.insert(from, pending);
    }

    fn remove(&mut self, from: &SocketAddr) -> Option<Pending> {
        let pending = self.by_address.remove(from)?;
        self.by_client_id.remove(&pending.client_id);
        Some(pending)
    }

    /// Forgets the handshakes that expire by `now`.
    fn remove_expired(&mut self, now: Instant) {
        let by_client_id = &mut self.by_client_id;
        self.by_address.retain(|_, pending| {
            let live = pending.expires > now;
            if !live {
                by_client_id.remove(&pending.client_id);
            }
            live
        });
    }
}

struct TokenUse {
    client_id: u64,
    address: SocketAddr,
    expire_timestamp: u64,
    /// Handshakes started with this token so far; each gets its own block
    /// of server-to-client sequence numbers (see [`SEQUENCE_BLOCK_BITS`]).
    attempts: u64,
    /// The newest client-to-server sequence an ended connection with this
    /// token accepted. The client keeps counting when it reconnects with
    /// the same token, so anything up to here is a replay of an earlier
    /// connection's packets.
    client_floor: Option<u64>,
    /// When it was first used, in the order of first uses (see
    /// `Server::token_order`): of two tokens of one client id, the one
    /// first used later is the newer.
    first_use: u64,
}

/// Used tokens remembered for one client id at once. An honest player uses
/// one or two tokens within an expiry; one account whose backend mints it
/// many more would otherwise hold the whole table and have every other
/// player's new token dropped. Past this, the account's token that expires
/// first is forgotten to make room, and then refused like an expired one
/// (see [`TokenTable::forgot`]): taken as new, it would number a handshake
/// in blocks its keys already used. So only the account's own older tokens
/// lose their binding to their first address (which protects a token
/// sniffed on the path).
const TOKENS_PER_CLIENT_ID: usize = 8;

/// Used tokens by MAC, at most [`TOKENS_PER_CLIENT_ID`] per client id.
struct TokenTable {
    by_mac: HashMap<[u8; MAC_BYTES], TokenUse, KeyedHash>,
    /// Each client id's tokens: an entry for each entry of `by_mac`, added
    /// and removed with it.
    by_client_id: HashMap<u64, ClientTokens, KeyedHash>,
}

/// One client id's used tokens, oldest first.
struct ClientTokens {
    macs: [[u8; MAC_BYTES]; TOKENS_PER_CLIENT_ID],
    len: usize,
    /// The latest expiry of a token forgotten to make room; every token
    /// held expires no sooner (the one that expires first is forgotten).
    forgotten_through: u64,
}

impl ClientTokens {
    fn held(&self) -> &[[u8; MAC_BYTES]] {
        self.macs.get(..self.len).unwrap_or_default()
    }

    fn remove(&mut self, mac: &[u8; MAC_BYTES]) {
        if let Some(at) = self.held().iter().position(|m| m == mac) {
            self.macs.copy_within(at + 1..self.len, at);
            self.len -= 1;
        }
    }
}

impl TokenTable {
    /// Room for `capacity` tokens, allocated now.
    fn new(capacity: usize, hash: KeyedHash) -> Self {
        Self {
            by_mac: HashMap::with_capacity_and_hasher(capacity, hash.clone()),
            by_client_id: HashMap::with_capacity_and_hasher(capacity, hash),
        }
    }

    fn len(&self) -> usize {
        self.by_mac.len()
    }

    fn get(&self, mac: &[u8; MAC_BYTES]) -> Option<&TokenUse> {
        self.by_mac.get(mac)
    }

    /// `mac`'s entry, to change anything but its client id.
    fn get_mut(&mut self, mac: &[u8; MAC_BYTES]) -> Option<&mut TokenUse> {
        self.by_mac.get_mut(mac)
    }

    /// Whether a token of `client_id` not held, expiring at
    /// `expire_timestamp`, may be one forgotten to make room. Once the
    /// client id holds no token, the purge of expired tokens that forgot
    /// its last one has passed that expiry, and the server refuses such
    /// tokens as expired itself.
    fn forgot(&self, client_id: u64, expire_timestamp: u64) -> bool {
        self.by_client_id
            .get(&client_id)
            .is_some_and(|tokens| expire_timestamp <= tokens.forgotten_through)
    }

    /// Whether [`insert`](Self::insert)ing a token of `client_id` takes
    /// the place of one held (and so needs no room).
    fn replaces(&self, client_id: u64) -> bool {
        self.by_client_id
            .get(&client_id)
            .is_some_and(|tokens| tokens.len == TOKENS_PER_CLIENT_ID)
    }

    /// Holds `used` for `mac` (an entry already held stays as it is); a
    /// client id holding [`TOKENS_PER_CLIENT_ID`] forgets its token that
    /// expires first, the oldest of those.
    fn insert(&mut self, mac: [u8; MAC_BYTES], used: TokenUse) {
        if self.by_mac.contains_key(&mac) {
            return;
        }
        let tokens = self
            .by_client_id
            .entry(used.client_id)
            .or_insert(ClientTokens {
                macs: [[0; MAC_BYTES]; TOKENS_PER_CLIENT_ID],
                len: 0,
                forgotten_through: 0,
            });
        if tokens.len == TOKENS_PER_CLIENT_ID {
            let by_mac = &self.by_mac;
            let first = tokens
                .held()
                .iter()
                .copied()
                .min_by_key(|m| by_mac.get(m).map_or(0, |u| u.expire_timestamp));
            if let Some(first) = first {
                tokens.remove(&first);
                if let Some(forgotten) = self.by_mac.remove(&first) {
                    tokens.forgotten_through =
                        tokens.forgotten_through.max(forgotten.expire_timestamp);
                }
            }
        }
        if let Some(slot) = tokens.macs.get_mut(tokens.len) {
            *slot = mac;
            tokens.len += 1;
            self.by_mac.insert(mac, used);
        }
    }

    /// Forgets the tokens that expire by `unix_secs`.
    fn remove_expired(&mut self, unix_secs: u64) {
        let by_client_id = &mut self.by_client_id;
        self.by_mac.retain(|mac, used| {
            let live = used.expire_timestamp > unix_secs;
            if !live && let Some(tokens) = by_client_id.get_mut(&used.client_id) {
                tokens.remove(mac);
                if tokens.len == 0 {
                    by_client_id.remove(&used.client_id);
                }
            }
            live
        });
    }
}

/// A token reused for a new handshake (e.g. reconnect after a disconnect)
/// starts its server-to-client counter in a block of its own,
/// `(block_base + attempt) << 32`, so the same key never sees the same
/// nonce twice; 2^32 packets is years of a connection at game rates.
/// `block_base` is random per server (1 to 2^16 - 1: block 0 is where a
/// reference server numbers a handshake, which clients never hold
/// ended; see [`first_block`]), so that a restarted
/// server seeing a token again does not start where the last one did: the
/// chance that two runs' blocks meet is about 2^-16 a restart. When they
/// do, they meet for every token reconnecting across the two runs at
/// once (the base is the server's), and the chances add up over the
/// restarts within a token's lifetime (about R²/2^17 for R restarts: a
/// crash loop of 100 restarts, about 7 %). Such a token's challenge
/// repeats a nonce of the last run under its key; its client drops it as
/// a replay, and the token does not connect to this server before it
/// expires (the repeated requests keep the handshake's block). The price
/// of this scheme is the sequence's
/// width on the wire: five to seven bytes (six, mostly) instead of one to
/// three; a wider random base would cost a byte more on every packet.
const SEQUENCE_BLOCK_BITS: u32 = 32;
const MAX_ATTEMPTS_PER_TOKEN: u64 = 1 << 16;

/// The sequence after `sequence` in its block, `None` at the block's end:
/// the next block is the same token's next handshake, under the same key,
/// and running into it would send two packets with one nonce. (The
/// block's last number is never used: 2^32 - 1 packets are years of a
/// connection at game rates, and tokens expire long before.)
fn next_in_block(sequence: u64) -> Option<u64> {
    let next = sequence.checked_add(1)?;
    (next & ((1 << SEQUENCE_BLOCK_BITS) - 1) != 0).then_some(next)
}

/// The block a server's first handshake of a token is numbered in, from
/// the random `starts`: never 0.
fn first_block(starts: u64) -> u64 {
    1 + starts % (MAX_ATTEMPTS_PER_TOKEN - 1)
}

enum Owed {
    Challenge {
        to: SocketAddr,
    },
    DeniedPending {
        to: SocketAddr,
        cipher: PacketCipher,
        sequence: u64,
    },
    Denied {
        to: SocketAddr,
        cipher: PacketCipher,
    },
    KeepAlive {
        slot: u32,
        generation: u32,
    },
    Disconnect {
        to: SocketAddr,
        cipher: PacketCipher,
        next_sequence: u64,
        remaining: usize,
    },
}

/// A netcode.io 1.02 server as a sans-IO state machine.
///
/// It never touches a socket, a clock or a random number generator: the
/// caller passes datagrams in, pulls datagrams out, and supplies time.
///
/// Method families:
/// - `handle_*`: [`handle_datagram`](Self::handle_datagram) for each received
///   datagram (it may return an event at once, borrowing the decrypted payload
///   from the caller's buffer); [`handle_timeout`](Self::handle_timeout) when
///   the deadline from [`poll_timeout`](Self::poll_timeout) passes.
/// - `poll_*`: [`poll_event`](Self::poll_event) (disconnects found by timers),
///   [`poll_transmit`](Self::poll_transmit) (handshake replies, keep-alives,
///   disconnect packets), [`poll_timeout`](Self::poll_timeout).
/// - commands: [`send_payload`](Self::send_payload) (seals one packet into the
///   caller's buffer; send it right away), [`disconnect`](Self::disconnect).
///
/// Drain order after any `handle_*` or command: `poll_event` until `None`,
/// then `poll_transmit` until `None`, then re-arm the timer from
/// `poll_timeout`. Draining `poll_transmit` promptly matters for a freshly
/// connected client: its first keep-alive (which carries its client index)
/// must reach it before payloads, or it drops them as the standard requires.
pub struct Server {
    config: ServerConfig,
    challenge_cipher: PacketCipher,
    challenge_sequence: u64,
    /// First uses of tokens so far (see [`TokenUse::first_use`]).
    token_order: u64,
    global_sequence: u64,
    /// Where every token's blocks of sequence numbers start (see
    /// [`SEQUENCE_BLOCK_BITS`]).
    block_base: u64,
    slots: Vec<Slot>,
    /// Per slot, no later than the connection's next deadline (its timeout
    /// or its next keep-alive); `None` for a free slot. The deadlines only
    /// move later (every datagram in or out moves them), so this needs no
    /// update per packet: the periodic service reads this dense array and
    /// touches a slot itself, cold in the cache, only when its bound comes
    /// due (about once per keep-alive interval, not once per service).
    check_at: Vec<Option<Instant>>,
    free: Vec<u32>,
    /// Slots whose connection ended while held: neither connected nor free.
    held_ended: usize,
    by_address: AddressTable,
    /// Changes with every change of `by_address`, so that a [`Located`]
    /// can tell whether its lookup still stands.
    addresses_version: u64,
    by_client_id: HashMap<u64, u32, KeyedHash>,
    pending: PendingTable,
    token_uses: TokenTable,
    last_token_purge: Option<Instant>,
    /// The wall clock (seconds) of the last purge of expired tokens. A
    /// token that expired by then may have been forgotten: taken again
    /// after the clock stepped back, it would start its sequence numbers
    /// (nonces under its keys) from the beginning, so it stays expired.
    /// The price: a purge while the wall clock is stepped forward (a bad
    /// time sync, a resumed VM) refuses as expired every token that
    /// expires before that time, until the corrected clock catches up.
    purged_through: u64,
    limiter: RateLimiter,
    owed: VecDeque<Owed>,
    owed_capacity: usize,
    events: VecDeque<(ClientIndex, u64, DisconnectReason)>,
    next_service: Option<Instant>,
    stats: ServerStats,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("public_addresses", &self.config.public_addresses)
            .field("max_clients", &self.config.max_clients)
            .field("connected", &self.num_connected())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Creates a server. `rng` supplies the challenge-token key, the keys of
    /// the internal hash tables and where its sequence numbers start;
    /// nothing else is random.
    pub fn new(config: ServerConfig, rng: &mut impl CryptoRng) -> Result<Self, ConfigError> {
        if config.public_addresses.is_empty() {
            return Err(ConfigError::NoPublicAddress);
        }
        let max = u32::try_from(config.max_clients)
            .ok()
            .filter(|m| *m > 0)
            .ok_or(ConfigError::MaxClients(config.max_clients))?;
        if config.max_pending == 0 || config.max_token_entries == 0 {
            return Err(ConfigError::ZeroTable);
        }
        let secret = Key::generate(rng);
        let hash = KeyedHash::new([prf_u64(&secret, 1), prf_u64(&secret, 2)]);
        let limiter_key = [prf_u64(&secret, 3), prf_u64(&secret, 4)];
        let starts = prf_u64(&secret, 5);
        let n = config.max_clients;
        let owed_capacity = n
            .saturating_mul(2)
            .saturating_add(config.max_pending)
            .saturating_add(256);
        Ok(Self {
            challenge_cipher: PacketCipher::new(&Key::generate(rng)),
            challenge_sequence: 0,
            token_order: 0,
            global_sequence: GLOBAL_SEQUENCE_START | (starts >> 2),
            block_base: first_block(starts),
            slots: (0..n)
                .map(|_| Slot {
                    generation: 0,
                    connection: None,
                    held: false,
                })
                .collect(),
            check_at: vec![None; n],
            free: (0..max).rev().collect(),
            held_ended: 0,
            by_address: AddressTable::new(n, hash.clone()),
            addresses_version: 0,
            by_client_id: HashMap::with_capacity_and_hasher(n, hash.clone()),
            pending: PendingTable::new(config.max_pending, hash.clone()),
            token_uses: TokenTable::new(config.max_token_entries, hash),
            last_token_purge: None,
            purged_through: 0,
            limiter: RateLimiter::new(config.rate_limit, limiter_key),
            owed: VecDeque::with_capacity(owed_capacity),
            owed_capacity,
            events: VecDeque::with_capacity(n),
            next_service: None,
            stats: ServerStats::default(),
            config,
        })
    }

    /// The configuration this server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters, including drops by reason.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Connected clients.
    pub fn num_connected(&self) -> usize {
        self.config
            .max_clients
            .saturating_sub(self.free.len() + self.held_ended)
    }

    /// Half-open handshakes currently held.
    pub fn num_pending(&self) -> usize {
        self.pending.len()
    }

    /// Used-token entries currently held.
    pub fn num_token_entries(&self) -> usize {
        self.token_uses.len()
    }

    /// Buckets the rate limiter holds (bounded by its fixed table): one
    /// per IPv4 source, three per IPv6 one (its /64, its /56 and its /48).
    pub fn num_rate_limited_sources(&self) -> usize {
        self.limiter.tracked()
    }

    /// Fixed size of the rate-limit table (it never grows).
    pub fn rate_limit_capacity(&self) -> usize {
        self.limiter.capacity()
    }

    /// The slot of the client at `address`, if connected.
    pub fn client_at(&self, address: SocketAddr) -> Option<ClientIndex> {
        self.by_address
            .get(&address, self.by_address.hash(&address))
            .map(ClientIndex)
    }

    /// The slot of the client with `client_id`, if connected.
    pub fn client_by_id(&self, client_id: u64) -> Option<ClientIndex> {
        self.by_client_id.get(&client_id).copied().map(ClientIndex)
    }

    /// Address of a connected client.
    pub fn client_address(&self, client: ClientIndex) -> Option<SocketAddr> {
        self.connection(client).map(|c| c.address)
    }

    /// Client id of a connected client.
    pub fn client_id(&self, client: ClientIndex) -> Option<u64> {
        self.connection(client).map(|c| c.client_id)
    }

    /// User data of a connected client (from its connect token).
    pub fn client_user_data(&self, client: ClientIndex) -> Option<&[u8; USER_DATA_BYTES]> {
        self.connection(client).map(|c| &*c.user_data)
    }

    fn connection(&self, client: ClientIndex) -> Option<&Connection> {
        self.slots.get(client.get())?.connection.as_ref()
    }

    /// Processes one received datagram. `buf` is decrypted in place; a
    /// [`ServerEvent::Payload`] borrows from it. `unix_secs` is the wall clock,
    /// used only for connect-token expiry. Invalid datagrams are counted in
    /// [`ServerStats::dropped`] and change nothing.
    pub fn handle_datagram<'b>(
        &mut self,
        now: Instant,
        unix_secs: u64,
        from: SocketAddr,
        buf: &'b mut [u8],
    ) -> Option<ServerEvent<'b>> {
        self.handle_located(now, unix_secs, self.locate(self.lookup(from)), buf)
    }

    /// The first half of looking up a datagram's sender: its hash, and its
    /// line of the address table asked for. A caller with a batch of
    /// datagrams takes every sender's first, so that the lines are in by
    /// the time it [`locate`](Self::locate)s them.
    pub fn lookup(&self, from: SocketAddr) -> AddressLookup {
        AddressLookup {
            from,
            hash: self.by_address.hash(&from),
        }
    }

    /// Looks up which client a datagram from `sender` comes from, so that a
    /// caller with a batch of datagrams can look them all up first and
    /// [`prefetch_client`](Self::prefetch_client) their state before
    /// handling each with [`handle_located`](Self::handle_located).
    pub fn locate(&self, sender: AddressLookup) -> Located {
        Located {
            sender,
            slot: self.by_address.get(&sender.from, sender.hash),
            version: self.addresses_version,
        }
    }

    /// [`handle_datagram`](Self::handle_datagram) for a datagram from
    /// `located`'s address; its lookup is done again if clients joined or
    /// left since.
    pub fn handle_located<'b>(
        &mut self,
        now: Instant,
        unix_secs: u64,
        located: Located,
        buf: &'b mut [u8],
    ) -> Option<ServerEvent<'b>> {
        let located = if located.version == self.addresses_version {
            located
        } else {
            self.locate(located.sender)
        };
        let from = located.sender.from;
        bump(&mut self.stats.datagrams_received);
        bump_by(&mut self.stats.bytes_received, buf.len());
        match self.process(now, unix_secs, located, buf) {
            Ok(event) => event,
            Err(reason) => {
                tracing::trace!(%from, ?reason, "netcode server dropped datagram");
                self.stats.dropped.add(reason);
                None
            }
        }
    }

    fn process<'b>(
        &mut self,
        now: Instant,
        unix_secs: u64,
        located: Located,
        buf: &'b mut [u8],
    ) -> Result<Option<ServerEvent<'b>>, DropReason> {
        let from = located.sender.from;
        let Some(&prefix) = buf.first() else {
            return Err(DropReason::Empty);
        };
        if buf.len() > MAX_PACKET_BYTES {
            return Err(DropReason::Oversized);
        }
        if prefix == 0 {
            self.process_request(now, unix_secs, from, buf)?;
            return Ok(None);
        }
        let header = packet::parse_header(buf, Side::Server)?;
        if let Some(slot) = located.slot {
            return self.process_connected(now, slot, &header, buf);
        }
        if self.pending.live(&from, now).is_none() {
            return Err(DropReason::UnknownAddress);
        }
        if header.kind != PacketKind::Response {
            return Err(DropReason::WrongState);
        }
        self.process_response(now, from, &header, buf)
    }

    fn process_request(
        &mut self,
        now: Instant,
        unix_secs: u64,
        from: SocketAddr,
        buf: &mut [u8],
    ) -> Result<(), DropReason> {
        let request = packet::read_request(buf).ok_or(DropReason::RequestWrongSize)?;
        if request.version != VERSION_INFO {
            return Err(DropReason::WrongVersion);
        }
        if request.protocol_id != self.config.protocol_id {
            return Err(DropReason::WrongProtocolId);
        }
        if request.expire_timestamp <= unix_secs.max(self.purged_through) {
            return Err(DropReason::TokenExpired);
        }
        // Cheap checks that the standard makes after decryption; doing them
        // first saves the expensive work and ignores the same packets.
        if self.by_address.contains(&from) {
            return Err(DropReason::AlreadyConnected);
        }
        let paid = self
            .limiter
            .allow(from.ip(), now)
            .ok_or(DropReason::RateLimited)?;
        let private = request.private_data;
        token::decrypt_private(
            private,
            request.protocol_id,
            request.expire_timestamp,
            &request.nonce,
            &self.config.private_key,
        )
        .map_err(|_| DropReason::TokenInvalid)?;
        let (plain, mac) = private
            .split_at_checked(CONNECT_TOKEN_PRIVATE_BYTES.saturating_sub(MAC_BYTES))
            .ok_or(DropReason::TokenMalformed)?;
        let token_mac: [u8; MAC_BYTES] = mac.try_into().map_err(|_| DropReason::TokenMalformed)?;
        let publics = &self.config.public_addresses;
        let view = token::read_private_view(plain, |a| publics.iter().any(|&p| same_address(p, a)))
            .map_err(|_| DropReason::TokenMalformed)?
            .ok_or(DropReason::AddressNotInToken)?;
        if self.by_client_id.contains_key(&view.client_id) {
            return Err(DropReason::ClientIdInUse);
        }
        if self
            .pending
            .live(&from, now)
            .is_some_and(|pending| pending.client_id != view.client_id)
        {
            return Err(DropReason::AddressInHandshake);
        }
        if self.record_token_use(
            now,
            unix_secs,
            from,
            token_mac,
            view.client_id,
            request.expire_timestamp,
        )? {
            // A token never seen before is a player the backend let in: the
            // limit is for work that yields nothing (junk, and repeats).
            self.limiter.refund(from.ip(), paid);
        }

        if self.free.is_empty() {
            if self.held_ended > 0 {
                return Err(DropReason::SlotReleasing);
            }
            // Full: a handshake this address started is over too (a late
            // response to its earlier challenge must not connect a client
            // that gave up once a slot frees), denied in its own numbering.
            if let Some(pending) = self.pending.remove(&from)
                && pending.token_mac == token_mac
            {
                return self.queue(Owed::DeniedPending {
                    to: from,
                    cipher: pending.send,
                    sequence: pending.next_sequence,
                });
            }
            return self.queue(Owed::Denied {
                to: from,
                cipher: PacketCipher::new(&view.server_to_client_key),
            });
        }

        // Zero or negative: no timeout, as on the client.
        let timeout = u64::try_from(view.timeout_seconds)
            .ok()
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let token_left = Duration::from_secs(request.expire_timestamp.saturating_sub(unix_secs));
        let life = timeout.unwrap_or(MAX_PENDING_LIFETIME).min(token_left);
        let expires = now.checked_add(life).unwrap_or(now);
        match self.pending.get_mut(&from) {
            Some(existing) if existing.token_mac == token_mac && existing.expires > now => {
                // A repeated request: answer again with the same keys, and
                // keep the handshake a timeout from now (the client times
                // out from the last packet it got, not from its first
                // request; a challenge lost until late must still find
                // the handshake when the response comes).
                existing.expires = expires;
            }
            _ => {
                // A new handshake, in place of this address's and of its
                // client id's from any address: the newer attempt wins, so
                // one account holds one entry however many tokens it has.
                // Newer by its token: one first used before the token of
                // the handshake under way is an older one, and a recorded
                // request of it, replayed from the player's address, would
                // end the player's handshake each time. A request carries
                // no mint time, so a token this server has not seen (used
                // before a restart, or only with another server) counts
                // as the newest: its replay still takes the handshake.
                let first_use = |mac| self.token_uses.get(mac).map(|used| used.first_use);
                if self
                    .pending
                    .live_of_client(view.client_id, now)
                    .is_some_and(|held| {
                        held.token_mac != token_mac
                            && first_use(&held.token_mac) > first_use(&token_mac)
                    })
                {
                    return Err(DropReason::TokenSuperseded);
                }
                if !self.pending.replaces(&from, view.client_id)
                    && self.pending.len() >= self.config.max_pending
                {
                    return Err(DropReason::PendingTableFull);
                }
                let used = self
                    .token_uses
                    .get_mut(&token_mac)
                    .ok_or(DropReason::TokenTableFull)?;
                if used.attempts >= MAX_ATTEMPTS_PER_TOKEN {
                    return Err(DropReason::WrongState);
                }
                let first_sequence = (self.block_base + used.attempts) << SEQUENCE_BLOCK_BITS;
                used.attempts = used.attempts.saturating_add(1);
                self.pending.insert(
                    from,
                    Pending {
                        client_id: view.client_id,
                        user_data: view.user_data,
                        token_mac,
                        send: PacketCipher::new(&view.server_to_client_key),
                        recv: PacketCipher::new(&view.client_to_server_key),
                        next_sequence: first_sequence,
                        challenges_from: self.challenge_sequence,
                        timeout,
                        expires,
                    },
                );
            }
        }
        self.arm_service(now);
        self.queue(Owed::Challenge { to: from })
    }

    /// Remembers the first address `mac`'s token came from; `true` if
    /// this is its first use.
    fn record_token_use(
        &mut self,
        now: Instant,
        unix_secs: u64,
        from: SocketAddr,
        mac: [u8; MAC_BYTES],
        client_id: u64,
        expire_timestamp: u64,
    ) -> Result<bool, DropReason> {
        if let Some(used) = self.token_uses.get(&mac) {
            return if used.address == from {
                Ok(false)
            } else {
                Err(DropReason::TokenUsedFromOtherAddress)
            };
        }
        if self.token_uses.forgot(client_id, expire_timestamp) {
            return Err(DropReason::TokenExpired);
        }
        let full =
            |table: &TokenTable, max: usize| !table.replaces(client_id) && table.len() >= max;
        if full(&self.token_uses, self.config.max_token_entries) {
            let due = self
                .last_token_purge
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            if due {
                self.last_token_purge = Some(now);
                self.purged_through = self.purged_through.max(unix_secs);
                self.token_uses.remove_expired(unix_secs);
            }
            if full(&self.token_uses, self.config.max_token_entries) {
                return Err(DropReason::TokenTableFull);
            }
        }
        self.token_uses.insert(
            mac,
            TokenUse {
                client_id,
                address: from,
                expire_timestamp,
                attempts: 0,
                client_floor: None,
                first_use: self.token_order,
            },
        );
        self.token_order += 1;
        Ok(true)
    }

    fn process_response<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: &packet::Header,
        buf: &'b mut [u8],
    ) -> Result<Option<ServerEvent<'b>>, DropReason> {
        let paid = self
            .limiter
            .allow(from.ip(), now)
            .ok_or(DropReason::RateLimited)?;
        let pending = (self.pending.live(&from, now)).ok_or(DropReason::UnknownAddress)?;
        let body = packet::open_body(buf, header, self.config.protocol_id, &pending.recv)?;
        let (sequence, challenge) = body.split_at_mut_checked(8).ok_or(DropReason::Truncated)?;
        let sequence =
            u64::from_le_bytes((&*sequence).try_into().map_err(|_| DropReason::Truncated)?);
        // A challenge minted for another handshake (its bearer kept it) must
        // not lend its proof or identity to this one: it is bound to the
        // token it was sent for, whose keys are this address's.
        let (client_id, user_data) = token::open_challenge(
            challenge,
            sequence,
            &pending.token_mac,
            &self.challenge_cipher,
        )
        .map_err(|_| DropReason::ChallengeInvalid)?;
        if client_id != pending.client_id
            || user_data != pending.user_data
            || sequence < pending.challenges_from
        {
            return Err(DropReason::ChallengeInvalid);
        }
        let floor = self
            .token_uses
            .get(&pending.token_mac)
            .and_then(|used| used.client_floor);
        if floor.is_some_and(|floor| header.sequence <= floor) {
            return Err(DropReason::Replayed);
        }
        if self.by_client_id.contains_key(&client_id) {
            return Err(DropReason::ClientIdInUse);
        }
        let Some(slot_index) = self.free.pop() else {
            if self.held_ended > 0 {
                return Err(DropReason::SlotReleasing);
            }
            // Full: the handshake is over (a late copy of this response
            // must not connect a client that gave up once a slot frees),
            // answered with a denial (smaller than the response).
            let pending = self
                .pending
                .remove(&from)
                .ok_or(DropReason::UnknownAddress)?;
            self.queue(Owed::DeniedPending {
                to: from,
                cipher: pending.send,
                sequence: pending.next_sequence,
            })?;
            return Ok(None);
        };
        let pending = self
            .pending
            .remove(&from)
            .ok_or(DropReason::UnknownAddress)?;
        let slot = self
            .slots
            .get_mut(slot_index as usize)
            .ok_or(DropReason::WrongState)?;
        if !self.by_address.insert(from, slot_index) {
            // Never: the table holds as many addresses as there are slots.
            self.free.push(slot_index);
            return Err(DropReason::WrongState);
        }
        let user_data = Box::new(user_data);
        slot.connection = Some(Connection {
            address: from,
            client_id,
            user_data: user_data.clone(),
            send: pending.send,
            recv: pending.recv,
            next_sequence: pending.next_sequence,
            // The client counts on from here: nothing older is of this
            // connection.
            replay: ReplayWindow::after(header.sequence),
            last_received: now,
            last_sent: now,
            timeout: pending.timeout,
            confirmed: false,
            keepalive_queued: true,
            token_mac: pending.token_mac,
        });
        let generation = slot.generation;
        if let Some(check) = self.check_at.get_mut(slot_index as usize) {
            *check = Some(now);
        }
        self.addresses_version += 1;
        self.by_client_id.insert(client_id, slot_index);
        bump(&mut self.stats.clients_connected);
        // Room for this is reserved: at most one keep-alive per slot is queued.
        self.owed.push_back(Owed::KeepAlive {
            slot: slot_index,
            generation,
        });
        self.arm_service(now);
        self.limiter.refund(from.ip(), paid);
        Ok(Some(ServerEvent::ClientConnected {
            client: ClientIndex(slot_index),
            client_id,
            user_data,
        }))
    }

    fn process_connected<'b>(
        &mut self,
        now: Instant,
        slot_index: u32,
        header: &packet::Header,
        buf: &'b mut [u8],
    ) -> Result<Option<ServerEvent<'b>>, DropReason> {
        if !header.kind.replay_protected() {
            return Err(DropReason::AlreadyConnected);
        }
        let protocol_id = self.config.protocol_id;
        let conn = self
            .slots
            .get_mut(slot_index as usize)
            .and_then(|s| s.connection.as_mut())
            .ok_or(DropReason::UnknownAddress)?;
        if conn.replay.already_received(header.sequence) {
            return Err(DropReason::Replayed);
        }
        let body = packet::open_body(buf, header, protocol_id, &conn.recv)?;
        conn.replay.advance(header.sequence);
        conn.last_received = now;
        let client = ClientIndex(slot_index);
        match header.kind {
            PacketKind::Payload => {
                conn.confirmed = true;
                bump(&mut self.stats.payloads_received);
                Ok(Some(ServerEvent::Payload { client, data: body }))
            }
            PacketKind::KeepAlive => {
                conn.confirmed = true;
                Ok(None)
            }
            _ => {
                let client_id = self.free_slot(slot_index).unwrap_or_default();
                Ok(Some(ServerEvent::ClientDisconnected {
                    client,
                    client_id,
                    reason: DisconnectReason::ClientDisconnected,
                }))
            }
        }
    }

    /// Resets a slot; returns the client id it held.
    fn free_slot(&mut self, slot_index: u32) -> Option<u64> {
        let slot = self.slots.get_mut(slot_index as usize)?;
        let conn = slot.connection.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        if let Some(check) = self.check_at.get_mut(slot_index as usize) {
            *check = None;
        }
        self.by_address.remove(&conn.address);
        self.addresses_version += 1;
        self.by_client_id.remove(&conn.client_id);
        if let Some(used) = self.token_uses.get_mut(&conn.token_mac) {
            used.client_floor = used.client_floor.max(conn.replay.newest());
        }
        if slot.held {
            self.held_ended += 1;
        } else {
            self.free.push(slot_index);
        }
        Some(conn.client_id)
    }

    fn queue(&mut self, owed: Owed) -> Result<(), DropReason> {
        if self.owed.len() >= self.owed_capacity {
            return Err(DropReason::OutboundQueueFull);
        }
        self.owed.push_back(owed);
        Ok(())
    }

    fn arm_service(&mut self, now: Instant) {
        if self.next_service.is_none() {
            self.next_service = now.checked_add(self.config.service_interval);
        }
    }

    /// Asks the CPU for `client`'s state (its address, keys, sequence and
    /// replay window), which sealing or opening its next packet reads (see
    /// [`crate::prefetch`]).
    pub fn prefetch_client(&self, client: ClientIndex) {
        if let Some(slot) = self.slots.get(client.get()) {
            prefetch(slot);
        }
    }

    /// Moves `client`'s next server-to-client sequence (for tests of the
    /// sequence blocks' ends).
    #[cfg(test)]
    pub(super) fn set_next_sequence(&mut self, client: ClientIndex, sequence: u64) {
        if let Some(conn) = self
            .slots
            .get_mut(client.get())
            .and_then(|slot| slot.connection.as_mut())
        {
            conn.next_sequence = sequence;
        }
    }

    /// Seals a payload packet for `client` into `out` (at least
    /// [`MAX_PACKET_BYTES`]); send `out[..len]` to `destination` right away.
    pub fn send_payload(
        &mut self,
        now: Instant,
        client: ClientIndex,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Transmit, SendError> {
        if payload.is_empty() || payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::PayloadSize(payload.len()));
        }
        let protocol_id = self.config.protocol_id;
        let slot = self
            .slots
            .get_mut(client.get())
            .ok_or(SendError::UnknownClient)?;
        let generation = slot.generation;
        let conn = slot.connection.as_mut().ok_or(SendError::UnknownClient)?;
        let sequence = conn.next_sequence;
        let next = next_in_block(sequence).ok_or(SendError::SequenceExhausted)?;
        let len = packet::seal(
            out,
            PacketKind::Payload,
            sequence,
            payload,
            protocol_id,
            &conn.send,
        )
        .map_err(|_| SendError::BufferTooSmall)?;
        conn.next_sequence = next;
        conn.last_sent = now;
        let destination = conn.address;
        if !conn.confirmed && !conn.keepalive_queued {
            conn.keepalive_queued = true;
            self.owed.push_front(Owed::KeepAlive {
                slot: client.0,
                generation,
            });
        }
        bump(&mut self.stats.datagrams_sent);
        bump_by(&mut self.stats.bytes_sent, len);
        Ok(Transmit { destination, len })
    }

    /// Disconnects a client: its slot is freed now and
    /// [`NUM_DISCONNECT_PACKETS`] redundant disconnect packets are queued for
    /// [`poll_transmit`](Self::poll_transmit). No event is emitted.
    pub fn disconnect(&mut self, client: ClientIndex) -> Result<(), DisconnectError> {
        let conn = self
            .slots
            .get(client.get())
            .and_then(|s| s.connection.as_ref())
            .ok_or(DisconnectError::UnknownClient)?;
        let owed = Owed::Disconnect {
            to: conn.address,
            cipher: conn.send.clone(),
            next_sequence: conn.next_sequence,
            remaining: NUM_DISCONNECT_PACKETS,
        };
        // If the queue is full the packets are skipped; the client times out.
        let _ = self.queue(owed);
        self.free_slot(client.0);
        Ok(())
    }

    /// Keeps `client`'s slot from going to another client when its
    /// connection ends (the client leaves, times out or is disconnected),
    /// until [`release`](Self::release). For an owner that keeps its own
    /// state per slot and reports a client's end after the fact: without
    /// it, the next handshake could take the slot before the owner is
    /// done with the client that had it. Does nothing for a slot with no
    /// connection.
    pub fn hold(&mut self, client: ClientIndex) {
        if let Some(slot) = self.slots.get_mut(client.get())
            && slot.connection.is_some()
        {
            slot.held = true;
        }
    }

    /// Ends a [`hold`](Self::hold): the slot is free once its connection
    /// has ended too.
    pub fn release(&mut self, client: ClientIndex) {
        let Some(slot) = self.slots.get_mut(client.get()) else {
            return;
        };
        if !std::mem::take(&mut slot.held) || slot.connection.is_some() {
            return;
        }
        self.held_ended -= 1;
        self.free.push(client.0);
    }

    /// Disconnects every client (graceful shutdown).
    pub fn disconnect_all(&mut self) {
        for index in 0..self.slots.len() {
            if let Ok(i) = u32::try_from(index) {
                let _ = self.disconnect(ClientIndex(i));
            }
        }
    }

    /// A disconnect found by [`handle_timeout`](Self::handle_timeout).
    pub fn poll_event(&mut self) -> Option<ServerEvent<'static>> {
        let (client, client_id, reason) = self.events.pop_front()?;
        Some(ServerEvent::ClientDisconnected {
            client,
            client_id,
            reason,
        })
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run, if any
    /// client or handshake is live.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_service
    }

    /// Times out silent clients and stale handshakes and schedules
    /// keep-alives. Cost is linear in `max_clients` (a dense array of
    /// deadlines; a client's own state only when its deadline may be due)
    /// plus pending handshakes, once per `service_interval`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_service {
            Some(t) if t <= now => {}
            _ => return,
        }
        for index in 0..self.slots.len() {
            let due = self.check_at.get(index).copied().flatten();
            if due.is_none_or(|at| at > now) {
                continue;
            }
            let Ok(slot_index) = u32::try_from(index) else {
                break;
            };
            let Some(slot) = self.slots.get_mut(index) else {
                break;
            };
            let generation = slot.generation;
            let Some(conn) = slot.connection.as_mut() else {
                continue;
            };
            let silent = now.saturating_duration_since(conn.last_received);
            if conn.timeout.is_some_and(|t| silent >= t) {
                if let Some(client_id) = self.free_slot(slot_index) {
                    bump(&mut self.stats.clients_timed_out);
                    if self.events.len() < self.config.max_clients {
                        self.events.push_back((
                            ClientIndex(slot_index),
                            client_id,
                            DisconnectReason::TimedOut,
                        ));
                    } else {
                        bump(&mut self.stats.events_dropped);
                    }
                }
                continue;
            }
            let idle = now.saturating_duration_since(conn.last_sent);
            if idle >= self.config.keepalive_interval
                && !conn.keepalive_queued
                && self.owed.len() < self.owed_capacity
            {
                conn.keepalive_queued = true;
                self.owed.push_back(Owed::KeepAlive {
                    slot: slot_index,
                    generation,
                });
            }
            // Exact now; a bound from here on. A queued keep-alive not yet
            // sent leaves `last_sent` behind: checked again next service.
            let keepalive = conn.last_sent.checked_add(self.config.keepalive_interval);
            let timeout = conn.timeout.and_then(|t| conn.last_received.checked_add(t));
            if let Some(check) = self.check_at.get_mut(index) {
                *check = Some(match (keepalive, timeout) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(at), None) | (None, Some(at)) => at,
                    // Beyond what `Instant` holds: never, in practice.
                    (None, None) => now,
                });
            }
        }
        self.pending.remove_expired(now);
        self.next_service = if self.free.len() < self.slots.len() || !self.pending.is_empty() {
            now.checked_add(self.config.service_interval)
        } else {
            None
        };
    }

    /// Writes the next datagram the server owes (handshake replies,
    /// keep-alives, disconnect packets) into `buf`, which must hold
    /// [`MAX_PACKET_BYTES`]; `None` when nothing is owed (or `buf` is smaller).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if buf.len() < MAX_PACKET_BYTES {
            tracing::warn!(len = buf.len(), "poll_transmit buffer too small");
            return None;
        }
        while let Some(owed) = self.owed.pop_front() {
            if let Some(t) = self.write_owed(now, owed, buf) {
                bump(&mut self.stats.datagrams_sent);
                bump_by(&mut self.stats.bytes_sent, t.len);
                return Some(t);
            }
        }
        None
    }

    fn write_owed(&mut self, now: Instant, owed: Owed, buf: &mut [u8]) -> Option<Transmit> {
        let protocol_id = self.config.protocol_id;
        match owed {
            Owed::Challenge { to } => {
                let pending = self.pending.get_mut(&to)?;
                let sequence = pending.next_sequence;
                let challenge_sequence = self.challenge_sequence;
                let start = packet::body_offset(sequence);
                let body = buf.get_mut(start..start.checked_add(CHALLENGE_BODY_BYTES)?)?;
                let (seq_out, token_out) = body.split_at_mut(8);
                seq_out.copy_from_slice(&challenge_sequence.to_le_bytes());
                token::write_challenge(
                    token_out,
                    pending.client_id,
                    &pending.user_data,
                    challenge_sequence,
                    &pending.token_mac,
                    &self.challenge_cipher,
                )
                .ok()?;
                let len = packet::seal_in_place(
                    buf,
                    PacketKind::Challenge,
                    sequence,
                    CHALLENGE_BODY_BYTES,
                    protocol_id,
                    &pending.send,
                )
                .ok()?;
                pending.next_sequence = next_in_block(sequence)?;
                self.challenge_sequence = challenge_sequence.wrapping_add(1);
                bump(&mut self.stats.challenges_sent);
                Some(Transmit {
                    destination: to,
                    len,
                })
            }
            Owed::DeniedPending {
                to,
                cipher,
                sequence,
            } => {
                let len =
                    packet::seal(buf, PacketKind::Denied, sequence, &[], protocol_id, &cipher)
                        .ok()?;
                bump(&mut self.stats.denials_sent);
                Some(Transmit {
                    destination: to,
                    len,
                })
            }
            Owed::Denied { to, cipher } => {
                let sequence = self.global_sequence;
                let len =
                    packet::seal(buf, PacketKind::Denied, sequence, &[], protocol_id, &cipher)
                        .ok()?;
                self.global_sequence = sequence.checked_add(1)?;
                bump(&mut self.stats.denials_sent);
                Some(Transmit {
                    destination: to,
                    len,
                })
            }
            Owed::KeepAlive { slot, generation } => {
                let max_clients = u32::try_from(self.config.max_clients).ok()?;
                let s = self.slots.get_mut(slot as usize)?;
                if s.generation != generation {
                    return None;
                }
                let conn = s.connection.as_mut()?;
                conn.keepalive_queued = false;
                let sequence = conn.next_sequence;
                let mut body = [0u8; 8];
                body[..4].copy_from_slice(&slot.to_le_bytes());
                body[4..].copy_from_slice(&max_clients.to_le_bytes());
                let len = packet::seal(
                    buf,
                    PacketKind::KeepAlive,
                    sequence,
                    &body,
                    protocol_id,
                    &conn.send,
                )
                .ok()?;
                conn.next_sequence = next_in_block(sequence)?;
                conn.last_sent = now;
                Some(Transmit {
                    destination: conn.address,
                    len,
                })
            }
            Owed::Disconnect {
                to,
                cipher,
                next_sequence,
                remaining,
            } => {
                let len = packet::seal(
                    buf,
                    PacketKind::Disconnect,
                    next_sequence,
                    &[],
                    protocol_id,
                    &cipher,
                )
                .ok()?;
                if let (Some(rest), Some(next)) =
                    (remaining.checked_sub(1), next_in_block(next_sequence))
                    && rest > 0
                {
                    self.owed.push_front(Owed::Disconnect {
                        to,
                        cipher,
                        next_sequence: next,
                        remaining: rest,
                    });
                }
                Some(Transmit {
                    destination: to,
                    len,
                })
            }
        }
    }
}

const _: () = assert!(CHALLENGE_TOKEN_BYTES == 300);

#[cfg(test)]
mod pending_table_tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::super::crypto::PacketCipher;
    use super::super::{Key, MAC_BYTES, USER_DATA_BYTES};
    use super::{KeyedHash, Pending, PendingTable};

    fn pending(client_id: u64, expires: Instant) -> Pending {
        let cipher = PacketCipher::new(&Key::from_bytes([1; 32]));
        Pending {
            client_id,
            user_data: [0; USER_DATA_BYTES],
            token_mac: [0; MAC_BYTES],
            send: cipher.clone(),
            recv: cipher,
            next_sequence: 0,
            challenges_from: 0,
            timeout: None,
            expires,
        }
    }

    proptest! {
        /// Whatever is added, replaced, removed and expired, the table
        /// holds one handshake per client id, the newest, and its index
        /// by client id names exactly the addresses of those handshakes.
        #[test]
        fn the_client_id_index_keeps_in_step(
            ops in proptest::collection::vec((0u8..3, 0u16..6, 0u64..4, 0u64..4), 0..200)
        ) {
            let start = Instant::now();
            let mut table = PendingTable::new(8, KeyedHash::new([7, 11]));
            for (op, port, client_id, secs) in ops {
                let from = SocketAddr::from(([127, 0, 0, 1], port));
                let at = start + Duration::from_secs(secs);
                match op {
                    0 => {
                        table.insert(from, pending(client_id, at));
                        prop_assert_eq!(
                            table.by_address.get(&from).map(|p| p.client_id),
                            Some(client_id)
                        );
                    }
                    1 => {
                        table.remove(&from);
                        prop_assert!(!table.by_address.contains_key(&from));
                    }
                    _ => table.remove_expired(at),
                }
                prop_assert_eq!(table.by_client_id.len(), table.len());
                for (id, address) in &table.by_client_id {
                    prop_assert_eq!(
                        table.by_address.get(address).map(|p| p.client_id),
                        Some(*id)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod token_table_tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::super::MAC_BYTES;
    use super::{KeyedHash, TOKENS_PER_CLIENT_ID, TokenTable, TokenUse};

    proptest! {
        /// Whatever is recorded and purged, each client id holds at most
        /// [`TOKENS_PER_CLIENT_ID`] tokens, the index by client id names
        /// exactly the tokens held, and a token once recorded and no
        /// longer held is refused: forgotten, or past a purge.
        #[test]
        fn the_client_id_index_keeps_in_step(
            expiries in proptest::collection::vec(1u64..20, 30),
            ops in proptest::collection::vec((0u8..8, 0usize..30, 0u64..3), 0..300)
        ) {
            let mut table = TokenTable::new(16, KeyedHash::new([7, 11]));
            let mut purged_through = 0;
            let mut recorded = HashMap::new();
            for (op, id, step) in ops {
                let mac = [u8::try_from(id).unwrap(); MAC_BYTES];
                let client_id = id as u64 % 3;
                let expire_timestamp = expiries[id];
                if op == 0 {
                    purged_through += step;
                    table.remove_expired(purged_through);
                } else if table.get(&mac).is_none()
                    && !table.forgot(client_id, expire_timestamp)
                    && expire_timestamp > purged_through
                {
                    table.insert(mac, TokenUse {
                        client_id,
                        address: SocketAddr::from(([127, 0, 0, 1], 1)),
                        expire_timestamp,
                        attempts: 0,
                        client_floor: None,
                        first_use: 0,
                    });
                    prop_assert!(table.get(&mac).is_some());
                    recorded.insert(mac, (client_id, expire_timestamp));
                }
                let held: usize = table.by_client_id.values().map(|t| t.len).sum();
                prop_assert_eq!(held, table.len());
                for (id, tokens) in &table.by_client_id {
                    prop_assert!((1..=TOKENS_PER_CLIENT_ID).contains(&tokens.len));
                    for mac in tokens.held() {
                        prop_assert_eq!(table.get(mac).map(|u| u.client_id), Some(*id));
                    }
                }
                for (mac, (client_id, expire)) in &recorded {
                    prop_assert!(
                        table.get(mac).is_some()
                            || table.forgot(*client_id, *expire)
                            || *expire <= purged_through
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod keyed_hash_tests {
    use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
    use std::net::SocketAddr;

    use super::{KeyedHash, MAX_ATTEMPTS_PER_TOKEN, first_block};

    #[test]
    fn every_hash_starts_from_the_key() {
        let key = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
        let address = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let keyed = KeyedHash::new(key);
        let mut by_hand = DefaultHasher::new();
        by_hand.write_u64(key[0]);
        by_hand.write_u64(key[1]);
        address.hash(&mut by_hand);
        assert_eq!(keyed.hash_one(address), by_hand.finish());
        // Nothing of one hash carries into the next, and the key matters.
        assert_eq!(keyed.hash_one(address), keyed.hash_one(address));
        let other = KeyedHash::new([key[0], key[1] ^ 1]);
        assert_ne!(keyed.hash_one(address), other.hash_one(address));
    }

    /// A server's first block is never 0 (a reference server's, which a
    /// client never holds ended), and its blocks stay below 2^17.
    #[test]
    fn the_first_block_is_never_zero() {
        for starts in [
            0,
            1,
            MAX_ATTEMPTS_PER_TOKEN - 1,
            MAX_ATTEMPTS_PER_TOKEN,
            u64::MAX,
        ] {
            let block = first_block(starts);
            assert!(
                (1..MAX_ATTEMPTS_PER_TOKEN).contains(&block),
                "{starts}: {block}"
            );
        }
    }
}
