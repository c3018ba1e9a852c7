//! Decoding a message from the other side reserves no more memory than its
//! bytes can fill, whatever lengths it claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shared::protocol::inventory::{InventoryOp, InventoryRequest, TradeUpdate};
use shared::protocol::{self, NetMessage};

/// The system allocator, remembering the largest block each thread asked
/// for (per thread: the tests run side by side, and one resetting a shared
/// record could hide the other's allocation).
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The largest block this thread asked for since the last call.
fn take_largest() -> usize {
    LARGEST.with(|largest| largest.replace(0))
}

#[expect(unsafe_code, reason = "a global allocator forwarding to System")]
// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: a thread's last allocations may come after its
        // thread-locals are gone.
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(layout.size())));
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

#[test]
fn a_forged_list_length_reserves_nothing_for_it() {
    // A trade offer whose item list claims 4,294,967,295 entries and
    // holds none: id, request 0, Offer, with 0, then the length.
    let mut payload = InventoryRequest::ID.to_le_bytes().to_vec();
    payload.extend_from_slice(&[0x00, 0x07, 0x00, 0xFC, 0xFF, 0xFF, 0xFF, 0xFF]);
    take_largest();
    let decoded = protocol::decode::<InventoryRequest>(&payload);
    let largest = take_largest();
    assert!(decoded.is_err(), "{decoded:?}");
    assert!(
        largest < 64 * 1024,
        "{largest} bytes reserved for a forged length"
    );
    // A real list longer than a trade takes still decodes (the server
    // answers it with a clear error of its own).
    let offer = InventoryRequest {
        request_id: 1,
        op: InventoryOp::Offer {
            with: 2,
            offer: shared::protocol::inventory::TradeOffer {
                items: (0..40).map(|i| (i, 1)).collect(),
            },
        },
    };
    let bytes = protocol::encode(&offer).unwrap();
    assert_eq!(protocol::decode::<InventoryRequest>(&bytes).unwrap(), offer);
}

#[test]
fn a_forged_offer_length_in_a_trade_update_reserves_nothing_for_it() {
    // What a client decodes: trade 0, revision 0, initiator 0, partner 0,
    // then an initiator offer claiming 4,294,967,295 entries and holding
    // none.
    let mut payload = TradeUpdate::ID.to_le_bytes().to_vec();
    payload.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0xFC, 0xFF, 0xFF, 0xFF, 0xFF]);
    take_largest();
    let decoded = protocol::decode::<TradeUpdate>(&payload);
    let largest = take_largest();
    assert!(decoded.is_err(), "{decoded:?}");
    assert!(
        largest < 64 * 1024,
        "{largest} bytes reserved for a forged length"
    );
}
