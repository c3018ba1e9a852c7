//! The full connection stack: the netcode.io secure layer carrying the
//! reliable transport inside its encrypted payload packets.
//!
//! [`ServerEndpoint`] serves many clients from one socket; [`ClientEndpoint`]
//! is one client. Both are sans-IO like the layers they join: the caller
//! hands in datagrams and time, and sends what `poll_transmit` writes.

mod client;
mod server;

pub use client::{ClientEndpoint, ClientEndpointEvent, ClientSendError};
pub use server::{
    EndpointEvent, EndpointSendError, ServerEndpoint, ServerEndpointConfig, ServerEndpointStats,
    TransportTotals,
};
