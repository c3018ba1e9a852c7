//! Transport configuration: channels, sizes, timers and bounds.
//!
//! Both peers must use the same channel layout: the channel list is part of
//! the protocol, like a schema.

use std::time::Duration;

use thiserror::Error;

use super::congestion::RateBounds;
use super::rtt::RtoBounds;
use super::wire;

/// Most channels a connection can have (channel ids are 6 bits on the wire).
pub const MAX_CHANNELS: usize = 64;

/// The shortest [`TransportConfig::keepalive_interval`]: keepalives at most
/// 10 times a second.
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest [`TransportConfig::unreliable_ttl`] and
/// [`TransportConfig::unreliable_fragment_timeout`]: a message queued by
/// one thread and sent by another waits about that long.
pub const MIN_UNRELIABLE_TIMER: Duration = Duration::from_millis(1);

/// Most concurrent incomplete unreliable messages a channel may keep
/// ([`TransportConfig::max_unreliable_reassemblies`]).
pub const MAX_UNRELIABLE_REASSEMBLIES: usize = 64;

/// Index of a channel in [`TransportConfig::channels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u8);

/// How a channel delivers its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// Fire and forget: may be lost, duplicated by nothing, delivered in any order.
    Unreliable,
    /// May be lost; a message older than the newest one already delivered on
    /// the channel is dropped (movement input, snapshots).
    UnreliableSequenced,
    /// Delivered exactly once, in send order (chat, inventory).
    ReliableOrdered,
    /// Delivered exactly once, in arrival order.
    ReliableUnordered,
}

impl ChannelKind {
    /// Messages on this channel are resent until acknowledged.
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::ReliableOrdered | Self::ReliableUnordered)
    }
}

/// One channel of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// Delivery guarantee.
    pub kind: ChannelKind,
    /// Lower values are packed first when the send budget is short;
    /// channels of equal priority take turns going first, a packet each.
    /// A reliable channel that four data packets in a row passed over
    /// (the channels before it filled them) goes first in the next one:
    /// priority delays reliable traffic, it never starves it.
    pub priority: u8,
    /// Reliable channels: bytes (queued plus unacknowledged) the channel may
    /// hold. At the limit [`Connection::send`](super::Connection::send)
    /// refuses the message with [`SendError::QueueFull`](super::SendError::QueueFull);
    /// nothing already queued is dropped. Unreliable channels: bytes waiting
    /// for the next transmit; at the limit the oldest waiting messages are
    /// dropped and counted (one partly sent is kept and finished).
    pub max_queued_bytes: usize,
}

impl ChannelConfig {
    /// A channel of `kind` with priority 128 and a 1 MiB queue.
    pub fn new(kind: ChannelKind) -> Self {
        Self {
            kind,
            priority: 128,
            max_queued_bytes: 1 << 20,
        }
    }

    /// Sets the packing priority (lower goes first).
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the queue bound in bytes.
    pub fn with_max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }
}

/// Everything a [`Connection`](super::Connection) needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportConfig {
    /// The channel layout; at most [`MAX_CHANNELS`].
    pub channels: Vec<ChannelConfig>,
    /// Largest datagram the transport writes (header included). The default,
    /// 1,100 bytes, fits inside the 1,200-byte payload of the connection
    /// layer's encrypted packets.
    pub max_payload: usize,
    /// Payload bytes carried by one fragment of a large message.
    pub fragment_size: usize,
    /// Largest message accepted by `send` and by the receiver (default 256 KiB).
    /// A fragment claiming more fragments than such a message needs, or a
    /// last fragment taking the message past it, is a protocol violation.
    pub max_message_size: usize,
    /// Reliable messages in flight per channel; the receiver buffers at most
    /// this many out-of-order messages per channel. At most 16,384.
    pub reliable_window: u16,
    /// Receive-side memory (out-of-order messages plus reassembly) one
    /// connection may hold. A packet whose reliable content does not fit is
    /// dropped unacknowledged, so the sender resends it later. So that a
    /// full buffer cannot deadlock a channel, the one message each reliable
    /// channel is waiting for is always accepted: the hard bound is this
    /// plus [`largest_reassembly`](Self::largest_reassembly) per reliable
    /// channel. At least that much.
    pub max_receive_buffer: usize,
    /// Unreliable messages still waiting for send budget after this long
    /// are dropped (counted in `unreliable_dropped`): under overload,
    /// unreliable traffic is shed first and reliable traffic waits. A
    /// fragmented message partly sent is finished, unless it has been up
    /// for `unreliable_fragment_timeout` (the receiver gave it up).
    pub unreliable_ttl: Duration,
    /// Incomplete unreliable fragmented messages are dropped after this long.
    pub unreliable_fragment_timeout: Duration,
    /// Concurrent incomplete unreliable fragmented messages per channel
    /// (1..=[`MAX_UNRELIABLE_REASSEMBLIES`]); a newer one evicts the oldest
    /// once that has waited an eighth of `unreliable_fragment_timeout`
    /// (and is dropped before).
    pub max_unreliable_reassemblies: usize,
    /// Retransmission timeout before the first RTT sample.
    pub initial_rto: Duration,
    /// Lowest retransmission timeout.
    pub min_rto: Duration,
    /// Highest retransmission timeout, exponential backoff included. Keep
    /// it above the longest round trip the game must survive: an ack that
    /// comes after its packet was judged lost is not taken (a resend
    /// carries the units again), so on a path slower than `max_rto +
    /// max_ack_delay` reliable messages never count as delivered and time
    /// out after `reliable_timeout`.
    pub max_rto: Duration,
    /// A reliable message still unacknowledged this long after its first
    /// transmission ends the connection with [`DisconnectReason::Timeout`](super::DisconnectReason::Timeout).
    pub reliable_timeout: Duration,
    /// How long a receiver may hold an acknowledgement, hoping to carry it
    /// in its next data packet instead of a datagram of its own; the sender
    /// allows for it before declaring a packet lost, so both peers must use
    /// the same value. A second unacknowledged packet makes the ack due at
    /// once: it leaves at the next `poll_transmit`. A burst handed over
    /// before that is acknowledged whole up to about 320 packets (an ack names
    /// 65, and four are kept back for datagrams of their own); the packets
    /// of a longer one that no ack can name count as lost at the sender.
    /// For peers that both send at a steady rate (a game tick), a
    /// little more than the send interval makes bare acknowledgements rare.
    /// Default 10 ms; at most 1 s.
    pub max_ack_delay: Duration,
    /// With nothing else to send, an ack-eliciting keepalive goes out after
    /// this much silence: at least [`MIN_KEEPALIVE_INTERVAL`] (at most
    /// 10 Hz) and below `idle_timeout`.
    pub keepalive_interval: Duration,
    /// Nothing received for this long ends the connection with a timeout.
    pub idle_timeout: Duration,
    /// Send budget (bytes/second) at the start of a connection.
    pub initial_send_rate: u32,
    /// The budget never drops below this.
    pub min_send_rate: u32,
    /// The budget never grows past this.
    pub max_send_rate: u32,
    /// Disconnect packets sent when closing, for redundancy.
    pub disconnect_packets: u8,
    /// How long a local [`disconnect`](super::Connection::disconnect)
    /// keeps sending what was queued before it (and resending what is not
    /// acknowledged yet) before the disconnect packets: a kicked player
    /// still gets the refusal that got it kicked. Meanwhile nothing more is
    /// delivered from the peer and nothing new may be sent. Zero closes at
    /// once and discards what was queued. Default 1 s.
    pub close_linger: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            channels: vec![
                ChannelConfig::new(ChannelKind::ReliableOrdered),
                ChannelConfig::new(ChannelKind::ReliableUnordered),
                ChannelConfig::new(ChannelKind::UnreliableSequenced),
                ChannelConfig::new(ChannelKind::Unreliable),
            ],
            max_payload: 1_100,
            fragment_size: 1_024,
            max_message_size: 256 * 1024,
            reliable_window: 1_024,
            max_receive_buffer: 1 << 20,
            unreliable_ttl: Duration::from_millis(100),
            unreliable_fragment_timeout: Duration::from_secs(1),
            max_unreliable_reassemblies: 4,
            initial_rto: Duration::from_millis(250),
            min_rto: Duration::from_millis(25),
            max_rto: Duration::from_secs(2),
            reliable_timeout: Duration::from_secs(10),
            max_ack_delay: Duration::from_millis(10),
            keepalive_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(10),
            initial_send_rate: 256 * 1024,
            min_send_rate: 32 * 1024,
            max_send_rate: 16 * 1024 * 1024,
            disconnect_packets: 3,
            close_linger: Duration::from_secs(1),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// No channels, or more than [`MAX_CHANNELS`].
    #[error("a connection needs 1 to {MAX_CHANNELS} channels, got {0}")]
    ChannelCount(usize),
    /// `max_payload` outside 64..=65,000.
    #[error("max_payload must be within 64..=65000, got {0}")]
    MaxPayload(usize),
    /// A fragment plus its headers does not fit in `max_payload`.
    #[error("fragment_size {fragment_size} plus headers does not fit in max_payload {max_payload}")]
    FragmentSize {
        /// configured fragment size
        fragment_size: usize,
        /// configured payload limit
        max_payload: usize,
    },
    /// More fragments than a `u16` counts, or a zero size.
    #[error("max_message_size {0} needs between 1 and 65,535 fragments")]
    MaxMessageSize(usize),
    /// Window of 0 or over 16,384.
    #[error("reliable_window must be within 1..=16384, got {0}")]
    ReliableWindow(u16),
    /// The receive buffer cannot hold even one maximal message.
    #[error(
        "max_receive_buffer {0} is smaller than max_message_size in whole fragments \
         (what its reassembly holds)"
    )]
    ReceiveBuffer(usize),
    /// `min_send_rate <= initial_send_rate <= max_send_rate` does not hold.
    #[error("send rates must satisfy 0 < min <= initial <= max")]
    SendRates,
    /// `max_unreliable_reassemblies` outside 1..=[`MAX_UNRELIABLE_REASSEMBLIES`].
    #[error(
        "max_unreliable_reassemblies must be within 1..={MAX_UNRELIABLE_REASSEMBLIES}, got {0}"
    )]
    UnreliableReassemblies(usize),
    /// `max_ack_delay` over one second.
    #[error("max_ack_delay must be at most 1 s, got {0:?}")]
    MaxAckDelay(Duration),
    /// `min_rto <= initial_rto <= max_rto` does not hold.
    #[error("retransmission timeouts must satisfy 0 < min <= initial <= max")]
    Rto,
    /// A keepalive more often than 10 Hz, or timeouts of zero: a zero
    /// keepalive interval makes every `poll_transmit` send one, for ever;
    /// an `unreliable_ttl` below [`MIN_UNRELIABLE_TIMER`] drops every
    /// unreliable message that waits at all before it is sent, and such an
    /// `unreliable_fragment_timeout` every fragmented one after its first
    /// part.
    #[error(
        "keepalive_interval must be at least 100 ms and below idle_timeout, \
         reliable_timeout above 0, and unreliable_ttl and unreliable_fragment_timeout \
         at least 1 ms"
    )]
    Timers,
}

impl TransportConfig {
    /// Whether `channel` is of a reliable kind (false for one the layout
    /// does not have).
    pub fn is_reliable(&self, channel: super::ChannelId) -> bool {
        self.channels
            .get(usize::from(channel.0))
            .is_some_and(|c| c.kind.is_reliable())
    }

    pub(crate) fn rto_bounds(&self) -> RtoBounds {
        RtoBounds {
            initial: self.initial_rto,
            min: self.min_rto,
            max: self.max_rto,
        }
    }

    pub(crate) fn rate_bounds(&self) -> RateBounds {
        RateBounds::new(self.min_send_rate, self.max_send_rate, self.max_payload)
    }

    /// What the reassembly of the largest message holds of the receive
    /// buffer: `max_message_size` in whole fragments (every fragment is
    /// charged `fragment_size`, the last too).
    pub fn largest_reassembly(&self) -> usize {
        self.max_message_size
            .div_ceil(self.fragment_size.max(1))
            .saturating_mul(self.fragment_size)
    }

    /// Checks the configuration; [`Connection::new`](super::Connection::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS {
            return Err(ConfigError::ChannelCount(self.channels.len()));
        }
        if !(64..=65_000).contains(&self.max_payload) {
            return Err(ConfigError::MaxPayload(self.max_payload));
        }
        if self.fragment_size == 0
            || self.fragment_size + wire::PACKET_HEADER_LEN + wire::MAX_MESSAGE_HEADER_LEN
                > self.max_payload
        {
            return Err(ConfigError::FragmentSize {
                fragment_size: self.fragment_size,
                max_payload: self.max_payload,
            });
        }
        if self.max_message_size == 0
            || self.max_message_size.div_ceil(self.fragment_size) > usize::from(u16::MAX)
        {
            return Err(ConfigError::MaxMessageSize(self.max_message_size));
        }
        if self.reliable_window == 0 || self.reliable_window > 16_384 {
            return Err(ConfigError::ReliableWindow(self.reliable_window));
        }
        if self.max_receive_buffer < self.largest_reassembly() {
            return Err(ConfigError::ReceiveBuffer(self.max_receive_buffer));
        }
        if self.min_send_rate == 0
            || self.min_send_rate > self.initial_send_rate
            || self.initial_send_rate > self.max_send_rate
        {
            return Err(ConfigError::SendRates);
        }
        if self.min_rto.is_zero()
            || self.min_rto > self.initial_rto
            || self.initial_rto > self.max_rto
        {
            return Err(ConfigError::Rto);
        }
        if !(1..=MAX_UNRELIABLE_REASSEMBLIES).contains(&self.max_unreliable_reassemblies) {
            return Err(ConfigError::UnreliableReassemblies(
                self.max_unreliable_reassemblies,
            ));
        }
        if self.max_ack_delay > Duration::from_secs(1) {
            return Err(ConfigError::MaxAckDelay(self.max_ack_delay));
        }
        if self.keepalive_interval < MIN_KEEPALIVE_INTERVAL
            || self.keepalive_interval >= self.idle_timeout
            || self.reliable_timeout.is_zero()
            || self.unreliable_ttl < MIN_UNRELIABLE_TIMER
            || self.unreliable_fragment_timeout < MIN_UNRELIABLE_TIMER
        {
            return Err(ConfigError::Timers);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(TransportConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_a_keepalive_that_would_never_stop_and_zero_timeouts() {
        let defaults = TransportConfig::default();
        for config in [
            TransportConfig {
                keepalive_interval: Duration::ZERO,
                ..defaults.clone()
            },
            TransportConfig {
                keepalive_interval: Duration::from_millis(1),
                ..defaults.clone()
            },
            TransportConfig {
                idle_timeout: Duration::ZERO,
                ..defaults.clone()
            },
            TransportConfig {
                reliable_timeout: Duration::ZERO,
                ..defaults.clone()
            },
            TransportConfig {
                unreliable_ttl: Duration::ZERO,
                ..defaults.clone()
            },
            TransportConfig {
                unreliable_ttl: Duration::from_nanos(1),
                ..defaults.clone()
            },
            TransportConfig {
                unreliable_fragment_timeout: Duration::ZERO,
                ..defaults.clone()
            },
            TransportConfig {
                unreliable_fragment_timeout: MIN_UNRELIABLE_TIMER - Duration::from_nanos(1),
                ..defaults.clone()
            },
        ] {
            assert_eq!(config.validate(), Err(ConfigError::Timers));
        }
    }

    #[test]
    fn rejects_oversized_fragments_and_bad_windows() {
        let config = TransportConfig {
            fragment_size: 1_100,
            ..TransportConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::FragmentSize { .. })
        ));
        let config = TransportConfig {
            reliable_window: 20_000,
            ..TransportConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::ReliableWindow(20_000)));
        let config = TransportConfig {
            channels: Vec::new(),
            ..TransportConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::ChannelCount(0)));
        let config = TransportConfig {
            max_ack_delay: Duration::from_secs(2),
            ..TransportConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::MaxAckDelay(Duration::from_secs(2)))
        );
    }

    #[test]
    fn unreliable_reassemblies_need_at_least_one_slot() {
        for n in [0, MAX_UNRELIABLE_REASSEMBLIES + 1] {
            let config = TransportConfig {
                max_unreliable_reassemblies: n,
                ..TransportConfig::default()
            };
            assert_eq!(
                config.validate(),
                Err(ConfigError::UnreliableReassemblies(n))
            );
        }
    }

    /// A buffer of `max_message_size` bytes passed, but the reassembly of
    /// such a message is charged whole fragments: with 1,000-byte
    /// fragments a 10,500-byte message holds 11,000, past the buffer even
    /// when empty, so every one `send` took was dropped on arrival.
    #[test]
    fn the_receive_buffer_holds_the_largest_message_in_whole_fragments() {
        let config = TransportConfig {
            fragment_size: 1_000,
            max_message_size: 10_500,
            max_receive_buffer: 10_500,
            ..TransportConfig::default()
        };
        assert_eq!(config.largest_reassembly(), 11_000);
        assert_eq!(config.validate(), Err(ConfigError::ReceiveBuffer(10_500)));
        let config = TransportConfig {
            max_receive_buffer: 11_000,
            ..config
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn four_mebibyte_messages_are_configurable() {
        let config = TransportConfig {
            max_message_size: 4 << 20,
            max_receive_buffer: 8 << 20,
            ..TransportConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
