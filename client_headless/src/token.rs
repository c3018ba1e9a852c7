//! Connect tokens: minted locally with the dev key or a key file (servers
//! you own), or taken as printed by `server token`.

use std::net::SocketAddr;
use std::path::Path;

use shared::netcode::{ConnectToken, Key};
use shared::protocol::PROTOCOL_ID;

/// Seconds a minted token stays valid. Bots mint one as they connect, and
/// the server remembers every token it saw until it expires (16,384 by
/// default, `[handshake] max_token_entries`): an hour's tokens filled that
/// table within minutes of a churning swarm, and every later connect
/// failed. A minute covers the handshake, and clocks a little apart.
const EXPIRE_SECONDS: u64 = 60;
/// Seconds of silence before either side times the connection out.
const TIMEOUT_SECONDS: i32 = 10;

/// Mints tokens for one server with one private key.
#[derive(Clone)]
pub(crate) struct TokenMinter {
    key: Key,
    server: SocketAddr,
}

impl TokenMinter {
    /// With the public dev key (servers in dev mode).
    pub(crate) fn dev(server: SocketAddr) -> Self {
        Self {
            key: shared::keys::dev_key(),
            server,
        }
    }

    /// With the private key in `path` (a production server you own).
    pub(crate) fn from_key_file(server: SocketAddr, path: &Path) -> Result<Self, String> {
        let key = shared::keys::load_key_file(path).map_err(|e| e.to_string())?;
        Ok(Self { key, server })
    }

    /// Whether the key is the public dev key.
    pub(crate) fn is_dev(&self) -> bool {
        shared::keys::is_dev_key(&self.key)
    }

    /// A fresh token for `client_id`.
    pub(crate) fn mint(&self, client_id: u64) -> Result<ConnectToken, String> {
        shared::keys::mint_token(
            &self.key,
            vec![self.server],
            client_id,
            EXPIRE_SECONDS,
            TIMEOUT_SECONDS,
        )
        .map_err(|e| format!("cannot mint a connect token: {e}"))
    }
}

/// Parses a base64 token as printed by `server token`.
pub(crate) fn parse_token(text: &str) -> Result<ConnectToken, String> {
    let token = ConnectToken::from_base64(text.trim())
        .map_err(|e| format!("invalid connect token: {e}"))?;
    if token.protocol_id != PROTOCOL_ID {
        return Err(format!(
            "the token is for protocol {:#x}, this client speaks {PROTOCOL_ID:#x}",
            token.protocol_id
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_round_trip_through_base64() {
        let server: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        let minter = TokenMinter::dev(server);
        assert!(minter.is_dev());
        let token = minter.mint(42).unwrap();
        let parsed = parse_token(&format!("  {}\n", token.to_base64())).unwrap();
        assert_eq!(parsed.server_addresses, vec![server]);
        assert!(parse_token("not a token").is_err());
    }

    /// A churning swarm of 1,000 bots mints ~45 tokens a second: the
    /// server's default table of 16,384 used tokens must see them expire
    /// long before it fills (the swarm then fails every reconnect).
    #[test]
    fn minted_tokens_leave_the_servers_table_long_before_a_churning_swarm_fills_it() {
        let token = TokenMinter::dev("127.0.0.1:7777".parse().unwrap())
            .mint(42)
            .unwrap();
        let life = token.expire_timestamp - token.create_timestamp;
        let minted_meanwhile = life * 45;
        assert!(
            minted_meanwhile * 4 <= 16_384,
            "{life} s of tokens: {minted_meanwhile}"
        );
    }
}
