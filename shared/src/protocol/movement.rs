//! Movement input ([`MOVEMENT`](super::channels::MOVEMENT), unreliable
//! sequenced: a stale input is dropped by the channel) and world snapshots
//! ([`SNAPSHOT`](super::channels::SNAPSHOT), unreliable sequenced). Ids 4xx.
//!
//! The world is a 2D plane (`x`, `y` in metres). The client side of these
//! messages (applying snapshots, prediction and reconciliation) lives in
//! [`crate::movement`].
//!
//! # Snapshot wire format
//!
//! Every message is `id: u16 LE` + a bincode 2 body with variable-length
//! integers: an unsigned value below 251 takes 1 byte, below 2^16 3 bytes,
//! below 2^32 5 bytes; signed values are zigzag-encoded first (so
//! `-125..=125` takes 1 byte). A [`Snapshot`] body is, in order:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `tick` | u32 | the server's snapshot tick (from 1) |
//! | `baseline_age` | u32 | `tick - baseline`; 0 = full snapshot, no baseline |
//! | `last_input` | u32 | the last [`MoveInput::seq`] the server applied for you |
//! | `you` | u32 | your own entity's net id |
//! | `id_base` | u32 | base of the id gap coding below |
//! | `removed` | len + gaps | entities of the baseline that are gone |
//! | `added` | len + (gap, x, y) | entities not in the baseline, absolute position |
//! | `moved` | len + (gap, dx, dy) | baseline entities whose position changed |
//!
//! **Ids** in each list are sorted ascending and gap-coded: the first entry
//! stores `id - id_base`, every next one `id - previous id`.
//!
//! **Positions** are quantized to [`POSITION_UNITS_PER_METRE`] (1/32 m): a
//! coordinate travels as `round(metres * 32)` in an `i32`, so the error is
//! at most 1/64 m (≈ 1.6 cm) per axis, and a coordinate within ±1023 m
//! takes 3 bytes. `moved` entries carry the quantized difference to the
//! baseline's quantized position (1 byte per axis up to ±3.9 m).
//!
//! The state a snapshot describes is: the baseline's entities, minus
//! `removed`, plus `added`, with `moved` applied; baseline entities that
//! are in none of the lists are unchanged. A full snapshot
//! (`baseline_age == 0`) has only `added`.

use glam::{IVec2, Vec2};
use serde::{Deserialize, Serialize};

use super::codec::{VarintReader, body_of, put_signed, put_varint, zigzag};
use super::{DecodeError, EncodeAs, EncodeError, NetMessage};

/// Quantization of positions on the wire: units per metre (1/32 m steps).
pub const POSITION_UNITS_PER_METRE: f32 = 32.0;

/// The largest coordinate (in absolute value, metres) a world may have.
/// Positions are `f32` on both sides: at 2^16 m their steps are 1/256 m, so
/// a tick's motion (0.27 m at 8 m/s and 30 Hz) keeps its length within
/// 1 %; much farther out motion rounds to whole steps (a player runs at
/// twice the speed or not at all near 2^23 m). On the wire positions are
/// whole 1/32 m in an `i32`, good to about 67,108 km.
pub const MAX_WORLD_COORDINATE: f32 = 65_536.0;

/// Whether snapshot tick `a` comes after `b`. Ticks count up from 1 and,
/// after `u32::MAX`, go on from 1 again (0 is never a tick): compared as
/// serial numbers, the newer is the one less than 2^31 ahead, so a server
/// running past the wrap (4.5 years at 30 Hz) keeps its clients.
pub fn tick_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// A world position in metres as it travels: rounded to 1/32 m. Non-finite
/// coordinates become 0 and values beyond the `i32` range saturate.
pub fn quantize(position: Vec2) -> IVec2 {
    let q = |v: f32| {
        if !v.is_finite() {
            return 0;
        }
        // `as` saturates at the i32 range, and so does a finite value
        // whose scaling overflows to infinity.
        (v * POSITION_UNITS_PER_METRE).round() as i32
    };
    IVec2::new(q(position.x), q(position.y))
}

/// The position in metres of a quantized position.
pub fn dequantize(position: IVec2) -> Vec2 {
    position.as_vec2() / POSITION_UNITS_PER_METRE
}

/// Client → server, every tick: the intended velocity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MoveInput {
    /// Increases by one per input; snapshots echo the last one processed so
    /// the client can reconcile its prediction.
    pub seq: u32,
    /// Intended velocity in metres per second; the server clamps its
    /// length to the maximum speed and rejects non-finite values.
    pub velocity: Vec2,
    /// The newest [`Snapshot::tick`] this client has received and applied
    /// (0 for none): the server encodes later snapshots as deltas against
    /// it. This is the application-level ack of the unreliable snapshots.
    pub ack_snapshot: u32,
}

impl NetMessage for MoveInput {
    const ID: u16 = 400;
}

/// An entity that is new relative to the baseline: its absolute quantized
/// position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityAdded {
    /// Id gap (see the module docs).
    pub id_gap: u32,
    /// Quantized x (1/32 m).
    pub x: i32,
    /// Quantized y (1/32 m).
    pub y: i32,
}

/// A baseline entity that moved: its quantized displacement since the
/// baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityMoved {
    /// Id gap (see the module docs).
    pub id_gap: u32,
    /// Quantized x difference to the baseline (1/32 m).
    pub dx: i32,
    /// Quantized y difference to the baseline (1/32 m).
    pub dy: i32,
}

/// Server → client, every tick: the entities in the client's area of
/// interest, possibly as a delta against an acknowledged snapshot. See the
/// module docs for the exact format.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot tick, from 1 (then from 1 again after `u32::MAX`, see
    /// [`tick_after`]); echo it in [`MoveInput::ack_snapshot`].
    pub tick: u32,
    /// `tick - baseline tick`; 0 means a full snapshot.
    pub baseline_age: u32,
    /// The last [`MoveInput::seq`] the server applied for this client.
    pub last_input: u32,
    /// The receiving client's own entity id.
    pub you: u32,
    /// Base of the id gap coding.
    pub id_base: u32,
    /// Baseline entities that left the area of interest (id gaps).
    pub removed: Vec<u32>,
    /// Entities not in the baseline.
    pub added: Vec<EntityAdded>,
    /// Baseline entities that moved.
    pub moved: Vec<EntityMoved>,
}

impl NetMessage for Snapshot {
    const ID: u16 = 401;

    /// Hand-written, through the [`SnapshotEncoder`] a server uses to
    /// write snapshots from its own data: the same bytes as bincode's.
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut e = SnapshotEncoder::default();
        for &gap in &self.removed {
            e.removed(gap);
        }
        for a in &self.added {
            e.added(a.id_gap, a.x, a.y);
        }
        for m in &self.moved {
            e.moved(m.id_gap, m.dx, m.dy);
        }
        e.write(&self.header(), out);
        Ok(())
    }

    /// Hand-written too (every client decodes one every tick): accepts
    /// exactly what bincode accepts, with the same values.
    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut snapshot = Self::default();
        snapshot.read_body(body)?;
        Ok(snapshot)
    }
}

impl Snapshot {
    /// Decodes a whole payload (id and body) into `self`, reusing its
    /// lists' capacity: what [`decode`](super::decode) gives, without an
    /// allocation per snapshot once the lists have grown. On an error
    /// `self` holds no meaningful snapshot.
    ///
    /// # Errors
    /// As [`decode`](super::decode).
    pub fn decode_from(&mut self, payload: &[u8]) -> Result<(), DecodeError> {
        self.read_body(body_of::<Self>(payload)?)
    }

    fn read_body(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        let mut r = VarintReader::new(body);
        let mut head = [0u32; 5];
        for v in &mut head {
            *v = r.unsigned()?;
        }
        [
            self.tick,
            self.baseline_age,
            self.last_input,
            self.you,
            self.id_base,
        ] = head;
        r.list(&mut self.removed, 1, VarintReader::unsigned)?;
        // An added or moved entity: id gap, then two signed values.
        r.list(&mut self.added, 3, |r| {
            r.entity()
                .map(|(id_gap, x, y)| EntityAdded { id_gap, x, y })
        })?;
        r.list(&mut self.moved, 3, |r| {
            r.entity()
                .map(|(id_gap, dx, dy)| EntityMoved { id_gap, dx, dy })
        })?;
        r.finish()
    }
}

impl Snapshot {
    /// Its fixed part.
    pub fn header(&self) -> SnapshotHeader {
        SnapshotHeader {
            tick: self.tick,
            baseline_age: self.baseline_age,
            last_input: self.last_input,
            you: self.you,
            id_base: self.id_base,
        }
    }
}

/// The fixed part of a [`Snapshot`]: everything but its three lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotHeader {
    /// See [`Snapshot::tick`].
    pub tick: u32,
    /// See [`Snapshot::baseline_age`].
    pub baseline_age: u32,
    /// See [`Snapshot::last_input`].
    pub last_input: u32,
    /// See [`Snapshot::you`].
    pub you: u32,
    /// See [`Snapshot::id_base`].
    pub id_base: u32,
}

impl SnapshotHeader {
    /// The fields in wire order.
    fn fields(&self) -> [u32; 5] {
        [
            self.tick,
            self.baseline_age,
            self.last_input,
            self.you,
            self.id_base,
        ]
    }

    /// Its encoded size in bytes (the message id not included).
    pub fn encoded_len(&self) -> usize {
        self.fields()
            .iter()
            .map(|&v| varint_len(u64::from(v)))
            .sum()
    }
}

/// Builds a [`Snapshot`]'s body straight from the caller's data, without
/// building [`Snapshot`]'s lists: each list's entries are appended in id
/// order (appends to different lists may interleave), then
/// [`write`](Self::write) emits the body. For a server that encodes one
/// snapshot per client per tick; its buffers are reused from one snapshot
/// to the next.
#[derive(Debug, Default)]
pub struct SnapshotEncoder {
    /// Removed, added, moved: each list's entry count and encoded entries.
    lists: [(usize, Vec<u8>); 3],
}

impl SnapshotEncoder {
    /// Empties every list.
    pub fn clear(&mut self) {
        for (len, bytes) in &mut self.lists {
            *len = 0;
            bytes.clear();
        }
    }

    /// Room for `entries` entries in each list, however wide their values:
    /// once done, the lists do not grow for views of that many entities.
    pub fn reserve(&mut self, entries: usize) {
        // An id gap is at most 5 bytes, an added or moved entry 15.
        for (list, (_, bytes)) in self.lists.iter_mut().enumerate() {
            let entry = if list == 0 { 5 } else { 15 };
            bytes.reserve((entries * entry).saturating_sub(bytes.len()));
        }
    }

    /// The encoded size of the lists (their lengths and entries): what
    /// [`write`](Self::write) adds after the header.
    pub fn lists_len(&self) -> usize {
        self.lists
            .iter()
            .map(|(len, bytes)| varint_len(*len as u64) + bytes.len())
            .sum()
    }

    /// Bytes its lists hold on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.lists.iter().map(|(_, bytes)| bytes.capacity()).sum()
    }

    /// Appends a removed entity's id gap.
    #[inline]
    pub fn removed(&mut self, id_gap: u32) {
        let (len, bytes) = &mut self.lists[0];
        *len += 1;
        put_varint(bytes, u64::from(id_gap));
    }

    /// Appends an added entity: its id gap and absolute quantized position.
    #[inline]
    pub fn added(&mut self, id_gap: u32, x: i32, y: i32) {
        self.entity(1, id_gap, x, y);
    }

    /// Appends a moved entity: its id gap and quantized displacement.
    #[inline]
    pub fn moved(&mut self, id_gap: u32, dx: i32, dy: i32) {
        self.entity(2, id_gap, dx, dy);
    }

    #[inline(always)]
    fn entity(&mut self, list: usize, id_gap: u32, a: i32, b: i32) {
        let (len, bytes) = &mut self.lists[list];
        *len += 1;
        let (za, zb) = (zigzag(a), zigzag(b));
        if id_gap < 251 && za < 251 && zb < 251 {
            // Three one-byte values: nearly every moved entity.
            bytes.extend_from_slice(&[id_gap as u8, za as u8, zb as u8]);
        } else {
            wide_entity(bytes, id_gap, a, b);
        }
    }

    /// Appends the body of the snapshot with `header` and the lists built
    /// so far to `out`; returns its length in bytes.
    pub fn write(&self, header: &SnapshotHeader, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        for v in header.fields() {
            put_varint(out, u64::from(v));
        }
        for (len, bytes) in &self.lists {
            put_varint(out, *len as u64);
            out.extend_from_slice(bytes);
        }
        out.len() - start
    }
}

#[inline(never)]
fn wide_entity(bytes: &mut Vec<u8>, id_gap: u32, a: i32, b: i32) {
    put_varint(bytes, u64::from(id_gap));
    put_signed(bytes, a);
    put_signed(bytes, b);
}

/// A snapshot body written by a [`SnapshotEncoder`], sent as a [`Snapshot`].
#[derive(Debug, Clone, Copy)]
pub struct SnapshotBody<'a>(pub &'a [u8]);

impl EncodeAs<Snapshot> for SnapshotBody<'_> {
    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.extend_from_slice(self.0);
        Ok(())
    }
}

/// Encoded size of an unsigned integer in the codec's varint encoding.
pub const fn varint_len(value: u64) -> usize {
    if value < 251 {
        1
    } else if value <= u16::MAX as u64 {
        3
    } else if value <= u32::MAX as u64 {
        5
    } else {
        9
    }
}

/// Encoded size of a signed integer (zigzag, then varint).
pub const fn signed_varint_len(value: i32) -> usize {
    varint_len(zigzag(value) as u64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{decode, encode};

    #[test]
    fn quantization_error_is_at_most_half_a_unit() {
        for &v in &[0.0f32, 0.01, -0.01, 1.0 / 64.0, 123.456, -999.99] {
            let back = dequantize(quantize(Vec2::splat(v)));
            assert!((back.x - v).abs() <= 0.5 / POSITION_UNITS_PER_METRE + 1e-4);
        }
        assert_eq!(quantize(Vec2::new(f32::NAN, f32::INFINITY)), IVec2::ZERO);
        assert_eq!(quantize(Vec2::splat(1e30)), IVec2::splat(i32::MAX));
        assert_eq!(quantize(Vec2::splat(f32::MAX)), IVec2::splat(i32::MAX));
        assert_eq!(quantize(Vec2::splat(f32::MIN)), IVec2::splat(i32::MIN));
    }

    fn snapshots() -> impl Strategy<Value = Snapshot> {
        // Values around every varint width boundary.
        let u = prop_oneof![0u32..300, 60_000u32..70_000, any::<u32>()];
        let i = prop_oneof![-300i32..300, -70_000i32..70_000, any::<i32>()];
        let entry = (u.clone(), i.clone(), i);
        (
            (u.clone(), u.clone(), u.clone(), u.clone(), u.clone()),
            proptest::collection::vec(u, 0..300),
            proptest::collection::vec(entry.clone(), 0..20),
            proptest::collection::vec(entry, 0..20),
        )
            .prop_map(
                |((tick, baseline_age, last_input, you, id_base), removed, added, moved)| {
                    Snapshot {
                        tick,
                        baseline_age,
                        last_input,
                        you,
                        id_base,
                        removed,
                        added: added
                            .into_iter()
                            .map(|(id_gap, x, y)| EntityAdded { id_gap, x, y })
                            .collect(),
                        moved: moved
                            .into_iter()
                            .map(|(id_gap, dx, dy)| EntityMoved { id_gap, dx, dy })
                            .collect(),
                    }
                },
            )
    }

    #[test]
    fn an_encoder_appends_a_body_from_interleaved_lists_and_starts_over_when_cleared() {
        let mut e = SnapshotEncoder::default();
        e.moved(9, 0, 0);
        e.clear();
        e.moved(3, 1, -1);
        e.removed(1);
        e.added(2, -1, 300);
        e.moved(4, 0, 70_000);
        let header = SnapshotHeader {
            tick: 5,
            baseline_age: 1,
            last_input: 4,
            you: 2,
            id_base: 1,
        };
        let mut out = vec![7];
        let len = e.write(&header, &mut out);
        assert_eq!(out.len(), 1 + len);
        assert_eq!(len, header.encoded_len() + e.lists_len());
        let snapshot = Snapshot::decode_body(&out[1..]).unwrap();
        assert_eq!(snapshot.header(), header);
        assert_eq!(snapshot.removed, [1]);
        assert_eq!(
            snapshot.added,
            [EntityAdded {
                id_gap: 2,
                x: -1,
                y: 300
            }]
        );
        assert_eq!(
            snapshot.moved,
            [
                EntityMoved {
                    id_gap: 3,
                    dx: 1,
                    dy: -1
                },
                EntityMoved {
                    id_gap: 4,
                    dx: 0,
                    dy: 70_000
                }
            ]
        );
    }

    #[test]
    fn a_reserved_encoder_holds_its_widest_entries_without_growing() {
        let mut e = SnapshotEncoder::default();
        e.moved(1, 0, 0);
        e.reserve(8);
        let reserved = e.heap_bytes();
        for _ in 0..3 {
            e.clear();
            for _ in 0..8 {
                e.removed(u32::MAX);
                e.added(u32::MAX, i32::MIN, i32::MAX);
                e.moved(u32::MAX, i32::MIN, i32::MAX);
            }
            e.reserve(8);
            assert_eq!(e.heap_bytes(), reserved);
        }
    }

    /// A body of `moved` entries of one byte per value, to reach bincode's
    /// size limit (which counts 4 bytes per value read).
    fn long_body(moved: usize) -> Vec<u8> {
        let snapshot = Snapshot {
            tick: 1,
            moved: vec![
                EntityMoved {
                    id_gap: 1,
                    dx: 0,
                    dy: 0
                };
                moved
            ],
            ..Snapshot::default()
        };
        let mut body = Vec::new();
        snapshot.encode_body(&mut body).unwrap();
        body
    }

    /// A server may send a delta that removes a whole view of the largest
    /// size and adds another (every entity left, as many came); the client
    /// must decode it, however short its encoding.
    #[test]
    fn the_largest_delta_a_server_may_send_decodes() {
        use crate::movement::MAX_SNAPSHOT_ENTITIES;
        let snapshot = Snapshot {
            tick: 2,
            baseline_age: 1,
            removed: vec![1; MAX_SNAPSHOT_ENTITIES],
            added: vec![
                EntityAdded {
                    id_gap: 1,
                    x: 0,
                    y: 0
                };
                MAX_SNAPSHOT_ENTITIES
            ],
            ..Snapshot::default()
        };
        let bytes = encode(&snapshot).unwrap();
        assert_eq!(decode::<Snapshot>(&bytes).unwrap(), snapshot);
    }

    #[test]
    fn the_hand_written_decoder_stops_at_bincodes_limit() {
        use crate::protocol::MAX_MESSAGE_BYTES;
        use crate::protocol::codec::bincode_decode_body;
        // Counted: 5 head values and 3 entry values each at 4 bytes, three
        // list lengths at 8.
        let largest = (MAX_MESSAGE_BYTES - 5 * 4 - 3 * 8) / 12;
        for (moved, fits) in [(largest, true), (largest + 1, false)] {
            let body = long_body(moved);
            assert_eq!(
                bincode_decode_body::<Snapshot>(&body).is_ok(),
                fits,
                "{moved}"
            );
            assert_eq!(Snapshot::decode_body(&body).is_ok(), fits, "{moved}");
        }
    }

    proptest! {
        #[test]
        fn the_hand_written_encoder_writes_what_bincode_writes(snapshot in snapshots()) {
            let mut by_hand = Vec::new();
            snapshot.encode_body(&mut by_hand).unwrap();
            let mut by_bincode = Vec::new();
            crate::protocol::codec::bincode_body(&snapshot, &mut by_bincode).unwrap();
            prop_assert_eq!(&by_hand, &by_bincode);
            let bytes = encode(&snapshot).unwrap();
            prop_assert_eq!(decode::<Snapshot>(&bytes).unwrap(), snapshot);
        }

        #[test]
        fn the_hand_written_decoder_reads_what_bincode_reads(
            snapshot in snapshots(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..4),
        ) {
            let mut body = Vec::new();
            snapshot.encode_body(&mut body).unwrap();
            prop_assert_eq!(&Snapshot::decode_body(&body).unwrap(), &snapshot);
            // Damaged bodies: both decoders agree on every one.
            for (at, byte, how) in edits {
                let len = body.len();
                match how {
                    0 if len > 0 => body[at.index(len)] = byte,
                    1 => body.insert(at.index(len + 1), byte),
                    2 if len > 0 => body.truncate(at.index(len)),
                    _ => body.push(byte),
                }
                let by_bincode = crate::protocol::codec::bincode_decode_body::<Snapshot>(&body);
                prop_assert_eq!(Snapshot::decode_body(&body).ok(), by_bincode.ok());
            }
        }

        /// A snapshot decoded into one that held another is the one
        /// decoded afresh: nothing of the old lists survives.
        #[test]
        fn decoding_into_a_used_snapshot_leaves_nothing_of_it(
            old in snapshots(),
            snapshot in snapshots(),
        ) {
            let payload = encode(&snapshot).unwrap();
            let mut reused = old;
            reused.decode_from(&payload).unwrap();
            prop_assert_eq!(&reused, &snapshot);
            let mut wrong = payload.to_vec();
            wrong[0] ^= 1;
            prop_assert!(reused.decode_from(&wrong).is_err());
        }

        #[test]
        fn any_bytes_decode_alike(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let by_bincode = crate::protocol::codec::bincode_decode_body::<Snapshot>(&body);
            prop_assert_eq!(Snapshot::decode_body(&body).ok(), by_bincode.ok());
        }

        #[test]
        fn a_header_takes_its_encoded_len(fields in any::<[u32; 5]>()) {
            let [tick, baseline_age, last_input, you, id_base] = fields;
            let header = SnapshotHeader { tick, baseline_age, last_input, you, id_base };
            let mut body = Vec::new();
            // Three empty lists: one byte each.
            let len = SnapshotEncoder::default().write(&header, &mut body);
            prop_assert_eq!(len, header.encoded_len() + 3);
            prop_assert_eq!(Snapshot::decode_body(&body).unwrap().header(), header);
        }

        #[test]
        fn size_functions_match_the_codec(a in any::<u32>(), b in any::<i32>(), c in any::<i32>()) {
            let snapshot = Snapshot {
                tick: a,
                moved: vec![EntityMoved { id_gap: a, dx: b, dy: c }],
                ..Snapshot::default()
            };
            let bytes = encode(&snapshot).unwrap();
            // id + 4 one-byte zeros (age, last_input, you, id_base) + 3 list lengths.
            let expected = 2 + varint_len(a.into()) + 4 + 3
                + varint_len(a.into()) + signed_varint_len(b) + signed_varint_len(c);
            prop_assert_eq!(bytes.len(), expected);
            prop_assert_eq!(decode::<Snapshot>(&bytes).unwrap(), snapshot);
        }
    }
}
