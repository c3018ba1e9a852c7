//! Applies a sequence of arbitrary snapshots (decoded from the input) to a
//! receiver: never panics, and the view stays within its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::movement::{ApplyScratch, MAX_SNAPSHOT_ENTITIES, SnapshotReceiver};
use shared::protocol::movement::Snapshot;
use shared::protocol::{self, NetMessage};

fuzz_target!(|data: &[u8]| {
    let mut receiver = SnapshotReceiver::new();
    let mut scratch = ApplyScratch::default();
    // A sequence of snapshot bodies, each prefixed by a 2-byte length.
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (body, next) = tail.split_at(len);
        let mut payload = Snapshot::ID.to_le_bytes().to_vec();
        payload.extend_from_slice(body);
        if let Ok(snapshot) = protocol::decode::<Snapshot>(&payload) {
            let _ = receiver.apply(&snapshot, &mut scratch);
            assert!(receiver.entities().len() <= MAX_SNAPSHOT_ENTITIES);
        }
        rest = next;
    }
});
