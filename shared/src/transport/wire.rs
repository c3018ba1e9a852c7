//! The transport's datagram format.
//!
//! ```text
//! packet   := header message*            (kind = data)
//!           | header reason:u8           (kind = disconnect)
//! header   := flags:u8 sequence:u16 ack:u16 ack_bits:u64 ack_delay:u16   (15 bytes, little endian)
//! flags    := kind (bits 0-1) | ACK_ELICITING (bit 2) | HAS_ACK (bit 3); other bits zero
//! message  := tag:u8 [id:u16] [fragment_index:u16 fragment_count:u16] len:u16 payload[len]
//! tag      := channel (bits 0-5) | FRAGMENT (bit 6) | HAS_ID (bit 7)
//! ```
//!
//! `ack` is the newest packet sequence received, bit `i` of `ack_bits` says
//! whether `ack - 1 - i` was received, and `ack_delay` is how long (in units
//! of 100 µs) the sender held that newest packet before this one left, so the
//! peer can subtract it from its RTT sample.
//!
//! Decoding checks every length against the bytes actually present and never
//! panics; a datagram that does not parse is a [`DecodeError`].

use thiserror::Error;

/// Bytes of the packet header.
pub const PACKET_HEADER_LEN: usize = 15;
/// Largest message header (tag, id, fragment index and count, length).
pub const MAX_MESSAGE_HEADER_LEN: usize = 9;
/// Resolution of the `ack_delay` field in microseconds.
pub const ACK_DELAY_UNIT_MICROS: u64 = 100;

const KIND_MASK: u8 = 0b11;
const FLAG_ACK_ELICITING: u8 = 1 << 2;
const FLAG_HAS_ACK: u8 = 1 << 3;
const FLAGS_RESERVED: u8 = !0b1111;

const TAG_CHANNEL_MASK: u8 = 0b0011_1111;
const TAG_FRAGMENT: u8 = 1 << 6;
const TAG_HAS_ID: u8 = 1 << 7;

/// What a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Acks and zero or more messages.
    Data = 0,
    /// The sender closed the connection; one reason byte follows the header.
    Disconnect = 1,
}

/// The fixed header of every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Data or disconnect.
    pub kind: PacketKind,
    /// The receiver should acknowledge this packet promptly.
    pub ack_eliciting: bool,
    /// This packet's sequence number.
    pub sequence: u16,
    /// Newest packet received by the sender and the 64 before it, if any.
    pub ack: Option<AckInfo>,
}

/// The acknowledgement part of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckInfo {
    /// Newest sequence received.
    pub latest: u16,
    /// Bit `i`: `latest - 1 - i` was received.
    pub bits: u64,
    /// How long `latest` waited at the receiver, in [`ACK_DELAY_UNIT_MICROS`].
    pub delay: u16,
}

/// Fragment position of a message part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Zero-based index of this part.
    pub index: u16,
    /// Number of parts (at least 2).
    pub count: u16,
}

/// A message header as written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Channel index (below 64).
    pub channel: u8,
    /// Per-channel message id (reliable, sequenced and fragmented messages).
    pub id: Option<u16>,
    /// Present when the message is one part of a larger one.
    pub fragment: Option<FragmentInfo>,
}

impl MessageHeader {
    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        1 + if self.id.is_some() { 2 } else { 0 } + if self.fragment.is_some() { 4 } else { 0 } + 2
    }
}

/// A message as decoded from a datagram, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageView<'a> {
    /// The header.
    pub header: MessageHeader,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Why a datagram did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or a length field needs.
    #[error("datagram truncated")]
    Truncated,
    /// Unknown packet kind or reserved flag bits set.
    #[error("unknown packet kind or flags")]
    BadFlags,
    /// A fragment index not below its count, or a count below 2.
    #[error("invalid fragment index or count")]
    BadFragment,
}

/// Reads little-endian fields from a slice with bounds checks.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.take::<2>().map(u16::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take::<8>().map(u64::from_le_bytes)
    }

    fn slice(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }
}

/// Decodes the header; returns it and the bytes after it.
pub fn decode_header(datagram: &[u8]) -> Result<(PacketHeader, &[u8]), DecodeError> {
    let mut r = Reader { bytes: datagram };
    let flags = r.u8()?;
    if flags & FLAGS_RESERVED != 0 {
        return Err(DecodeError::BadFlags);
    }
    let kind = match flags & KIND_MASK {
        0 => PacketKind::Data,
        1 => PacketKind::Disconnect,
        _ => return Err(DecodeError::BadFlags),
    };
    let sequence = r.u16()?;
    let latest = r.u16()?;
    let bits = r.u64()?;
    let delay = r.u16()?;
    let ack = (flags & FLAG_HAS_ACK != 0).then_some(AckInfo {
        latest,
        bits,
        delay,
    });
    let header = PacketHeader {
        kind,
        ack_eliciting: flags & FLAG_ACK_ELICITING != 0,
        sequence,
        ack,
    };
    Ok((header, r.bytes))
}

/// Iterates over the messages of a data packet's body.
pub struct MessageIter<'a> {
    reader: Reader<'a>,
}

impl<'a> MessageIter<'a> {
    /// Iterates over `body`, the bytes after the header.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            reader: Reader { bytes: body },
        }
    }

    fn decode_one(&mut self) -> Result<MessageView<'a>, DecodeError> {
        let r = &mut self.reader;
        let tag = r.u8()?;
        let id = if tag & TAG_HAS_ID != 0 {
            Some(r.u16()?)
        } else {
            None
        };
        let fragment = if tag & TAG_FRAGMENT != 0 {
            let index = r.u16()?;
            let count = r.u16()?;
            if count < 2 || index >= count {
                return Err(DecodeError::BadFragment);
            }
            Some(FragmentInfo { index, count })
        } else {
            None
        };
        let len = usize::from(r.u16()?);
        let payload = r.slice(len)?;
        Ok(MessageView {
            header: MessageHeader {
                channel: tag & TAG_CHANNEL_MASK,
                id,
                fragment,
            },
            payload,
        })
    }
}

impl<'a> Iterator for MessageIter<'a> {
    type Item = Result<MessageView<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.bytes.is_empty() {
            return None;
        }
        let item = self.decode_one();
        if item.is_err() {
            self.reader.bytes = &[];
        }
        Some(item)
    }
}

/// Writes a packet into a caller-owned buffer.
pub struct PacketWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> PacketWriter<'a> {
    /// Starts a packet; `buf` must hold at least [`PACKET_HEADER_LEN`] bytes.
    pub fn new(buf: &'a mut [u8], header: &PacketHeader) -> Option<Self> {
        let out = buf.get_mut(..PACKET_HEADER_LEN)?;
        let mut flags = header.kind as u8;
        if header.ack_eliciting {
            flags |= FLAG_ACK_ELICITING;
        }
        let ack = header.ack.unwrap_or(AckInfo {
            latest: 0,
            bits: 0,
            delay: 0,
        });
        if header.ack.is_some() {
            flags |= FLAG_HAS_ACK;
        }
        out[0] = flags;
        out[1..3].copy_from_slice(&header.sequence.to_le_bytes());
        out[3..5].copy_from_slice(&ack.latest.to_le_bytes());
        out[5..13].copy_from_slice(&ack.bits.to_le_bytes());
        out[13..15].copy_from_slice(&ack.delay.to_le_bytes());
        Some(Self {
            buf,
            len: PACKET_HEADER_LEN,
        })
    }

    /// Bytes still free in the buffer.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing but the header has been written.
    pub fn is_empty(&self) -> bool {
        self.len == PACKET_HEADER_LEN
    }

    /// Appends one byte (the reason of a disconnect packet).
    pub fn write_u8(&mut self, value: u8) -> bool {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = value;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Appends a message; returns `false` (writing nothing) when it does not fit.
    pub fn write_message(&mut self, header: &MessageHeader, payload: &[u8]) -> bool {
        let Ok(len) = u16::try_from(payload.len()) else {
            return false;
        };
        let total = header.encoded_len() + payload.len();
        if total > self.remaining() || header.channel > TAG_CHANNEL_MASK {
            return false;
        }
        let mut tag = header.channel;
        if header.id.is_some() {
            tag |= TAG_HAS_ID;
        }
        if header.fragment.is_some() {
            tag |= TAG_FRAGMENT;
        }
        let out = &mut self.buf[self.len..self.len + total];
        out[0] = tag;
        let mut at = 1;
        if let Some(id) = header.id {
            out[at..at + 2].copy_from_slice(&id.to_le_bytes());
            at += 2;
        }
        if let Some(fragment) = header.fragment {
            out[at..at + 2].copy_from_slice(&fragment.index.to_le_bytes());
            out[at + 2..at + 4].copy_from_slice(&fragment.count.to_le_bytes());
            at += 4;
        }
        out[at..at + 2].copy_from_slice(&len.to_le_bytes());
        at += 2;
        out[at..].copy_from_slice(payload);
        self.len += total;
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_header() -> impl Strategy<Value = PacketHeader> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<u16>(),
            proptest::option::of((any::<u16>(), any::<u64>(), any::<u16>())),
        )
            .prop_map(|(disconnect, ack_eliciting, sequence, ack)| PacketHeader {
                kind: if disconnect {
                    PacketKind::Disconnect
                } else {
                    PacketKind::Data
                },
                ack_eliciting,
                sequence,
                ack: ack.map(|(latest, bits, delay)| AckInfo {
                    latest,
                    bits,
                    delay,
                }),
            })
    }

    fn arb_message() -> impl Strategy<Value = (MessageHeader, Vec<u8>)> {
        (
            0u8..64,
            proptest::option::of(any::<u16>()),
            proptest::option::of((2u16..=u16::MAX).prop_flat_map(|count| (0..count, Just(count)))),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(channel, id, fragment, payload)| {
                (
                    MessageHeader {
                        channel,
                        id,
                        fragment: fragment.map(|(index, count)| FragmentInfo { index, count }),
                    },
                    payload,
                )
            })
    }

    proptest! {
        #[test]
        fn packets_round_trip(header in arb_header(), messages in proptest::collection::vec(arb_message(), 0..8)) {
            let mut buf = [0u8; 2048];
            let mut writer = PacketWriter::new(&mut buf, &header).unwrap();
            for (h, payload) in &messages {
                prop_assert!(writer.write_message(h, payload));
            }
            let len = writer.len();
            let (decoded, body) = decode_header(&buf[..len]).unwrap();
            prop_assert_eq!(decoded, header);
            let got: Vec<_> = MessageIter::new(body).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.len(), messages.len());
            for (view, (h, payload)) in got.iter().zip(&messages) {
                prop_assert_eq!(&view.header, h);
                prop_assert_eq!(view.payload, payload.as_slice());
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            if let Ok((_, body)) = decode_header(&bytes) {
                for view in MessageIter::new(body).flatten() {
                    prop_assert!(view.payload.len() <= bytes.len());
                }
            }
        }
    }

    #[test]
    fn a_message_that_does_not_fit_is_not_written() {
        let mut buf = [0u8; PACKET_HEADER_LEN + 10];
        let header = PacketHeader {
            kind: PacketKind::Data,
            ack_eliciting: false,
            sequence: 1,
            ack: None,
        };
        let mut writer = PacketWriter::new(&mut buf, &header).unwrap();
        let m = MessageHeader {
            channel: 0,
            id: Some(1),
            fragment: None,
        };
        assert!(!writer.write_message(&m, &[0; 6]));
        assert!(writer.write_message(&m, &[0; 5]));
        assert_eq!(writer.remaining(), 0);
    }

    #[test]
    fn truncated_length_is_an_error_not_a_panic() {
        let mut buf = [0u8; 64];
        let header = PacketHeader {
            kind: PacketKind::Data,
            ack_eliciting: true,
            sequence: 9,
            ack: None,
        };
        let mut writer = PacketWriter::new(&mut buf, &header).unwrap();
        let m = MessageHeader {
            channel: 3,
            id: None,
            fragment: None,
        };
        assert!(writer.write_message(&m, b"hello"));
        let len = writer.len();
        let (_, body) = decode_header(&buf[..len - 1]).unwrap();
        let results: Vec<_> = MessageIter::new(body).collect();
        assert_eq!(results, vec![Err(DecodeError::Truncated)]);
        assert_eq!(decode_header(&buf[..3]), Err(DecodeError::Truncated));
        buf[0] = 0x80;
        assert_eq!(decode_header(&buf[..len]), Err(DecodeError::BadFlags));
    }
}
