//! Decodes arbitrary bytes as every message type: never panics, and
//! whatever decodes re-encodes to something that decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::protocol::chat::{ChatLine, ChatRejected, ChatSend};
use shared::protocol::inventory::{
    InventoryReply, InventoryRequest, InventoryUpdate, TradeUpdate, WorldItems,
};
use shared::protocol::messages::{Emote, EmoteRequest, ServerNotice, Welcome};
use shared::protocol::movement::{MoveInput, Snapshot};
use shared::protocol::{self, NetMessage};

fn check<M: NetMessage>(body: &[u8]) {
    let mut payload = M::ID.to_le_bytes().to_vec();
    payload.extend_from_slice(body);
    if let Ok(message) = protocol::decode::<M>(&payload) {
        let again = protocol::encode(&message).unwrap();
        assert!(protocol::decode::<M>(&again).is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    check::<Welcome>(data);
    check::<ServerNotice>(data);
    check::<EmoteRequest>(data);
    check::<Emote>(data);
    check::<MoveInput>(data);
    check::<Snapshot>(data);
    check::<ChatSend>(data);
    check::<ChatLine>(data);
    check::<ChatRejected>(data);
    check::<InventoryRequest>(data);
    check::<InventoryReply>(data);
    check::<InventoryUpdate>(data);
    check::<TradeUpdate>(data);
    check::<WorldItems>(data);
});
