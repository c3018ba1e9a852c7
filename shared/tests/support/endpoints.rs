//! The game's endpoints in memory: a server with the dev key and its clients.

use std::net::SocketAddr;
use std::time::Instant;

use shared::endpoint::{ClientEndpoint, ServerEndpoint, ServerEndpointConfig};
use shared::io::system_rng;
use shared::netcode::ServerConfig;
use shared::protocol::{PROTOCOL_ID, channels};

/// A server endpoint at `addr` with the dev key and the game's channels.
pub fn game_server(addr: SocketAddr) -> ServerEndpoint {
    game_server_with(addr, |_| {})
}

/// [`game_server`] with its configuration changed by `configure`.
pub fn game_server_with(
    addr: SocketAddr,
    configure: impl FnOnce(&mut ServerEndpointConfig),
) -> ServerEndpoint {
    let netcode = ServerConfig::new(PROTOCOL_ID, shared::keys::dev_key(), vec![addr]);
    let mut config = ServerEndpointConfig::new(netcode, channels::transport_config());
    configure(&mut config);
    ServerEndpoint::new(config, &mut system_rng()).unwrap()
}

/// A client of the server at `server` for account `client_id`, connecting
/// since `now` with a dev-key token whose timeout is `timeout_s`.
pub fn game_client(
    server: SocketAddr,
    client_id: u64,
    timeout_s: i32,
    now: Instant,
    unix: u64,
) -> ClientEndpoint {
    let key = shared::keys::dev_key();
    let token = shared::keys::mint_token(&key, vec![server], client_id, 600, timeout_s).unwrap();
    let mut client = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
    client.connect(&token, now, unix).unwrap();
    client
}
