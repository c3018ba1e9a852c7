//! AEAD primitives used by netcode.io 1.02, all working in place on caller
//! buffers with detached tags.
//!
//! - Packets and challenge tokens: ChaCha20-Poly1305 (IETF, 96-bit nonce). The
//!   nonce is four zero bytes followed by the 64-bit sequence number in little
//!   endian (the standard's erratum; pinned by the golden vectors). This runs
//!   on every packet, so it uses `ring` (assembly ChaCha20 and Poly1305: a
//!   ~100-byte packet seals in a fraction of the time RustCrypto's
//!   `poly1305` AVX2 backend takes).
//! - Private connect tokens: XChaCha20-Poly1305 with the token's 24-byte nonce
//!   (RustCrypto; `ring` has no XChaCha, and tokens are rare).

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::mem::MaybeUninit;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::{KEY_BYTES, Key, MAC_BYTES, MAX_PACKET_BYTES, VERSION_INFO};

/// Bytes of associated data on every encrypted packet: version, protocol id,
/// prefix byte.
const PACKET_AD_BYTES: usize = 13 + 8 + 1;

/// The AEAD tag did not verify (or a length was impossible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadFailure;

/// A ChaCha20-Poly1305 key for packet or challenge-token use.
///
/// It keeps the 32 key bytes, not `ring`'s key object: that object is a
/// 544-byte union sized for AES-GCM's key schedule, with the ChaCha20 key
/// and the algorithm pointer on different cache lines. A server holds two
/// per client and uses each once per datagram, when the client's state has
/// left the cache, so the two objects cost four cold lines per client per
/// tick. The object is rebuilt on the stack for each packet instead (a copy
/// of the 32 bytes: ChaCha20 has no key schedule), which keeps the key in
/// the client's netcode state, on lines the packet touches anyway.
#[derive(Clone)]
pub(crate) struct PacketCipher {
    key: Key,
}

impl PacketCipher {
    pub(crate) fn new(key: &Key) -> Self {
        Self { key: *key }
    }

    fn aead(&self) -> LessSafeKey {
        // `UnboundKey::new` only fails for a key of the wrong length, which
        // the `[u8; 32]` type rules out (asserted at compile time below); no
        // input can reach the panic.
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, self.key.as_bytes()).expect("32-byte ChaCha20 key");
        LessSafeKey::new(unbound)
    }

    /// Encrypts `data` in place and returns the tag.
    pub(crate) fn seal(&self, sequence: u64, ad: &[u8], data: &mut [u8]) -> [u8; MAC_BYTES] {
        match self
            .aead()
            .seal_in_place_separate_tag(sequence_nonce(sequence), Aad::from(ad), data)
        {
            Ok(tag) => {
                let mut out = [0u8; MAC_BYTES];
                out.copy_from_slice(tag.as_ref());
                out
            }
            // Only reachable for inputs longer than 256 GiB; every caller passes
            // at most a few kilobytes. An all-zero tag never verifies.
            Err(_) => [0; MAC_BYTES],
        }
    }

    /// Decrypts `data` (at most [`MAX_PACKET_BYTES`]) in place after
    /// verifying `tag`. On failure `data` is left as it was.
    ///
    /// `ring` decrypts while it authenticates and zeroes the buffer when the
    /// tag does not match, so the ciphertext is kept in a stack copy and put
    /// back on failure (a forged packet must not destroy the caller's bytes).
    pub(crate) fn open(
        &self,
        sequence: u64,
        ad: &[u8],
        data: &mut [u8],
        tag: &[u8; MAC_BYTES],
    ) -> Result<(), AeadFailure> {
        // Uninitialised: only the packet's own bytes are written (zeroing
        // the whole buffer cost a 1,200-byte memset per packet).
        let mut backup_buf = [MaybeUninit::<u8>::uninit(); MAX_PACKET_BYTES];
        let backup: &[u8] = backup_buf
            .get_mut(..data.len())
            .ok_or(AeadFailure)?
            .write_copy_of_slice(data);
        let tag = ring::aead::Tag::from(*tag);
        match self.aead().open_in_place_separate_tag(
            sequence_nonce(sequence),
            Aad::from(ad),
            tag,
            data,
            0..,
        ) {
            Ok(_) => Ok(()),
            Err(_) => {
                data.copy_from_slice(backup);
                Err(AeadFailure)
            }
        }
    }
}

/// The 96-bit IETF nonce for a 64-bit sequence number: `[0; 4] ++ seq.to_le()`.
pub(crate) fn sequence_nonce(sequence: u64) -> Nonce {
    Nonce::assume_unique_for_key(nonce_bytes(sequence))
}

fn nonce_bytes(sequence: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    let (_, tail) = nonce.split_at_mut(4);
    tail.copy_from_slice(&sequence.to_le_bytes());
    nonce
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
    ad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadFailure> {
    let (data, tag_out) = split_tag(buf)?;
    *tag_out = cipher.seal(sequence, ad, data);
    Ok(())
}

/// Decrypts a challenge token buffer in place.
pub(crate) fn open_challenge(
    cipher: &PacketCipher,
    sequence: u64,
    ad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadFailure> {
    let (data, tag) = split_tag(buf)?;
    let tag = *tag;
    cipher.open(sequence, ad, data, &tag)
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
        assert_eq!(n.as_ref(), &[0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
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

    #[test]
    fn failed_open_restores_every_byte() {
        // ring zeroes the buffer on a tag mismatch; `open` must undo that.
        let c = PacketCipher::new(&Key::from_bytes([9; 32]));
        let mut data = [0x5au8; MAX_PACKET_BYTES];
        let mut tag = c.seal(77, b"ad", &mut data);
        let sealed = data;
        tag[15] ^= 0x80;
        assert_eq!(c.open(77, b"ad", &mut data, &tag), Err(AeadFailure));
        assert_eq!(data, sealed);
        tag[15] ^= 0x80;
        assert_eq!(c.open(77, b"ad", &mut data, &tag), Ok(()));
        assert_eq!(data, [0x5au8; MAX_PACKET_BYTES]);
    }

    #[test]
    fn open_rejects_data_longer_than_a_packet_untouched() {
        let c = PacketCipher::new(&Key::from_bytes([9; 32]));
        let mut data = vec![3u8; MAX_PACKET_BYTES + 1];
        let tag = c.seal(1, b"", &mut data);
        let sealed = data.clone();
        assert_eq!(c.open(1, b"", &mut data, &tag), Err(AeadFailure));
        assert_eq!(data, sealed);
    }

    #[test]
    fn seal_matches_rustcrypto_ietf_chacha20_poly1305() {
        use chacha20poly1305::{ChaCha20Poly1305, Nonce as IetfNonce};
        let key = Key::from_bytes([0x42; 32]);
        let reference = ChaCha20Poly1305::new(&(*key.as_bytes()).into());
        let ours = PacketCipher::new(&key);
        for len in [0usize, 1, 8, 63, 64, 65, 100, 1200] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut a = plain.clone();
            let mut b = plain.clone();
            let tag = ours.seal(0x0102_0304_0506, b"assoc", &mut a);
            let ref_tag = reference
                .encrypt_inout_detached(
                    &IetfNonce::from(nonce_bytes(0x0102_0304_0506)),
                    b"assoc",
                    b.as_mut_slice().into(),
                )
                .unwrap();
            assert_eq!(a, b, "ciphertext, len {len}");
            assert_eq!(tag, <[u8; MAC_BYTES]>::from(ref_tag), "tag, len {len}");
            assert_eq!(ours.open(0x0102_0304_0506, b"assoc", &mut a, &tag), Ok(()));
            assert_eq!(a, plain);
        }
    }
}
