//! `id + bincode` framing with a size limit on decode.

use bytes::Bytes;
use thiserror::Error;

use super::NetMessage;

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
    bincode::serde::encode_into_std_write(message, &mut out, config())?;
    Ok(Bytes::from(out))
}

/// The id at the front of a payload.
pub fn message_id(payload: &[u8]) -> Option<u16> {
    payload.first_chunk::<2>().map(|b| u16::from_le_bytes(*b))
}

/// Decodes a whole payload (id and body) as `M`.
pub fn decode<M: NetMessage>(payload: &[u8]) -> Result<M, DecodeError> {
    let id = message_id(payload).ok_or(DecodeError::Truncated)?;
    if id != M::ID {
        return Err(DecodeError::WrongId {
            expected: M::ID,
            got: id,
        });
    }
    decode_body(&payload[2..])
}

/// Decodes a body whose id was already checked.
pub fn decode_body<M: NetMessage>(body: &[u8]) -> Result<M, DecodeError> {
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
