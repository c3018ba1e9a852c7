//! Packet framing: the unencrypted connection request and the encrypted
//! packet types (prefix byte, variable-length sequence, AEAD body + tag).

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::crypto::{self, PacketCipher};
use super::stats::DropReason;
use super::token::ConnectToken;
use super::wire::{Reader, Writer};
use super::{
    CHALLENGE_TOKEN_BYTES, CONNECT_TOKEN_NONCE_BYTES, CONNECT_TOKEN_PRIVATE_BYTES, MAC_BYTES,
    MAX_PAYLOAD_BYTES, VERSION_INFO,
};

/// Size of a connection request packet: prefix, version, protocol id, expire
/// timestamp, token nonce and the encrypted private token.
pub(crate) const REQUEST_BYTES: usize =
    1 + VERSION_INFO.len() + 8 + 8 + CONNECT_TOKEN_NONCE_BYTES + CONNECT_TOKEN_PRIVATE_BYTES;

/// Smallest possible encrypted packet (prefix, one sequence byte, empty body, tag).
const MIN_ENCRYPTED_BYTES: usize = 1 + 1 + MAC_BYTES;

/// Body size of the challenge and response packets.
pub(crate) const CHALLENGE_BODY_BYTES: usize = 8 + CHALLENGE_TOKEN_BYTES;

/// Packet types on the wire (low four bits of the prefix byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketKind {
    Denied = 1,
    Challenge = 2,
    Response = 3,
    KeepAlive = 4,
    Payload = 5,
    Disconnect = 6,
}

impl PacketKind {
    fn from_type(t: u8) -> Option<Self> {
        Some(match t {
            1 => Self::Denied,
            2 => Self::Challenge,
            3 => Self::Response,
            4 => Self::KeepAlive,
            5 => Self::Payload,
            6 => Self::Disconnect,
            _ => return None,
        })
    }

    /// Whether the body length is what this type requires.
    fn body_len_ok(self, len: usize) -> bool {
        match self {
            Self::Denied | Self::Disconnect => len == 0,
            Self::Challenge | Self::Response => len == CHALLENGE_BODY_BYTES,
            Self::KeepAlive => len == 8,
            Self::Payload => (1..=MAX_PAYLOAD_BYTES).contains(&len),
        }
    }

    /// Whether replay protection applies to this type.
    pub(crate) fn replay_protected(self) -> bool {
        matches!(self, Self::KeepAlive | Self::Payload | Self::Disconnect)
    }
}

/// Which side is reading: the server and the client accept different types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

/// The cleartext header of an encrypted packet, validated up to (not
/// including) replay protection and decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: PacketKind,
    pub(crate) prefix: u8,
    pub(crate) sequence: u64,
    pub(crate) header_len: usize,
    pub(crate) body_len: usize,
}

/// Applies the standard's cheap checks to an encrypted packet, in its order.
pub(crate) fn parse_header(buf: &[u8], side: Side) -> Result<Header, DropReason> {
    if buf.len() < MIN_ENCRYPTED_BYTES {
        return Err(DropReason::Truncated);
    }
    let mut r = Reader::new(buf);
    let prefix = r.u8().map_err(|_| DropReason::Truncated)?;
    let kind = PacketKind::from_type(prefix & 0x0f).ok_or(DropReason::UnknownPacketType)?;
    let allowed = match side {
        Side::Server => !matches!(kind, PacketKind::Challenge | PacketKind::Denied),
        Side::Client => !matches!(kind, PacketKind::Response),
    };
    if !allowed {
        return Err(DropReason::UnexpectedPacketType);
    }
    let sequence_bytes = usize::from(prefix >> 4);
    if !(1..=8).contains(&sequence_bytes) {
        return Err(DropReason::MalformedHeader);
    }
    let header_len = 1usize.saturating_add(sequence_bytes);
    let body_len = buf
        .len()
        .checked_sub(header_len)
        .and_then(|n| n.checked_sub(MAC_BYTES))
        .ok_or(DropReason::Truncated)?;
    if !kind.body_len_ok(body_len) {
        return Err(DropReason::WrongBodySize);
    }
    let mut sequence = 0u64;
    for (i, byte) in r
        .bytes(sequence_bytes)
        .map_err(|_| DropReason::Truncated)?
        .iter()
        .enumerate()
    {
        let shift = u32::try_from(i.saturating_mul(8)).unwrap_or(0);
        sequence |= u64::from(*byte).checked_shl(shift).unwrap_or(0);
    }
    Ok(Header {
        kind,
        prefix,
        sequence,
        header_len,
        body_len,
    })
}

/// Decrypts the body of a packet whose header passed [`parse_header`], in
/// place, and returns it.
pub(crate) fn open_body<'a>(
    buf: &'a mut [u8],
    header: &Header,
    protocol_id: u64,
    cipher: &PacketCipher,
) -> Result<&'a mut [u8], DropReason> {
    let body_end = header
        .header_len
        .checked_add(header.body_len)
        .ok_or(DropReason::Truncated)?;
    let (head_and_body, tag) = buf
        .split_at_mut_checked(body_end)
        .ok_or(DropReason::Truncated)?;
    let tag: &[u8; MAC_BYTES] = (&*tag).try_into().map_err(|_| DropReason::Truncated)?;
    let body = head_and_body
        .get_mut(header.header_len..)
        .ok_or(DropReason::Truncated)?;
    let ad = crypto::packet_ad(protocol_id, header.prefix);
    cipher
        .open(header.sequence, &ad, body, tag)
        .map_err(|_| DropReason::DecryptFailed)?;
    Ok(body)
}

/// Bytes used by the variable-length encoding of `sequence` (1 to 8).
pub(crate) fn sequence_bytes(sequence: u64) -> usize {
    let bits = 64u32.saturating_sub(sequence.leading_zeros());
    usize::try_from(bits.div_ceil(8).max(1)).unwrap_or(8)
}

/// Offset of the body in a packet with this sequence number.
pub(crate) fn body_offset(sequence: u64) -> usize {
    sequence_bytes(sequence).saturating_add(1)
}

/// The buffer was too small for the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferTooSmall;

/// Total size of an encrypted packet with this sequence and body length.
pub(crate) fn sealed_len(sequence: u64, body_len: usize) -> usize {
    body_offset(sequence)
        .saturating_add(body_len)
        .saturating_add(MAC_BYTES)
}

/// Frames and encrypts a packet whose plaintext body the caller already wrote
/// at `out[body_offset(sequence)..][..body_len]`. Returns the packet length.
pub(crate) fn seal_in_place(
    out: &mut [u8],
    kind: PacketKind,
    sequence: u64,
    body_len: usize,
    protocol_id: u64,
    cipher: &PacketCipher,
) -> Result<usize, BufferTooSmall> {
    let nbytes = sequence_bytes(sequence);
    let total = sealed_len(sequence, body_len);
    let packet = out.get_mut(..total).ok_or(BufferTooSmall)?;
    let prefix = u8::try_from(nbytes)
        .ok()
        .and_then(|n| n.checked_shl(4))
        .ok_or(BufferTooSmall)?
        | kind as u8;
    let (head, rest) = packet.split_at_mut(body_offset(sequence));
    let mut w = Writer::new(head);
    w.u8(prefix).map_err(|_| BufferTooSmall)?;
    w.bytes(sequence.to_le_bytes().get(..nbytes).ok_or(BufferTooSmall)?)
        .map_err(|_| BufferTooSmall)?;
    let (body, tag_out) = rest.split_at_mut(body_len);
    let ad = crypto::packet_ad(protocol_id, prefix);
    let tag = cipher.seal(sequence, &ad, body);
    tag_out.copy_from_slice(&tag);
    Ok(total)
}

/// Copies `body` into place and seals it: the one-call form of
/// [`seal_in_place`].
pub(crate) fn seal(
    out: &mut [u8],
    kind: PacketKind,
    sequence: u64,
    body: &[u8],
    protocol_id: u64,
    cipher: &PacketCipher,
) -> Result<usize, BufferTooSmall> {
    let start = body_offset(sequence);
    let end = start.checked_add(body.len()).ok_or(BufferTooSmall)?;
    out.get_mut(start..end)
        .ok_or(BufferTooSmall)?
        .copy_from_slice(body);
    seal_in_place(out, kind, sequence, body.len(), protocol_id, cipher)
}

/// Writes a connection request for `token` into `out`; returns its length.
pub(crate) fn write_request(out: &mut [u8], token: &ConnectToken) -> Result<usize, BufferTooSmall> {
    let packet = out.get_mut(..REQUEST_BYTES).ok_or(BufferTooSmall)?;
    let mut w = Writer::new(packet);
    let write = |w: &mut Writer<'_>| -> Result<(), super::wire::ShortOrInvalid> {
        w.u8(0)?;
        w.bytes(&VERSION_INFO)?;
        w.u64(token.protocol_id)?;
        w.u64(token.expire_timestamp)?;
        w.bytes(&token.nonce)?;
        w.bytes(&token.private_data[..])
    };
    write(&mut w).map_err(|_| BufferTooSmall)?;
    Ok(REQUEST_BYTES)
}

/// The fields of a connection request packet, borrowed from the datagram.
pub(crate) struct RequestView<'a> {
    pub(crate) version: [u8; 13],
    pub(crate) protocol_id: u64,
    pub(crate) expire_timestamp: u64,
    pub(crate) nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
    pub(crate) private_data: &'a mut [u8],
}

/// Splits a request datagram into its fields; `None` unless it is exactly
/// [`REQUEST_BYTES`] long.
pub(crate) fn read_request(buf: &mut [u8]) -> Option<RequestView<'_>> {
    if buf.len() != REQUEST_BYTES {
        return None;
    }
    let (head, private_data) =
        buf.split_at_mut_checked(REQUEST_BYTES.checked_sub(CONNECT_TOKEN_PRIVATE_BYTES)?)?;
    let mut r = Reader::new(head);
    let _prefix = r.u8().ok()?;
    Some(RequestView {
        version: r.array().ok()?,
        protocol_id: r.u64().ok()?,
        expire_timestamp: r.u64().ok()?,
        nonce: r.array().ok()?,
        private_data,
    })
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "tests index fixed-size buffers they just filled"
)]
mod tests {
    use super::*;
    use crate::netcode::Key;

    #[test]
    fn request_is_1078_bytes() {
        assert_eq!(REQUEST_BYTES, 1078);
    }

    #[test]
    fn sequence_encoding_uses_minimal_bytes() {
        assert_eq!(sequence_bytes(0), 1);
        assert_eq!(sequence_bytes(0xff), 1);
        assert_eq!(sequence_bytes(0x100), 2);
        assert_eq!(sequence_bytes(1000), 2);
        assert_eq!(sequence_bytes(u64::MAX), 8);
    }

    #[test]
    fn sealed_packets_round_trip_for_every_type_and_sequence_width() {
        let cipher = PacketCipher::new(&Key::from_bytes([3; 32]));
        let kinds = [
            (PacketKind::Denied, 0usize, Side::Client),
            (PacketKind::Challenge, CHALLENGE_BODY_BYTES, Side::Client),
            (PacketKind::Response, CHALLENGE_BODY_BYTES, Side::Server),
            (PacketKind::KeepAlive, 8, Side::Client),
            (PacketKind::Payload, 1, Side::Server),
            (PacketKind::Payload, MAX_PAYLOAD_BYTES, Side::Client),
            (PacketKind::Disconnect, 0, Side::Server),
        ];
        for (kind, len, side) in kinds {
            for seq in [0u64, 1, 1000, 0x0011_2233_4455, u64::MAX] {
                let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut out = [0u8; 1300];
                let n = seal(&mut out, kind, seq, &body, 42, &cipher).unwrap();
                assert_eq!(n, sealed_len(seq, len));
                let header = parse_header(&out[..n], side).unwrap();
                assert_eq!(
                    (header.kind, header.sequence, header.body_len),
                    (kind, seq, len)
                );
                let opened = open_body(&mut out[..n], &header, 42, &cipher).unwrap();
                assert_eq!(opened, &body[..]);
            }
        }
    }

    #[test]
    fn header_checks_reject_bad_shapes() {
        let cipher = PacketCipher::new(&Key::from_bytes([3; 32]));
        let mut out = [0u8; 400];
        let n = seal(&mut out, PacketKind::KeepAlive, 7, &[0; 8], 1, &cipher).unwrap();
        assert_eq!(
            parse_header(&out[..17], Side::Client),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            parse_header(&out[..n - 1], Side::Client),
            Err(DropReason::WrongBodySize)
        );
        let mut bad = out;
        bad[0] = 0x17;
        assert_eq!(
            parse_header(&bad[..n], Side::Client),
            Err(DropReason::UnknownPacketType)
        );
        bad[0] = 0x04;
        assert_eq!(
            parse_header(&bad[..n], Side::Client),
            Err(DropReason::MalformedHeader)
        );
        bad[0] = 0x94;
        assert_eq!(
            parse_header(&bad[..n], Side::Client),
            Err(DropReason::MalformedHeader)
        );
        let resp = seal(
            &mut out,
            PacketKind::Response,
            0,
            &[0; CHALLENGE_BODY_BYTES],
            1,
            &cipher,
        );
        let m = resp.unwrap();
        assert_eq!(
            parse_header(&out[..m], Side::Client),
            Err(DropReason::UnexpectedPacketType)
        );
    }
}
