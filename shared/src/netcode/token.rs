//! Connect tokens (public + encrypted private part) and challenge tokens.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand_core::CryptoRng;

use super::crypto::{self, PacketCipher};
use super::wire::{Reader, ShortOrInvalid, Writer};
use super::{
    CHALLENGE_TOKEN_BYTES, CONNECT_TOKEN_BYTES, CONNECT_TOKEN_NONCE_BYTES,
    CONNECT_TOKEN_PRIVATE_BYTES, KEY_BYTES, Key, MAX_SERVER_ADDRESSES, USER_DATA_BYTES,
    VERSION_INFO,
};

/// Why a connect token could not be minted, encoded or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The server address list is empty or longer than 32 entries.
    #[error("a connect token needs between 1 and 32 server addresses, got {0}")]
    ServerAddressCount(usize),
    /// `expire_seconds` pushed the expiry past `u64::MAX`.
    #[error("token expiry overflows")]
    ExpiryOverflow,
    /// The serialized token is not 2048 bytes, or its base64 is not valid.
    #[error("a connect token is {CONNECT_TOKEN_BYTES} bytes (base64: standard alphabet, padded)")]
    Encoding,
    /// The version string is not `NETCODE 1.02`.
    #[error("connect token version is not NETCODE 1.02")]
    WrongVersion,
    /// A field is out of range (address count or type, create after expire).
    #[error("connect token is malformed")]
    Malformed,
    /// The private part failed to decrypt with the given key (wrong key,
    /// wrong protocol id or expiry, or tampering).
    #[error("connect token private data does not decrypt")]
    Decrypt,
}

/// Everything the backend decides when it mints a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParams {
    /// Unique to this game or application; the server drops tokens of others.
    pub protocol_id: u64,
    /// Globally unique id of the authenticated client.
    pub client_id: u64,
    /// Unix seconds at which the token is minted (the wall clock of the backend).
    pub create_timestamp: u64,
    /// Seconds after `create_timestamp` at which the token expires.
    pub expire_seconds: u64,
    /// Seconds without packets before either side times the connection out;
    /// zero or negative disables timeouts (development only: a vanished
    /// client then holds its slot and its account until the server stops).
    pub timeout_seconds: i32,
    /// Server addresses the client tries in order (1 to 32). Each server checks
    /// that its own public address is in this list.
    pub server_addresses: Vec<SocketAddr>,
    /// Opaque application data handed to the server on connect.
    pub user_data: [u8; USER_DATA_BYTES],
}

/// A connect token as the client holds it: public fields plus the encrypted
/// private part that only the backend and the servers can read.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// Unique to this game or application.
    pub protocol_id: u64,
    /// Unix seconds when the token was minted.
    pub create_timestamp: u64,
    /// Unix seconds when the token expires.
    pub expire_timestamp: u64,
    /// XChaCha20-Poly1305 nonce of the private part; random per token.
    pub nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
    /// The encrypted private part (1008 bytes of ciphertext + 16-byte tag).
    pub private_data: Box<[u8; CONNECT_TOKEN_PRIVATE_BYTES]>,
    /// Seconds without packets before timing out; zero or negative disables
    /// timeouts.
    pub timeout_seconds: i32,
    /// Server addresses the client tries in order.
    pub server_addresses: Vec<SocketAddr>,
    /// Key for packets the client sends.
    pub client_to_server_key: Key,
    /// Key for packets the server sends.
    pub server_to_client_key: Key,
}

impl std::fmt::Debug for ConnectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectToken")
            .field("protocol_id", &self.protocol_id)
            .field("create_timestamp", &self.create_timestamp)
            .field("expire_timestamp", &self.expire_timestamp)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("server_addresses", &self.server_addresses)
            .finish_non_exhaustive()
    }
}

impl ConnectToken {
    /// Mints a token: random nonce and session keys from `rng`, private part
    /// encrypted with `private_key` (the key shared by backend and servers).
    pub fn generate(
        params: &TokenParams,
        private_key: &Key,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, TokenError> {
        let mut nonce = [0u8; CONNECT_TOKEN_NONCE_BYTES];
        rng.fill_bytes(&mut nonce);
        let client_to_server_key = Key::generate(rng);
        let server_to_client_key = Key::generate(rng);
        Self::generate_with(
            params,
            private_key,
            nonce,
            client_to_server_key,
            server_to_client_key,
        )
    }

    /// Mints a token from explicit nonce and session keys (deterministic; for
    /// tests and for callers with their own randomness source). Never reuse a
    /// nonce with the same private key.
    pub fn generate_with(
        params: &TokenParams,
        private_key: &Key,
        nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
        client_to_server_key: Key,
        server_to_client_key: Key,
    ) -> Result<Self, TokenError> {
        let count = params.server_addresses.len();
        if count == 0 || count > MAX_SERVER_ADDRESSES {
            return Err(TokenError::ServerAddressCount(count));
        }
        let expire_timestamp = params
            .create_timestamp
            .checked_add(params.expire_seconds)
            .ok_or(TokenError::ExpiryOverflow)?;
        let private = PrivateConnectToken {
            client_id: params.client_id,
            timeout_seconds: params.timeout_seconds,
            server_addresses: params.server_addresses.clone(),
            client_to_server_key,
            server_to_client_key,
            user_data: params.user_data,
        };
        let mut private_data = Box::new([0u8; CONNECT_TOKEN_PRIVATE_BYTES]);
        private
            .write(&mut private_data[..])
            .map_err(|_| TokenError::Malformed)?;
        encrypt_private(
            &mut private_data,
            params.protocol_id,
            expire_timestamp,
            &nonce,
            private_key,
        )
        .map_err(|_| TokenError::Malformed)?;
        Ok(Self {
            protocol_id: params.protocol_id,
            create_timestamp: params.create_timestamp,
            expire_timestamp,
            nonce,
            private_data,
            timeout_seconds: params.timeout_seconds,
            server_addresses: params.server_addresses.clone(),
            client_to_server_key,
            server_to_client_key,
        })
    }

    /// Serializes to the standard's 2048-byte layout.
    pub fn to_bytes(&self) -> [u8; CONNECT_TOKEN_BYTES] {
        let mut out = [0u8; CONNECT_TOKEN_BYTES];
        // Cannot fail: at most 32 addresses of at most 19 bytes fit easily.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut [u8; CONNECT_TOKEN_BYTES]) -> Result<(), ShortOrInvalid> {
        let mut w = Writer::new(out);
        w.bytes(&VERSION_INFO)?;
        w.u64(self.protocol_id)?;
        w.u64(self.create_timestamp)?;
        w.u64(self.expire_timestamp)?;
        w.bytes(&self.nonce)?;
        w.bytes(&self.private_data[..])?;
        w.u32(self.timeout_seconds.cast_unsigned())?;
        let count = u32::try_from(self.server_addresses.len()).map_err(|_| ShortOrInvalid)?;
        w.u32(count)?;
        for address in &self.server_addresses {
            w.address(*address)?;
        }
        w.bytes(self.client_to_server_key.as_bytes())?;
        w.bytes(self.server_to_client_key.as_bytes())?;
        w.zero_pad();
        Ok(())
    }

    /// Parses the 2048-byte layout, validating what a client can validate
    /// (version, address count and types, create <= expire).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() != CONNECT_TOKEN_BYTES {
            return Err(TokenError::Encoding);
        }
        let mut r = Reader::new(bytes);
        let malformed = |_| TokenError::Malformed;
        let version: [u8; 13] = r.array().map_err(malformed)?;
        if version != VERSION_INFO {
            return Err(TokenError::WrongVersion);
        }
        let protocol_id = r.u64().map_err(malformed)?;
        let create_timestamp = r.u64().map_err(malformed)?;
        let expire_timestamp = r.u64().map_err(malformed)?;
        if create_timestamp > expire_timestamp {
            return Err(TokenError::Malformed);
        }
        let nonce = r.array().map_err(malformed)?;
        let private_data = Box::new(r.array().map_err(malformed)?);
        let timeout_seconds = r.u32().map_err(malformed)?.cast_signed();
        let server_addresses = read_addresses(&mut r).map_err(malformed)?;
        let client_to_server_key = Key::from_bytes(r.array().map_err(malformed)?);
        let server_to_client_key = Key::from_bytes(r.array().map_err(malformed)?);
        Ok(Self {
            protocol_id,
            create_timestamp,
            expire_timestamp,
            nonce,
            private_data,
            timeout_seconds,
            server_addresses,
            client_to_server_key,
            server_to_client_key,
        })
    }

    /// The 2048-byte token in standard base64 (padded), for handing to a client
    /// over HTTPS or a command line.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.to_bytes())
    }

    /// Parses a token produced by [`ConnectToken::to_base64`] (surrounding
    /// whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        // 2048 bytes encode to 2732 characters; refuse anything else before
        // decoding so the allocation below is bounded.
        if text.len() != CONNECT_TOKEN_BYTES.div_ceil(3).saturating_mul(4) {
            return Err(TokenError::Encoding);
        }
        let bytes = BASE64.decode(text).map_err(|_| TokenError::Encoding)?;
        Self::from_bytes(&bytes)
    }

    /// The expiry minus the creation time: how long the client may spend
    /// connecting before giving up with `ConnectTokenExpired`.
    pub fn lifetime_seconds(&self) -> u64 {
        self.expire_timestamp.saturating_sub(self.create_timestamp)
    }
}

fn read_addresses(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, ShortOrInvalid> {
    let count = usize::try_from(r.u32()?).map_err(|_| ShortOrInvalid)?;
    if count == 0 || count > MAX_SERVER_ADDRESSES {
        return Err(ShortOrInvalid);
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(r.address()?);
    }
    Ok(out)
}

/// The decrypted private part of a connect token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrivateConnectToken {
    pub(crate) client_id: u64,
    pub(crate) timeout_seconds: i32,
    pub(crate) server_addresses: Vec<SocketAddr>,
    pub(crate) client_to_server_key: Key,
    pub(crate) server_to_client_key: Key,
    pub(crate) user_data: [u8; USER_DATA_BYTES],
}

/// The private part without its address list, read straight out of a
/// decrypted buffer without allocating (the server's hot path).
pub(crate) struct PrivateTokenView {
    pub(crate) client_id: u64,
    pub(crate) timeout_seconds: i32,
    pub(crate) client_to_server_key: Key,
    pub(crate) server_to_client_key: Key,
    pub(crate) user_data: [u8; USER_DATA_BYTES],
}

impl PrivateConnectToken {
    pub(crate) fn write(&self, out: &mut [u8]) -> Result<(), ShortOrInvalid> {
        let mut w = Writer::new(out);
        w.u64(self.client_id)?;
        w.u32(self.timeout_seconds.cast_unsigned())?;
        let count = u32::try_from(self.server_addresses.len()).map_err(|_| ShortOrInvalid)?;
        w.u32(count)?;
        for address in &self.server_addresses {
            w.address(*address)?;
        }
        w.bytes(self.client_to_server_key.as_bytes())?;
        w.bytes(self.server_to_client_key.as_bytes())?;
        w.bytes(&self.user_data)?;
        w.zero_pad();
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn read(bytes: &[u8]) -> Result<Self, ShortOrInvalid> {
        let mut r = Reader::new(bytes);
        let client_id = r.u64()?;
        let timeout_seconds = r.u32()?.cast_signed();
        let server_addresses = read_addresses(&mut r)?;
        Ok(Self {
            client_id,
            timeout_seconds,
            server_addresses,
            client_to_server_key: Key::from_bytes(r.array()?),
            server_to_client_key: Key::from_bytes(r.array()?),
            user_data: r.array()?,
        })
    }
}

/// Reads a decrypted private token, checking the address list (count, types)
/// and whether `is_ours` accepts one of the addresses, without allocating.
/// Returns `Ok(None)` when no listed address is ours.
pub(crate) fn read_private_view(
    bytes: &[u8],
    mut is_ours: impl FnMut(SocketAddr) -> bool,
) -> Result<Option<PrivateTokenView>, ShortOrInvalid> {
    let mut r = Reader::new(bytes);
    let client_id = r.u64()?;
    let timeout_seconds = r.u32()?.cast_signed();
    let count = usize::try_from(r.u32()?).map_err(|_| ShortOrInvalid)?;
    if count == 0 || count > MAX_SERVER_ADDRESSES {
        return Err(ShortOrInvalid);
    }
    let mut found = false;
    for _ in 0..count {
        let address = r.address()?;
        found |= is_ours(address);
    }
    let view = PrivateTokenView {
        client_id,
        timeout_seconds,
        client_to_server_key: Key::from_bytes(r.array()?),
        server_to_client_key: Key::from_bytes(r.array()?),
        user_data: r.array()?,
    };
    Ok(found.then_some(view))
}

/// Encrypts a 1024-byte private token buffer in place.
pub(crate) fn encrypt_private(
    buf: &mut [u8; CONNECT_TOKEN_PRIVATE_BYTES],
    protocol_id: u64,
    expire_timestamp: u64,
    nonce: &[u8; CONNECT_TOKEN_NONCE_BYTES],
    key: &Key,
) -> Result<(), crypto::AeadFailure> {
    let ad = crypto::token_ad(protocol_id, expire_timestamp);
    crypto::xseal_token(key, nonce, &ad, buf)
}

/// Decrypts a 1024-byte private token in place (tag bytes untouched).
pub(crate) fn decrypt_private(
    buf: &mut [u8],
    protocol_id: u64,
    expire_timestamp: u64,
    nonce: &[u8; CONNECT_TOKEN_NONCE_BYTES],
    key: &Key,
) -> Result<(), crypto::AeadFailure> {
    if buf.len() != CONNECT_TOKEN_PRIVATE_BYTES {
        return Err(crypto::AeadFailure);
    }
    let ad = crypto::token_ad(protocol_id, expire_timestamp);
    crypto::xopen_token(key, nonce, &ad, buf)
}

/// Writes and encrypts a challenge token into `out` (exactly 300 bytes),
/// bound to `ad` (the netcode.io standard binds nothing: an empty `ad`).
pub(crate) fn write_challenge(
    out: &mut [u8],
    client_id: u64,
    user_data: &[u8; USER_DATA_BYTES],
    sequence: u64,
    ad: &[u8],
    cipher: &PacketCipher,
) -> Result<(), ShortOrInvalid> {
    if out.len() != CHALLENGE_TOKEN_BYTES {
        return Err(ShortOrInvalid);
    }
    let mut w = Writer::new(out);
    w.u64(client_id)?;
    w.bytes(user_data)?;
    w.zero_pad();
    crypto::seal_challenge(cipher, sequence, ad, out).map_err(|_| ShortOrInvalid)
}

/// Decrypts a challenge token bound to `ad` in place and returns (client
/// id, user data).
pub(crate) fn open_challenge(
    buf: &mut [u8],
    sequence: u64,
    ad: &[u8],
    cipher: &PacketCipher,
) -> Result<(u64, [u8; USER_DATA_BYTES]), crypto::AeadFailure> {
    if buf.len() != CHALLENGE_TOKEN_BYTES {
        return Err(crypto::AeadFailure);
    }
    crypto::open_challenge(cipher, sequence, ad, buf)?;
    let mut r = Reader::new(buf);
    let client_id = r.u64().map_err(|_| crypto::AeadFailure)?;
    let user_data = r.array().map_err(|_| crypto::AeadFailure)?;
    Ok((client_id, user_data))
}

const _: () = assert!(KEY_BYTES == 32);
