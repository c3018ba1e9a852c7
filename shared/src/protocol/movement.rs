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

use super::codec::{VarintReader, VarintWriter};
use super::{DecodeError, EncodeAs, EncodeError, NetMessage};

/// Quantization of positions on the wire: units per metre (1/32 m steps).
pub const POSITION_UNITS_PER_METRE: f32 = 32.0;

/// A world position in metres as it travels: rounded to 1/32 m. Non-finite
/// coordinates become 0 and values beyond the `i32` range saturate.
pub fn quantize(position: Vec2) -> IVec2 {
    let q = |v: f32| {
        let scaled = (v * POSITION_UNITS_PER_METRE).round();
        if scaled.is_finite() {
            // `as` saturates at the i32 range.
            scaled as i32
        } else {
            0
        }
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
    /// The snapshot tick, from 1; echo it in [`MoveInput::ack_snapshot`].
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

    /// Hand-written (every client gets one every tick): the same bytes as
    /// bincode's, several times faster.
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut w = SnapshotWriter::new(
            out,
            &self.header(),
            self.removed.len(),
            self.added.len(),
            self.moved.len(),
        );
        for &gap in &self.removed {
            w.removed(gap);
        }
        for a in &self.added {
            w.added(a.id_gap, a.x, a.y);
        }
        for m in &self.moved {
            w.moved(m.id_gap, m.dx, m.dy);
        }
        w.finish();
        Ok(())
    }

    /// Hand-written too (every client decodes one every tick): accepts
    /// exactly what bincode accepts, with the same values.
    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = VarintReader::new(body);
        let mut head = [0u32; 5];
        for v in &mut head {
            *v = r.unsigned()?;
        }
        let [tick, baseline_age, last_input, you, id_base] = head;
        let removed = r.list(1, VarintReader::unsigned)?;
        // An added or moved entity: id gap, then two signed values.
        let entity = |r: &mut VarintReader<'_>| Ok((r.unsigned()?, r.signed()?, r.signed()?));
        let added = r.list(3, |r| {
            entity(r).map(|(id_gap, x, y)| EntityAdded { id_gap, x, y })
        })?;
        let moved = r.list(3, |r| {
            entity(r).map(|(id_gap, dx, dy)| EntityMoved { id_gap, dx, dy })
        })?;
        r.finish()?;
        Ok(Self {
            tick,
            baseline_age,
            last_input,
            you,
            id_base,
            removed,
            added,
            moved,
        })
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

/// Writes a [`Snapshot`]'s body straight from the caller's data, without
/// building the lists: for a server that encodes one snapshot per client
/// per tick. The lengths of the three lists are given up front; then the
/// entries follow in wire order (every removal, then every addition, then
/// every move), and [`finish`](Self::finish) ends the body.
///
/// Writing more or fewer entries than announced, or out of order, panics:
/// the body would not decode.
pub struct SnapshotWriter<'a> {
    w: VarintWriter<'a>,
    start: usize,
    /// The lengths of the lists: removed, added, moved.
    lens: [usize; 3],
    /// The list being written (3 once every list is done).
    list: usize,
    /// Entries of the current list still to come.
    left: usize,
}

impl<'a> SnapshotWriter<'a> {
    /// Starts a snapshot body at the end of `out`.
    pub fn new(
        out: &'a mut Vec<u8>,
        header: &SnapshotHeader,
        removed: usize,
        added: usize,
        moved: usize,
    ) -> Self {
        let start = out.len();
        let values = 5 + 3 + removed + 3 * (added + moved);
        let mut w = VarintWriter::new(out, values);
        for v in [
            header.tick,
            header.baseline_age,
            header.last_input,
            header.you,
            header.id_base,
        ] {
            w.unsigned(u64::from(v));
        }
        w.unsigned(removed as u64);
        Self {
            w,
            start,
            lens: [removed, added, moved],
            list: 0,
            left: removed,
        }
    }

    /// Counts one entry of list `list`, moving on to it first if needed.
    #[inline(always)]
    fn enter(&mut self, list: usize) {
        if self.list != list || self.left == 0 {
            self.move_to(list);
        }
        self.left -= 1;
    }

    /// Moves on to list `list`, writing the lengths of the lists before it
    /// that are still unwritten.
    #[inline(never)]
    fn move_to(&mut self, list: usize) {
        while self.list < list {
            self.next_list();
        }
        assert!(
            self.list == list && self.left > 0,
            "more entries than announced, or out of order"
        );
    }

    /// The next removed entity's id gap.
    #[inline(always)]
    pub fn removed(&mut self, id_gap: u32) {
        self.enter(0);
        self.w.unsigned(u64::from(id_gap));
    }

    /// The next added entity: its id gap and absolute quantized position.
    #[inline(always)]
    pub fn added(&mut self, id_gap: u32, x: i32, y: i32) {
        self.enter(1);
        self.entity(id_gap, x, y);
    }

    /// The next moved entity: its id gap and quantized displacement.
    #[inline(always)]
    pub fn moved(&mut self, id_gap: u32, dx: i32, dy: i32) {
        self.enter(2);
        self.entity(id_gap, dx, dy);
    }

    #[inline(always)]
    fn entity(&mut self, id_gap: u32, a: i32, b: i32) {
        self.w.unsigned(u64::from(id_gap));
        self.w.signed(a);
        self.w.signed(b);
    }

    /// Ends the body; returns its length in bytes.
    pub fn finish(mut self) -> usize {
        while self.list < self.lens.len() {
            self.next_list();
        }
        self.w.len() - self.start
    }

    /// Ends the current list and writes the next one's length.
    fn next_list(&mut self) {
        assert_eq!(self.left, 0, "fewer entries than announced");
        self.list += 1;
        if let Some(&len) = self.lens.get(self.list) {
            self.w.unsigned(len as u64);
            self.left = len;
        }
    }
}

/// A snapshot body written by a [`SnapshotWriter`], sent as a [`Snapshot`].
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
    let zigzag = ((value << 1) ^ (value >> 31)) as u32;
    varint_len(zigzag as u64)
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

    fn writer_with_one_of_each(out: &mut Vec<u8>) -> SnapshotWriter<'_> {
        SnapshotWriter::new(out, &SnapshotHeader::default(), 1, 1, 1)
    }

    #[test]
    #[should_panic(expected = "fewer entries than announced")]
    fn a_writer_refuses_to_end_a_list_early() {
        let mut out = Vec::new();
        let mut w = writer_with_one_of_each(&mut out);
        w.removed(1);
        w.moved(1, 0, 0);
    }

    #[test]
    #[should_panic(expected = "more entries than announced, or out of order")]
    fn a_writer_refuses_to_go_back_to_a_list() {
        let mut out = Vec::new();
        let mut w = writer_with_one_of_each(&mut out);
        w.removed(1);
        w.added(1, 0, 0);
        w.removed(2);
    }

    #[test]
    fn a_writer_appends_a_body_and_trims_its_reserve() {
        let mut out = vec![7];
        let mut w = writer_with_one_of_each(&mut out);
        w.removed(1);
        w.added(2, -1, 300);
        w.moved(3, 1, -1);
        let len = w.finish();
        assert_eq!(out.len(), 1 + len);
        let snapshot = Snapshot::decode_body(&out[1..]).unwrap();
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
            [EntityMoved {
                id_gap: 3,
                dx: 1,
                dy: -1
            }]
        );
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

        #[test]
        fn any_bytes_decode_alike(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let by_bincode = crate::protocol::codec::bincode_decode_body::<Snapshot>(&body);
            prop_assert_eq!(Snapshot::decode_body(&body).ok(), by_bincode.ok());
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
