//! The full connection stack: the netcode.io secure layer carrying the
//! reliable transport inside its encrypted payload packets.
//!
//! [`ServerEndpoint`] serves many clients from one socket; [`ClientEndpoint`]
//! is one client. Both are sans-IO like the layers they join: the caller
//! hands in datagrams and time, and sends what `poll_transmit` writes.

use thiserror::Error;

use crate::netcode::{self, MAX_PAYLOAD_BYTES};
use crate::transport::{self, TransportConfig};

mod client;
mod server;

pub use client::{ClientEndpoint, ClientEndpointEvent, ClientSendError};
pub use server::{
    EndpointEvent, EndpointSendError, ServerEndpoint, ServerEndpointConfig, ServerEndpointStats,
    TransportTotals,
};

/// A configuration the stack cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EndpointConfigError {
    /// The secure layer refused its part.
    #[error(transparent)]
    Netcode(#[from] netcode::ConfigError),
    /// The transport refused its part.
    #[error(transparent)]
    Transport(#[from] transport::ConfigError),
    /// The transport's packets would not fit in the secure layer's
    /// payload packets.
    #[error(
        "the transport's max_payload {0} exceeds the {MAX_PAYLOAD_BYTES} bytes a secure payload packet carries"
    )]
    PayloadTooLarge(usize),
}

/// Checks that `transport` is valid and that its packets fit in the
/// secure layer's payload packets.
///
/// # Errors
/// The first problem found.
pub fn check_transport(transport: &TransportConfig) -> Result<(), EndpointConfigError> {
    transport.validate()?;
    if transport.max_payload > MAX_PAYLOAD_BYTES {
        return Err(EndpointConfigError::PayloadTooLarge(transport.max_payload));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ConfigError;

    fn server_with(transport: TransportConfig) -> Result<ServerEndpoint, EndpointConfigError> {
        let netcode = netcode::ServerConfig::new(
            crate::protocol::PROTOCOL_ID,
            crate::keys::dev_key(),
            vec!["127.0.0.1:40000".parse().expect("an address")],
        );
        ServerEndpoint::new(
            ServerEndpointConfig::new(netcode, transport),
            &mut crate::io::system_rng(),
        )
    }

    #[test]
    fn a_transport_that_cannot_work_is_refused_at_start_not_per_client() {
        assert!(server_with(crate::protocol::channels::transport_config()).is_ok());
        let no_channels = TransportConfig {
            channels: Vec::new(),
            ..TransportConfig::default()
        };
        assert_eq!(
            server_with(no_channels).err(),
            Some(EndpointConfigError::Transport(ConfigError::ChannelCount(0)))
        );
        // Valid for the transport alone (it allows 65,000-byte packets), but
        // larger than a secure payload packet.
        let too_large = TransportConfig {
            max_payload: 1_300,
            fragment_size: 1_250,
            ..TransportConfig::default()
        };
        assert_eq!(too_large.validate(), Ok(()));
        assert_eq!(
            server_with(too_large).err(),
            Some(EndpointConfigError::PayloadTooLarge(1_300))
        );
    }
}
