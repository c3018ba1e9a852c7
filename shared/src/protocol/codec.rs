//! `id + bincode` framing with a size limit on decode.

use bytes::Bytes;
use thiserror::Error;

use super::{EncodeAs, NetMessage};
use crate::chunks::Chunks;

/// Largest encoded message body accepted on decode (bincode's limit stops
/// a hostile length prefix from allocating more).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// A message could not be encoded.
#[derive(Debug, Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(#[from] bincode::error::EncodeError);

/// A payload is not a valid message of the expected type.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// Fewer than two bytes: no id.
    #[error("payload too short for a message id")]
    Truncated,
    /// Another message type.
    #[error("message id {got} where {expected} was expected")]
    WrongId {
        /// The expected type's id.
        expected: u16,
        /// The id on the wire.
        got: u16,
    },
    /// The body did not decode (or exceeded [`MAX_MESSAGE_BYTES`]).
    #[error("malformed message body: {0}")]
    Body(#[from] bincode::error::DecodeError),
    /// Bytes left over after the body.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `message` with its id.
pub fn encode<M: NetMessage>(message: &M) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&M::ID.to_le_bytes());
    message.encode_body(&mut out)?;
    Ok(Bytes::from(out))
}

/// Encodes messages back to back into shared chunks of memory, so that
/// encoding many messages costs one allocation per chunk instead of one
/// per message. Each message comes out as its own [`Bytes`] (a slice of
/// the chunk); a chunk is used again once every message in it has been
/// dropped (see [`Chunks`]).
///
/// A message pins its whole chunk while it lives, so keep one buffer per
/// kind of message (messages that live as long as each other share
/// chunks): long-lived reliable messages do not then hold on to chunks of
/// short-lived unreliable ones.
#[derive(Debug)]
pub struct EncodeBuffer {
    chunks: Chunks,
    /// Where a message is serialized before its one copy into the chunk
    /// (serializers write many tiny pieces; a `Vec` takes them fastest).
    scratch: Vec<u8>,
}

impl Default for EncodeBuffer {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CHUNK)
    }
}

impl EncodeBuffer {
    /// Chunk size of [`EncodeBuffer::default`]: 16 KiB.
    pub const DEFAULT_CHUNK: usize = 16 * 1024;

    /// Smallest chunk size.
    const MIN_CHUNK: usize = 1024;

    /// A buffer that allocates chunks of `chunk` bytes (a larger message
    /// gets an allocation of its own).
    pub fn new(chunk: usize) -> Self {
        Self {
            chunks: Chunks::new(chunk.max(Self::MIN_CHUNK)),
            scratch: Vec::new(),
        }
    }

    /// Encodes `message` with its id, like [`encode`].
    pub fn encode<M: NetMessage>(&mut self, message: &M) -> Result<Bytes, EncodeError> {
        self.encode_as::<M>(message)
    }

    /// Encodes something that encodes as an `M` (see [`EncodeAs`]), with
    /// `M`'s id.
    pub fn encode_as<M: NetMessage>(
        &mut self,
        message: &impl EncodeAs<M>,
    ) -> Result<Bytes, EncodeError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&M::ID.to_le_bytes());
        message.write_body(&mut self.scratch)?;
        Ok(self.chunks.copy(&self.scratch))
    }
}

/// The default [`NetMessage::encode_body`]: bincode.
pub(super) fn bincode_body<M: NetMessage>(
    message: &M,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    bincode_body_of(message, out)
}

/// Appends `value` as bincode writes it in a message body.
pub(super) fn bincode_body_of<T: serde::Serialize>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    bincode::serde::encode_into_std_write(value, out, config())?;
    Ok(())
}

/// Appends `value` in the codec's varint encoding: below 251 one byte,
/// else a marker byte (251, 252, 253) and the value as a little-endian
/// `u16`, `u32` or `u64`.
#[inline]
pub(super) fn put_varint(out: &mut Vec<u8>, value: u64) {
    if value < 251 {
        out.push(value as u8);
    } else if let Ok(v) = u16::try_from(value) {
        out.push(251);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(value) {
        out.push(252);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// `value` zigzag-encoded (small magnitudes to small numbers), as the
/// codec writes an `i32` before its varint.
#[inline]
pub(super) const fn zigzag(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

/// The `i32` a zigzag value stands for.
const fn unzigzag(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

/// Appends `value` zigzag-encoded, then as a varint (the codec's `i32`).
#[inline]
pub(super) fn put_signed(out: &mut Vec<u8>, value: i32) {
    put_varint(out, u64::from(zigzag(value)));
}

/// Reads a body as bincode's standard configuration writes it, for the
/// types that decode by hand: the same values from the same bytes, and an
/// error for every byte string bincode refuses, its size limit included
/// (bincode counts 4 bytes per 32-bit integer and 8 per list length read,
/// whatever their encoded size, against [`MAX_MESSAGE_BYTES`]). Lists are
/// bounded by the body itself: a length the remaining bytes cannot hold is
/// refused before anything is allocated.
pub(super) struct VarintReader<'a> {
    buf: &'a [u8],
    at: usize,
    /// What bincode's limit would have counted so far.
    claimed: usize,
}

impl<'a> VarintReader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            at: 0,
            claimed: 0,
        }
    }

    /// `n` bytes, or the error bincode gives for a short body.
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .buf
            .get(self.at..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or(bincode::error::DecodeError::UnexpectedEnd {
                additional: N - (self.buf.len() - self.at).min(N),
            })?;
        self.at += N;
        Ok(*bytes)
    }

    /// A varint of at most 64 bits; `widest` is the type being read, for
    /// the error on a wider tag.
    fn varint(&mut self, widest: bincode::error::IntegerType) -> Result<u64, DecodeError> {
        use bincode::error::{DecodeError as Bincode, IntegerType};
        let [tag] = self.take::<1>()?;
        let found = match tag {
            0..=250 => return Ok(u64::from(tag)),
            251 => return Ok(u64::from(u16::from_le_bytes(self.take()?))),
            252 => return Ok(u64::from(u32::from_le_bytes(self.take()?))),
            253 if widest == IntegerType::U64 => return Ok(u64::from_le_bytes(self.take()?)),
            253 => IntegerType::U64,
            254 => IntegerType::U128,
            _ => IntegerType::Reserved,
        };
        Err(Bincode::InvalidIntegerType {
            expected: widest,
            found,
        }
        .into())
    }

    /// A `u32`.
    pub(super) fn unsigned(&mut self) -> Result<u32, DecodeError> {
        self.claimed += 4;
        let value = self.varint(bincode::error::IntegerType::U32)?;
        // Tags up to 252 carry at most 32 bits.
        Ok(u32::try_from(value).unwrap_or(u32::MAX))
    }

    /// An `i32` (zigzag).
    pub(super) fn signed(&mut self) -> Result<i32, DecodeError> {
        self.unsigned().map(unzigzag)
    }

    /// A `u32` then two `i32`s: a snapshot's added or moved entity.
    #[inline]
    pub(super) fn entity(&mut self) -> Result<(u32, i32, i32), DecodeError> {
        // Nearly every entity is three one-byte values (the encoder's
        // fast path too).
        if let Some(&[gap, a, b]) = self
            .buf
            .get(self.at..)
            .and_then(|rest| rest.first_chunk::<3>())
            && gap < 251
            && a < 251
            && b < 251
        {
            self.at += 3;
            self.claimed += 12;
            return Ok((
                u32::from(gap),
                unzigzag(u32::from(a)),
                unzigzag(u32::from(b)),
            ));
        }
        Ok((self.unsigned()?, self.signed()?, self.signed()?))
    }

    /// A list (its length, then the entries `entry` reads), of entries of
    /// at least `min_entry_bytes` each, into `list` (cleared first,
    /// reusing its capacity).
    pub(super) fn list<T>(
        &mut self,
        list: &mut Vec<T>,
        min_entry_bytes: usize,
        mut entry: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<(), DecodeError> {
        list.clear();
        let len = self.len(min_entry_bytes)?;
        list.reserve(len);
        for _ in 0..len {
            list.push(entry(self)?);
        }
        Ok(())
    }

    /// A list length, for entries of at least `min_entry_bytes` each.
    fn len(&mut self, min_entry_bytes: usize) -> Result<usize, DecodeError> {
        self.claimed += 8;
        let len = self.varint(bincode::error::IntegerType::U64)?;
        let room = (self.buf.len() - self.at) / min_entry_bytes.max(1);
        match usize::try_from(len) {
            Ok(len) if len <= room => Ok(len),
            _ => Err(bincode::error::DecodeError::UnexpectedEnd {
                additional: min_entry_bytes,
            }
            .into()),
        }
    }

    /// The body was read to its end, within the limit.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        if self.claimed > MAX_MESSAGE_BYTES {
            return Err(bincode::error::DecodeError::LimitExceeded.into());
        }
        match self.buf.len() - self.at {
            0 => Ok(()),
            left => Err(DecodeError::TrailingBytes(left)),
        }
    }
}

/// The id at the front of a payload.
pub fn message_id(payload: &[u8]) -> Option<u16> {
    payload.first_chunk::<2>().map(|b| u16::from_le_bytes(*b))
}

/// Decodes a whole payload (id and body) as `M`.
pub fn decode<M: NetMessage>(payload: &[u8]) -> Result<M, DecodeError> {
    decode_body(body_of::<M>(payload)?)
}

/// The body of a payload whose id is `M`'s.
pub(super) fn body_of<M: NetMessage>(payload: &[u8]) -> Result<&[u8], DecodeError> {
    let id = message_id(payload).ok_or(DecodeError::Truncated)?;
    if id != M::ID {
        return Err(DecodeError::WrongId {
            expected: M::ID,
            got: id,
        });
    }
    Ok(&payload[2..])
}

/// Decodes a body whose id was already checked.
pub fn decode_body<M: NetMessage>(body: &[u8]) -> Result<M, DecodeError> {
    M::decode_body(body)
}

/// Reads a text field (`#[serde(deserialize_with = ...)]`) as a borrowed
/// string, copied once its bytes are known to be there: serde's `String`
/// has bincode allocate (and zero) whatever length the wire claims, up to
/// the 64 KiB limit, before finding the bytes missing.
pub(super) fn text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
            Ok(text.to_owned())
        }
    }
    deserializer.deserialize_str(Text)
}

/// Decodes a body with bincode (what [`NetMessage::decode_body`] does
/// unless a type reads its bytes by hand).
pub(super) fn bincode_decode_body<M: NetMessage>(body: &[u8]) -> Result<M, DecodeError> {
    let (message, read) = bincode::serde::decode_from_slice(body, config())?;
    if read != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - read));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        text: String,
        values: Vec<u32>,
    }

    impl NetMessage for Sample {
        const ID: u16 = 999;
    }

    proptest! {
        #[test]
        fn round_trips(text in ".{0,40}", values in proptest::collection::vec(any::<u32>(), 0..20)) {
            let sample = Sample { text, values };
            let bytes = encode(&sample).unwrap();
            prop_assert_eq!(message_id(&bytes), Some(999));
            prop_assert_eq!(decode::<Sample>(&bytes).unwrap(), sample);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<Sample>(&bytes);
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        // id 999, then a string length claiming ~4 GiB.
        let payload = [0xE7, 0x03, 0xFC, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            decode::<Sample>(&payload),
            Err(DecodeError::Body(_))
        ));
    }

    #[test]
    fn the_encode_buffer_matches_encode_and_shares_its_chunks() {
        let mut buffer = EncodeBuffer::new(4096);
        let samples: Vec<Sample> = (0..200u32)
            .map(|i| Sample {
                text: "x".repeat(i as usize % 50),
                values: (0..i % 7).collect(),
            })
            .collect();
        let encoded: Vec<Bytes> = samples.iter().map(|s| buffer.encode(s).unwrap()).collect();
        for (sample, bytes) in samples.iter().zip(&encoded) {
            assert_eq!(*bytes, encode(sample).unwrap());
            assert_eq!(&decode::<Sample>(bytes).unwrap(), sample);
        }
        // Consecutive messages of one chunk are adjacent in memory.
        let adjacent = encoded
            .windows(2)
            .filter(|w| w[0].as_ptr_range().end == w[1].as_ptr())
            .count();
        assert!(adjacent > 150, "only {adjacent} of 199 shared a chunk");
        // A message larger than a chunk gets a chunk of its own.
        let big = Sample {
            text: "y".repeat(10_000),
            values: vec![],
        };
        assert_eq!(buffer.encode(&big).unwrap(), encode(&big).unwrap());
    }

    #[test]
    fn wrong_ids_and_trailing_bytes_are_errors() {
        let mut bytes = encode(&Sample {
            text: "a".into(),
            values: vec![],
        })
        .unwrap()
        .to_vec();
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(DecodeError::TrailingBytes(1))
        ));
        bytes[0] = 1;
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(DecodeError::WrongId { .. })
        ));
        assert!(matches!(
            decode::<Sample>(&[1]),
            Err(DecodeError::Truncated)
        ));
    }
}
