//! The channel layout. Both sides build their transport from
//! [`transport_config`], so channel ids mean the same thing everywhere.

use std::time::Duration;

use super::MAX_MESSAGE_BYTES;
use crate::transport::{ChannelConfig, ChannelId, ChannelKind, TransportConfig};

/// Session control: welcome, errors, server notices (reliable, ordered).
pub const CONTROL: ChannelId = ChannelId(0);
/// Chat (reliable, ordered).
pub const CHAT: ChannelId = ChannelId(1);
/// Inventory requests and replies (reliable, ordered).
pub const INVENTORY: ChannelId = ChannelId(2);
/// Movement input, client to server (unreliable, sequenced: newer wins).
pub const MOVEMENT: ChannelId = ChannelId(3);
/// World snapshots, server to client (unreliable, sequenced).
pub const SNAPSHOT: ChannelId = ChannelId(4);
/// Cosmetic events such as emotes (unreliable).
pub const EVENTS: ChannelId = ChannelId(5);

/// Reliable messages in flight per channel. Chat, inventory and control
/// carry a few messages a second per client; 256 unacked (thousands a
/// second at game RTTs) never limits them, and what waits beyond the window
/// stays queued. Both ends must agree on it (it is part of the protocol
/// version). Its memory follows use: a channel's window starts at a few
/// slots and doubles while more messages are in flight, up to this.
pub const RELIABLE_WINDOW: u16 = 256;

/// Most bytes a reliable channel of a connection holds, queued and
/// unacknowledged; a send past it is refused (the server then ends the
/// connection, `SendQueueFull`).
pub const RELIABLE_QUEUE_BYTES: usize = 512 * 1024;

/// Most bytes of snapshots a connection queues: past it the oldest not yet
/// begun are dropped, the newest too when it is alone, so no snapshot may
/// be larger (the server's snapshot budget is bounded by it).
pub const SNAPSHOT_QUEUE_BYTES: usize = 64 * 1024;

/// Largest message of the game: a message id and the largest body the
/// codec decodes. The transport refuses larger ones on arrival (a
/// fragment count past it before buffering anything, a last fragment past
/// it before delivery): they could only fail to decode.
pub const MAX_GAME_MESSAGE: usize = 2 + MAX_MESSAGE_BYTES;

/// The transport configuration of the game: the channels above, movement
/// and snapshots first when the budget is short, then control, inventory,
/// chat and events;
/// acknowledgements held for up to 40 ms to ride on the next tick's packet;
/// messages up to [`MAX_GAME_MESSAGE`].
pub fn transport_config() -> TransportConfig {
    let reliable = |priority| {
        ChannelConfig::new(ChannelKind::ReliableOrdered)
            .with_priority(priority)
            .with_max_queued_bytes(RELIABLE_QUEUE_BYTES)
    };
    TransportConfig {
        channels: vec![
            reliable(10),
            reliable(40),
            reliable(30),
            ChannelConfig::new(ChannelKind::UnreliableSequenced).with_priority(0),
            ChannelConfig::new(ChannelKind::UnreliableSequenced)
                .with_priority(5)
                .with_max_queued_bytes(SNAPSHOT_QUEUE_BYTES),
            ChannelConfig::new(ChannelKind::Unreliable).with_priority(60),
        ],
        idle_timeout: Duration::from_secs(10),
        // Clients send input and the server sends snapshots every tick
        // (33 ms at the default 30 Hz): an acknowledgement waits for the
        // next tick's packet instead of costing a datagram of its own.
        max_ack_delay: Duration::from_millis(40),
        reliable_window: RELIABLE_WINDOW,
        max_message_size: MAX_GAME_MESSAGE,
        ..TransportConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_valid_and_matches_the_ids() {
        let config = transport_config();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            config.channels[CHAT.0 as usize].kind,
            ChannelKind::ReliableOrdered
        );
        assert_eq!(
            config.channels[INVENTORY.0 as usize].kind,
            ChannelKind::ReliableOrdered
        );
        assert_eq!(
            config.channels[MOVEMENT.0 as usize].kind,
            ChannelKind::UnreliableSequenced
        );
        assert_eq!(
            config.channels[SNAPSHOT.0 as usize].kind,
            ChannelKind::UnreliableSequenced
        );
    }

    #[test]
    fn the_largest_message_that_decodes_is_the_largest_sent() {
        let body = MAX_MESSAGE_BYTES;
        let mut connection =
            crate::transport::Connection::new(transport_config(), std::time::Instant::now())
                .unwrap();
        assert!(connection.send(CHAT, &vec![0; 2 + body]).is_ok());
        assert!(
            connection.send(CHAT, &vec![0; 3 + body]).is_err(),
            "a body the codec refuses is refused at once"
        );
    }
}
