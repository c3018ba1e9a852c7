//! AEAD primitives used by netcode.io 1.02, all working in place on caller
//! buffers with detached tags.
//!
//! - Packets and challenge tokens: ChaCha20-Poly1305 (IETF, 96-bit nonce). The
//!   nonce is four zero bytes followed by the 64-bit sequence number in little
//!   endian (the standard's erratum; pinned by the golden vectors).
//! - Private connect tokens: XChaCha20-Poly1305 with the token's 24-byte nonce.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag, XChaCha20Poly1305, XNonce};

use super::{KEY_BYTES, Key, MAC_BYTES, VERSION_INFO};

/// Bytes of associated data on every encrypted packet: version, protocol id,
/// prefix byte.
const PACKET_AD_BYTES: usize = 13 + 8 + 1;

/// The AEAD tag did not verify (or a length was impossible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadFailure;

/// A ChaCha20-Poly1305 key ready for packet or challenge-token use.
#[derive(Clone)]
pub(crate) struct PacketCipher {
    cipher: ChaCha20Poly1305,
}

impl PacketCipher {
    pub(crate) fn new(key: &Key) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(&(*key.as_bytes()).into()),
        }
    }

    /// Encrypts `data` in place and returns the tag.
    pub(crate) fn seal(&self, sequence: u64, ad: &[u8], data: &mut [u8]) -> [u8; MAC_BYTES] {
        let nonce = sequence_nonce(sequence);
        match self.cipher.encrypt_inout_detached(&nonce, ad, data.into()) {
            Ok(tag) => tag.into(),
            // Only reachable for inputs longer than 256 GiB; every caller passes
            // at most a few kilobytes. An all-zero tag never verifies.
            Err(_) => [0; MAC_BYTES],
        }
    }

    /// Decrypts `data` in place after verifying `tag`. On failure `data` is
    /// left as it was.
    pub(crate) fn open(
        &self,
        sequence: u64,
        ad: &[u8],
        data: &mut [u8],
        tag: &[u8; MAC_BYTES],
    ) -> Result<(), AeadFailure> {
        let nonce = sequence_nonce(sequence);
        let tag = Tag::from(*tag);
        self.cipher
            .decrypt_inout_detached(&nonce, ad, data.into(), &tag)
            .map_err(|_| AeadFailure)
    }
}

/// The 96-bit IETF nonce for a 64-bit sequence number: `[0; 4] ++ seq.to_le()`.
pub(crate) fn sequence_nonce(sequence: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    let (_, tail) = nonce.split_at_mut(4);
    tail.copy_from_slice(&sequence.to_le_bytes());
    Nonce::from(nonce)
}

/// Associated data of an encrypted packet.
pub(crate) fn packet_ad(protocol_id: u64, prefix: u8) -> [u8; PACKET_AD_BYTES] {
    let mut ad = [0u8; PACKET_AD_BYTES];
    let (version, rest) = ad.split_at_mut(VERSION_INFO.len());
    version.copy_from_slice(&VERSION_INFO);
    let (protocol, last) = rest.split_at_mut(8);
    protocol.copy_from_slice(&protocol_id.to_le_bytes());
    last.fill(prefix);
    ad
}

/// Associated data of a private connect token.
pub(crate) fn token_ad(protocol_id: u64, expire_timestamp: u64) -> [u8; 29] {
    let mut ad = [0u8; 29];
    let (version, rest) = ad.split_at_mut(VERSION_INFO.len());
    version.copy_from_slice(&VERSION_INFO);
    let (protocol, expire) = rest.split_at_mut(8);
    protocol.copy_from_slice(&protocol_id.to_le_bytes());
    expire.copy_from_slice(&expire_timestamp.to_le_bytes());
    ad
}

/// Splits `buf` into (data, tag) where the tag is the last 16 bytes.
fn split_tag(buf: &mut [u8]) -> Result<(&mut [u8], &mut [u8; MAC_BYTES]), AeadFailure> {
    let data_len = buf.len().checked_sub(MAC_BYTES).ok_or(AeadFailure)?;
    let (data, tag) = buf.split_at_mut(data_len);
    let tag: &mut [u8; MAC_BYTES] = tag.try_into().map_err(|_| AeadFailure)?;
    Ok((data, tag))
}

/// Encrypts a whole fixed-size token buffer in place with XChaCha20-Poly1305:
/// all but the last 16 bytes are data, the last 16 receive the tag.
pub(crate) fn xseal_token(
    key: &Key,
    nonce: &[u8; 24],
    ad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadFailure> {
    let (data, tag_out) = split_tag(buf)?;
    let cipher = XChaCha20Poly1305::new(&(*key.as_bytes()).into());
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(*nonce), ad, data.into())
        .map_err(|_| AeadFailure)?;
    tag_out.copy_from_slice(&tag);
    Ok(())
}

/// Decrypts a buffer written by [`xseal_token`] in place (the tag bytes are
/// left untouched).
pub(crate) fn xopen_token(
    key: &Key,
    nonce: &[u8; 24],
    ad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadFailure> {
    let (data, tag) = split_tag(buf)?;
    let cipher = XChaCha20Poly1305::new(&(*key.as_bytes()).into());
    cipher
        .decrypt_inout_detached(&XNonce::from(*nonce), ad, data.into(), &Tag::from(*tag))
        .map_err(|_| AeadFailure)
}

/// Encrypts a challenge token buffer in place (last 16 bytes receive the tag).
pub(crate) fn seal_challenge(
    cipher: &PacketCipher,
    sequence: u64,
    buf: &mut [u8],
) -> Result<(), AeadFailure> {
    let (data, tag_out) = split_tag(buf)?;
    *tag_out = cipher.seal(sequence, &[], data);
    Ok(())
}

/// Decrypts a challenge token buffer in place.
pub(crate) fn open_challenge(
    cipher: &PacketCipher,
    sequence: u64,
    buf: &mut [u8],
) -> Result<(), AeadFailure> {
    let (data, tag) = split_tag(buf)?;
    let tag = *tag;
    cipher.open(sequence, &[], data, &tag)
}

/// A pseudo-random function keyed by a secret, used to derive unpredictable
/// values (hash keys) from the randomness injected at construction.
pub(crate) fn prf_u64(key: &Key, input: u64) -> u64 {
    let cipher = PacketCipher::new(key);
    let mut block = [0u8; 8];
    // The ChaCha20 keystream at a unique nonce is a PRF output.
    let _tag = cipher.seal(input, b"netcode-prf", &mut block);
    u64::from_le_bytes(block)
}

const _: () = assert!(KEY_BYTES == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_four_zero_bytes_then_little_endian_sequence() {
        let n = sequence_nonce(0x0102_0304_0506_0708);
        assert_eq!(n.as_slice(), &[0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn open_rejects_tampering_and_leaves_data() {
        let c = PacketCipher::new(&Key::from_bytes([7; 32]));
        let mut data = *b"hello world";
        let tag = c.seal(5, b"ad", &mut data);
        let sealed = data;
        data[0] ^= 1;
        assert_eq!(c.open(5, b"ad", &mut data, &tag), Err(AeadFailure));
        data[0] ^= 1;
        assert_eq!(data, sealed);
        assert_eq!(c.open(6, b"ad", &mut data, &tag), Err(AeadFailure));
        assert_eq!(c.open(5, b"ae", &mut data, &tag), Err(AeadFailure));
        assert_eq!(c.open(5, b"ad", &mut data, &tag), Ok(()));
        assert_eq!(&data, b"hello world");
    }
}
