//! The private key shared by the token-issuing backend and the servers.
//!
//! A key file holds the 32 key bytes in base64 on one line. The repository
//! ships a **development key** (`assets/dev.key`, also compiled in) so that
//! a fresh checkout runs with no setup; it is public, so anything signed
//! with it is forgeable. Production servers pass their own key file and
//! refuse the dev key.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

use std::net::SocketAddr;

use crate::netcode::{ConnectToken, KEY_BYTES, Key, TokenError, TokenParams, USER_DATA_BYTES};

const DEV_KEY_BASE64: &str = include_str!("../../assets/dev.key");

/// The public development key from `assets/dev.key`.
pub fn dev_key() -> Key {
    parse_key(DEV_KEY_BASE64).unwrap_or(Key::from_bytes([0; KEY_BYTES]))
}

/// Whether `key` is the public development key.
pub fn is_dev_key(key: &Key) -> bool {
    *key == dev_key()
}

/// Why a key could not be loaded.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not base64 of exactly 32 bytes.
    #[error("key file {} must hold 32 bytes in base64 on one line", path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
}

/// Parses base64 text (surrounding whitespace ignored) as a key.
pub fn parse_key(text: &str) -> Option<Key> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    let bytes: [u8; KEY_BYTES] = bytes.try_into().ok()?;
    Some(Key::from_bytes(bytes))
}

/// Reads a key file.
pub fn load_key_file(path: &Path) -> Result<Key, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_key(&text).ok_or_else(|| KeyError::Format {
        path: path.to_owned(),
    })
}

/// Mints a connect token for this game (its [`PROTOCOL_ID`](crate::protocol::PROTOCOL_ID)),
/// valid from now for `expire_seconds` at `servers`; the connection times
/// out after `timeout_seconds` of silence. What a login backend, `server
/// token`, the bots and the tests all call.
pub fn mint_token(
    key: &Key,
    servers: Vec<SocketAddr>,
    client_id: u64,
    expire_seconds: u64,
    timeout_seconds: i32,
) -> Result<ConnectToken, TokenError> {
    ConnectToken::generate(
        &TokenParams {
            protocol_id: crate::protocol::PROTOCOL_ID,
            client_id,
            create_timestamp: crate::io::unix_secs(),
            expire_seconds,
            timeout_seconds,
            server_addresses: servers,
            user_data: [0; USER_DATA_BYTES],
        },
        key,
        &mut crate::io::system_rng(),
    )
}

/// A token for a dev-mode server at `server`: a minute to connect, a 10 s timeout.
pub fn dev_token(server: SocketAddr, client_id: u64) -> Result<ConnectToken, TokenError> {
    mint_token(&dev_key(), vec![server], client_id, 60, 10)
}

/// The base64 text of a key, as written to key files.
pub fn key_to_base64(key: &Key) -> String {
    STANDARD.encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_key_is_real_and_recognised() {
        let key = dev_key();
        assert_ne!(key.as_bytes(), &[0; KEY_BYTES]);
        assert!(is_dev_key(&key));
        assert!(!is_dev_key(&Key::from_bytes([7; KEY_BYTES])));
        assert_eq!(parse_key(&key_to_base64(&key)), Some(key));
    }

    #[test]
    fn minted_tokens_name_this_game_and_the_servers() {
        let server = "127.0.0.1:7777".parse().unwrap();
        let token = mint_token(&dev_key(), vec![server], 9, 120, 5).unwrap();
        assert_eq!(token.protocol_id, crate::protocol::PROTOCOL_ID);
        assert_eq!(token.server_addresses, vec![server]);
        assert_eq!(token.expire_timestamp - token.create_timestamp, 120);
        assert_eq!(token.timeout_seconds, 5);
    }

    #[test]
    fn bad_key_text_is_refused() {
        assert_eq!(parse_key("not base64!"), None);
        assert_eq!(parse_key(&STANDARD.encode([1u8; 16])), None);
    }
}
