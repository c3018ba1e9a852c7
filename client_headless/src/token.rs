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
pub(crate) const TIMEOUT_SECONDS: i32 = 10;

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

/// Longest token file read: a token's base64 text is 2,732 bytes; room
/// for line ends and spaces around it, not for a file picked by mistake.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Reads a token file: its base64 text, as `server token` prints it.
pub(crate) fn read_token_file(path: &Path) -> Result<ConnectToken, String> {
    use std::io::Read as _;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "{shown} is larger than a token ({MAX_TOKEN_FILE_BYTES} bytes at most)"
        ));
    }
    parse_token(&text).map_err(|e| format!("{shown}: {e}"))
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

    #[test]
    fn a_token_file_is_read_and_its_mistakes_named() {
        let dir = std::env::temp_dir().join(format!("token-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let server: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        let token = TokenMinter::dev(server).mint(42).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", token.to_base64())).unwrap();
        let read = read_token_file(&good).unwrap();
        assert_eq!(read.server_addresses, vec![server]);
        let big = dir.join("big");
        std::fs::write(&big, vec![b'A'; 1 << 20]).unwrap();
        let missing = dir.join("missing");
        let bad = dir.join("bad");
        std::fs::write(&bad, "not a token").unwrap();
        let errors = [&big, &missing, &bad].map(|p| read_token_file(p).err().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(errors[0].contains("larger than a token"), "{}", errors[0]);
        assert!(errors[1].starts_with("cannot read"), "{}", errors[1]);
        assert!(errors[2].contains("invalid connect token"), "{}", errors[2]);
        for (error, path) in errors.iter().zip([&big, &missing, &bad]) {
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
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
