//! Decoding a message from the other side reserves no more memory than its
//! bytes can fill, whatever lengths it claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shared::protocol::chat::{
    ChatKind, ChatLine, ChatRejectReason, ChatRejected, ChatScope, ChatSend,
};
use shared::protocol::inventory::{InventoryOp, InventoryRequest, TradeUpdate};
use shared::protocol::messages::ServerNotice;
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

/// A text the wire says is this long (a 3-byte length: 0xFB, then the
/// length in two bytes, little-endian).
const CLAIMED: usize = 60_000;

/// `message` encoded with a text of [`CLAIMED`] bytes, cut right after
/// that text's length: it claims the bytes, none follow.
fn text_claimed_not_sent<M: NetMessage>(message: &M) -> Vec<u8> {
    let payload = protocol::encode(message).unwrap();
    let claim = [0xFB, CLAIMED as u8, (CLAIMED >> 8) as u8];
    let at = payload
        .windows(3)
        .position(|w| w == claim)
        .expect("the text's length");
    payload[..at + claim.len()].to_vec()
}

/// The largest block decoding `payload` as `M` asked for; it must fail.
fn reserved_decoding<M: NetMessage + std::fmt::Debug>(payload: &[u8]) -> usize {
    take_largest();
    let decoded = protocol::decode::<M>(payload);
    let largest = take_largest();
    assert!(decoded.is_err(), "{decoded:?}");
    largest
}

#[test]
fn a_forged_text_length_reserves_nothing_for_it() {
    let long = "a".repeat(CLAIMED);
    let send = |scope, text: &str| ChatSend {
        client_ref: 0,
        scope,
        text: text.to_owned(),
    };
    let line = |from_name: &str, text: &str| ChatLine {
        seq: 1,
        reply_to: None,
        from: Some(2),
        from_name: from_name.to_owned(),
        kind: ChatKind::Global,
        text: text.to_owned(),
    };
    // What the server decodes, then what a client does.
    let reserved = [
        (
            "ChatSend.text",
            reserved_decoding::<ChatSend>(&text_claimed_not_sent(&send(ChatScope::Global, &long))),
        ),
        (
            "ChatScope::WhisperName",
            reserved_decoding::<ChatSend>(&text_claimed_not_sent(&send(
                ChatScope::WhisperName(long.clone()),
                "hi",
            ))),
        ),
        (
            "ChatLine.from_name",
            reserved_decoding::<ChatLine>(&text_claimed_not_sent(&line(&long, "hi"))),
        ),
        (
            "ChatLine.text",
            reserved_decoding::<ChatLine>(&text_claimed_not_sent(&line("ann", &long))),
        ),
        (
            "ChatRejected.message",
            reserved_decoding::<ChatRejected>(&text_claimed_not_sent(&ChatRejected {
                client_ref: 0,
                reason: ChatRejectReason::TooLong,
                message: long.clone(),
            })),
        ),
        (
            "ServerNotice.text",
            reserved_decoding::<ServerNotice>(&text_claimed_not_sent(&ServerNotice {
                text: long.clone(),
            })),
        ),
    ];
    for (field, largest) in reserved {
        assert!(
            largest < 1024,
            "{field}: {largest} bytes reserved for a text of {CLAIMED} bytes claimed, none sent"
        );
    }
    // Texts that are there still decode.
    let whole = line("ann", &long);
    let bytes = protocol::encode(&whole).unwrap();
    assert_eq!(protocol::decode::<ChatLine>(&bytes).unwrap(), whole);
    let whisper = send(ChatScope::WhisperName("bo".into()), "hi");
    let bytes = protocol::encode(&whisper).unwrap();
    assert_eq!(protocol::decode::<ChatSend>(&bytes).unwrap(), whisper);
}
