//! The reliable-UDP transport: a sans-IO [`Connection`] state machine.
//!
//! It never opens a socket and never reads a clock; time is passed in.
//! See [`Connection`] for how to drive it and [`wire`] for the datagram
//! format.

pub(crate) mod clock;
mod config;
mod congestion;
mod connection;
mod recv;
mod rtt;
mod send;
mod sent;
mod seq;
mod slots;
pub mod wire;

pub use config::{
    ChannelConfig, ChannelId, ChannelKind, ConfigError, MAX_CHANNELS, MAX_UNRELIABLE_REASSEMBLIES,
    MIN_KEEPALIVE_INTERVAL, MIN_UNRELIABLE_TIMER, TransportConfig,
};
pub use connection::{Connection, ConnectionStats, DisconnectReason, Event, SendError};
pub use recv::Deliver;
