//! Inventory messages ([`INVENTORY`](super::channels::INVENTORY), reliable
//! and ordered). Ids 3xx.
//!
//! Every [`InventoryRequest`] carries a client-chosen `request_id`; the
//! server answers each with one [`InventoryReply`] holding the same id and
//! either the new state or an error. A request id the server has already
//! applied is not applied again: the original reply is sent again (ids of
//! changes are remembered per account, the most recent
//! [`REMEMBERED_REQUESTS`], across restarts; ids of read-only requests and
//! refusals, apart from those, the most recent as many, for the rest of the
//! session). A client keeps at most [`MAX_PENDING_REQUESTS`] requests
//! unanswered (half of those remembered): the ids it sends again after a
//! reconnect are then all still remembered if they were applied, however
//! many replies the dropped connection lost. Every reply, read-only ones
//! included, is sent only once the server's batch holding it is durably
//! stored; if that fails the reply is [`InventoryError::Storage`] and the id
//! is not remembered (sending it again is a new request). Two answers come
//! at once instead, as they change nothing: [`InventoryError::Busy`] and
//! [`InventoryError::BadOffer`] (and a busy server answers the repeated id
//! of a stored change with its remembered reply at once too, rather than
//! busy, and queues the repeated id of a request it still holds, waiting
//! or being stored, past its bounds to answer it with that request's
//! reply: one such repeat at a time, a further copy being answered busy
//! meanwhile; busy, like every busy answer, means "not answered, send it
//! again with the same id"). A session that ends before its replies are
//! sent receives none of them.
//!
//! Changes a player did not ask for (a gift, the other side of a trade)
//! arrive as [`InventoryUpdate`]s; trade progress as [`TradeUpdate`]s.
//! [`InventoryTracker`] keeps a client's view consistent.
//!
//! Trades live only as long as both sessions: a disconnect (or a server
//! restart) ends every trade of the player, and updates meant for an
//! ended session are not sent to the next one. So a trade request sent
//! again after reconnecting may get its original reply (`Ok`, naming a
//! trade) although that trade has ended since, cancelled or completed: a
//! client that reconnects should take every trade of its earlier session
//! as over, and read its inventory (`List`) to see which way it went.

use serde::{Deserialize, Deserializer, Serialize};

use super::NetMessage;

/// Reads a list without reserving room for more than `reserve` entries up
/// front: serde would reserve for whatever length the wire claims (up to
/// 1 MiB a list) before finding the bytes missing. Longer lists still
/// decode, growing with the entries really there, so that the receiver
/// can refuse them with a clear error of its own.
fn capped_list<'de, D, T>(deserializer: D, reserve: usize) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct List<T> {
        reserve: usize,
        entries: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for List<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.reserve));
            while let Some(entry) = seq.next_element()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_seq(List {
        reserve,
        entries: std::marker::PhantomData,
    })
}

fn slot_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<ItemStack>>, D::Error> {
    capped_list(d, MAX_SLOTS)
}

fn trade_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u16, u32)>, D::Error> {
    capped_list(d, MAX_TRADE_SLOTS)
}

fn offered_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OfferedStack>, D::Error> {
    capped_list(d, MAX_TRADE_SLOTS)
}

fn world_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<WorldItem>, D::Error> {
    capped_list(d, MAX_LISTED_WORLD_ITEMS)
}

/// Most slots an inventory may have; the server's own size is at most this.
pub const MAX_SLOTS: usize = 64;
/// Most slots one side may put into a trade offer.
pub const MAX_TRADE_SLOTS: usize = 16;
/// Most world items listed in one [`WorldItems`] reply.
pub const MAX_LISTED_WORLD_ITEMS: usize = 256;
/// How many applied request ids the server remembers per account.
pub const REMEMBERED_REQUESTS: usize = 256;
/// Most requests a client keeps unanswered ([`InventoryTracker`] refuses
/// more): applied ones whose replies a dropped connection lost are then
/// among the newest the server remembers, and sent again after a
/// reconnect, are answered, not applied again.
pub const MAX_PENDING_REQUESTS: usize = REMEMBERED_REQUESTS / 2;

/// An item type, from the catalogue (`assets/items.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemId(pub u32);

/// Some items of one type in one slot; `count` is at least 1 and at most
/// the item's max stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemStack {
    /// What.
    pub item: ItemId,
    /// How many.
    pub count: u32,
}

/// A player's inventory as the server has it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InventorySnapshot {
    /// Increases by one with every committed change; never goes back.
    pub version: u64,
    /// One entry per slot.
    #[serde(deserialize_with = "slot_list")]
    pub slots: Vec<Option<ItemStack>>,
}

/// One side of a trade: slots and how many of each to give.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TradeOffer {
    /// `(slot, count)` pairs, at most [`MAX_TRADE_SLOTS`], slots distinct.
    #[serde(deserialize_with = "trade_list")]
    pub items: Vec<(u16, u32)>,
}

/// One entry of an offer as the server holds it: the slot it comes from
/// and what it gives from there. The item is the one the slot held when
/// offered; if the slot no longer holds that many of it at the swap, the
/// trade fails rather than give anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedStack {
    /// The giving side's slot.
    pub slot: u16,
    /// The item and how many of it.
    pub stack: ItemStack,
}

/// What a client asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryOp {
    /// Send me my inventory.
    List,
    /// List the items lying in the world (answered with [`WorldItems`] and
    /// then the reply; an id sent again in the session gets the remembered
    /// reply alone).
    ListWorld,
    /// Pick up a world item (whole, or as much as fits is refused: all or
    /// nothing).
    PickUp {
        /// The world item's id.
        world_item: u64,
    },
    /// Drop `count` from a slot into the world at the player's position.
    Drop {
        /// The slot.
        slot: u16,
        /// How many.
        count: u32,
    },
    /// Move `count` from one slot to another: a move to an empty slot, a
    /// split (less than the whole stack), a merge onto the same item, or a
    /// swap of two whole stacks of different items. Part of a stack onto
    /// another item is refused ([`InventoryError::SlotTaken`]), as is a
    /// move onto its own slot ([`InventoryError::SameSlot`]).
    Move {
        /// From.
        from: u16,
        /// To.
        to: u16,
        /// How many (the whole stack for a swap).
        count: u32,
    },
    /// Use (consume) one item from a slot; only consumable items.
    Use {
        /// The slot.
        slot: u16,
    },
    /// Give `count` from a slot to another online player.
    Give {
        /// The recipient's account id.
        to: u64,
        /// The slot.
        slot: u16,
        /// How many.
        count: u32,
    },
    /// Open a trade with another online player, or replace my side of our
    /// open trade; resets both acceptances. Opening one cancels my other
    /// open trade, if any; a player already trading with someone else, or
    /// drawn into another new trade in the same batch of the server's (a
    /// tick, or several while the last batch is being stored), is refused
    /// ([`InventoryError::PartnerBusy`]), their trade untouched.
    Offer {
        /// The other player's account id.
        with: u64,
        /// What I give.
        offer: TradeOffer,
    },
    /// Accept the trade as it stood at `revision`; when both sides have
    /// accepted, the swap happens atomically. Refused with
    /// [`InventoryError::TradeChanged`] when an offer changed the trade
    /// since: an acceptance is only ever of offers the player saw.
    Accept {
        /// The trade.
        trade: u64,
        /// The [`TradeUpdate::revision`] accepted.
        revision: u64,
    },
    /// Cancel the trade.
    Cancel {
        /// The trade.
        trade: u64,
    },
}

/// Client → server: an inventory operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRequest {
    /// Chosen by the client; a repeated id is answered, not re-applied.
    pub request_id: u64,
    /// What to do.
    pub op: InventoryOp,
}

impl NetMessage for InventoryRequest {
    const ID: u16 = 300;
}

/// Why an operation failed. Nothing changed, except that a
/// [`TradeFailed`](Self::TradeFailed) trade is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InventoryError {
    /// No such slot.
    #[error("no such slot")]
    BadSlot,
    /// The slot is empty.
    #[error("the slot is empty")]
    EmptySlot,
    /// A count of zero, or more than the slot holds.
    #[error("bad count")]
    BadCount,
    /// Not enough room.
    #[error("not enough room in the inventory")]
    NoRoom,
    /// No such world item (already picked up?).
    #[error("no such item in the world")]
    NoSuchWorldItem,
    /// The world item is out of reach.
    #[error("too far away")]
    TooFar,
    /// The world is full; nothing can be dropped now.
    #[error("the world is full")]
    WorldFull,
    /// The item cannot be used; or it is one the server's catalogue no
    /// longer defines (retired), which stays where it is: it cannot be
    /// used, dropped, given or offered either.
    #[error("this item cannot be used")]
    NotUsable,
    /// The other player is not online (or is yourself).
    #[error("no such player online")]
    UnknownPlayer,
    /// No such open trade, or not yours.
    #[error("no such trade")]
    NoSuchTrade,
    /// A malformed trade offer (too many slots, repeated slots).
    #[error("bad trade offer")]
    BadOffer,
    /// The trade cannot complete: a side no longer has what it offered, or
    /// does not have the room for what it receives. The trade is cancelled.
    #[error("the trade cannot be completed")]
    TradeFailed,
    /// Too many requests waiting; retry with the same id later.
    #[error("busy, retry later")]
    Busy,
    /// The change could not be stored; nothing changed. Retry with the
    /// same id.
    #[error("storage failure")]
    Storage,
    /// An `Accept` of a revision the trade has left: an offer changed it
    /// since the player looked. Nothing is accepted.
    #[error("the trade changed; look again and accept again")]
    TradeChanged,
    /// An `Offer` to a player who is trading with someone else, or whom
    /// another offer drew into a new trade in the same batch of the
    /// server's.
    #[error("that player is busy trading; try again in a moment")]
    PartnerBusy,
    /// A `Move` onto the slot it starts from.
    #[error("that is the same slot")]
    SameSlot,
    /// A `Move` of part of a stack onto a slot holding another item (only
    /// whole stacks swap).
    #[error("that slot holds another item; move the whole stack to swap")]
    SlotTaken,
}

/// Server → client: the answer to one [`InventoryRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReply {
    /// The request's id.
    pub request_id: u64,
    /// The inventory after the operation, or why it failed.
    pub result: Result<InventorySnapshot, InventoryError>,
    /// The trade's id when an `Offer`, `Accept` or `Cancel` succeeded;
    /// `None` for every other reply.
    pub trade: Option<u64>,
}

impl NetMessage for InventoryReply {
    const ID: u16 = 301;
}

/// Server → client: the inventory changed without a request of the
/// recipient (a gift, a trade the other side completed). A failed commit
/// sends none: it restores the state the recipient already has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryUpdate {
    /// The new state.
    pub inventory: InventorySnapshot,
}

impl NetMessage for InventoryUpdate {
    const ID: u16 = 302;
}

/// Where a trade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TradeState {
    /// Open; offers and acceptances so far.
    Open {
        /// Whether the initiator has accepted.
        initiator_accepted: bool,
        /// Whether the other side has accepted.
        partner_accepted: bool,
    },
    /// Swapped.
    Completed,
    /// Cancelled by a side or by a disconnect, or failed.
    Cancelled,
}

/// Server → both sides: a trade changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeUpdate {
    /// The trade.
    pub trade: u64,
    /// Which version of the offers this is: 1 when the trade opens, one
    /// more with every `Offer` of either side (which also resets both
    /// acceptances). An [`InventoryOp::Accept`] names the revision it
    /// accepts.
    pub revision: u64,
    /// Who opened it.
    pub initiator: u64,
    /// The other side.
    pub partner: u64,
    /// What the initiator gives (at most [`MAX_TRADE_SLOTS`] entries).
    #[serde(deserialize_with = "offered_list")]
    pub initiator_offer: Vec<OfferedStack>,
    /// What the partner gives (at most [`MAX_TRADE_SLOTS`] entries).
    #[serde(deserialize_with = "offered_list")]
    pub partner_offer: Vec<OfferedStack>,
    /// Its state.
    pub state: TradeState,
}

impl NetMessage for TradeUpdate {
    const ID: u16 = 303;
}

/// An item lying in the world.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorldItem {
    /// Its id, for [`InventoryOp::PickUp`].
    pub id: u64,
    /// What and how many.
    pub stack: ItemStack,
    /// Where, in metres.
    pub position: glam::Vec2,
}

/// Server → client: world items (at most [`MAX_LISTED_WORLD_ITEMS`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldItems {
    /// The items.
    #[serde(deserialize_with = "world_list")]
    pub items: Vec<WorldItem>,
}

impl NetMessage for WorldItems {
    const ID: u16 = 304;
}

/// What a client's view of its inventory noticed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// A reply to a request id that is not pending.
    #[error("reply to request {0}, which is not pending")]
    UnexpectedReply(u64),
    /// Two states with the same version but different contents.
    #[error("two different inventories with version {0}")]
    Diverged(u64),
    /// [`MAX_PENDING_REQUESTS`] requests are unanswered: wait for replies.
    #[error("{MAX_PENDING_REQUESTS} inventory requests are waiting for replies")]
    TooManyPending,
    /// The request ids ran out (the next would be past `u64::MAX - 1`):
    /// wrapping round would repeat ids the server has answered, and it
    /// would answer again instead of applying.
    #[error("no inventory request ids are left")]
    IdsExhausted,
}

/// Client side: pending requests and the newest inventory seen, checked
/// for consistency: one version, one content; an older state never
/// replaces a newer one (it arrives legitimately: the stored reply to a
/// request id sent again, an update overtaken by a later reply), and is
/// not an error.
#[derive(Debug, Clone, Default)]
pub struct InventoryTracker {
    next_request: u64,
    pending: std::collections::BTreeMap<u64, InventoryOp>,
    inventory: Option<InventorySnapshot>,
}

impl InventoryTracker {
    /// A tracker whose request ids start after `first - 1`; use a fresh
    /// range per session if request ids must not repeat across sessions.
    pub fn starting_at(first: u64) -> Self {
        Self {
            next_request: first,
            ..Self::default()
        }
    }

    /// Builds a request with the next id and records it as pending.
    ///
    /// # Errors
    /// [`TrackerError::TooManyPending`] with [`MAX_PENDING_REQUESTS`]
    /// pending: more could not all be told apart from new ones after a
    /// reconnect, and would be applied again.
    /// [`TrackerError::IdsExhausted`] once the ids reach `u64::MAX`.
    pub fn request(&mut self, op: InventoryOp) -> Result<InventoryRequest, TrackerError> {
        if self.pending.len() >= MAX_PENDING_REQUESTS {
            return Err(TrackerError::TooManyPending);
        }
        let request_id = self.next_request;
        self.next_request = request_id
            .checked_add(1)
            .ok_or(TrackerError::IdsExhausted)?;
        self.pending.insert(request_id, op.clone());
        Ok(InventoryRequest { request_id, op })
    }

    /// Requests sent and not answered yet, oldest first (to resend with
    /// the same ids after a reconnect).
    pub fn pending(&self) -> impl Iterator<Item = InventoryRequest> + '_ {
        self.pending
            .iter()
            .map(|(&request_id, op)| InventoryRequest {
                request_id,
                op: op.clone(),
            })
    }

    /// The newest inventory seen.
    pub fn inventory(&self) -> Option<&InventorySnapshot> {
        self.inventory.as_ref()
    }

    /// Applies a reply; returns the op it answers.
    ///
    /// A [`Busy`](InventoryError::Busy) or [`Storage`](InventoryError::Storage)
    /// answer leaves the request pending: it was not applied yet, but may
    /// still be (a copy sent before a reconnect may be queued behind a slow
    /// commit), so it must be retried with the same id ([`pending`](Self::pending)
    /// lists it) or given up with [`forget`](Self::forget): the same op
    /// under a new id could be applied twice.
    ///
    /// # Errors
    /// [`TrackerError`] when the reply is unexpected or inconsistent.
    pub fn on_reply(&mut self, reply: &InventoryReply) -> Result<InventoryOp, TrackerError> {
        let retry = matches!(
            reply.result,
            Err(InventoryError::Busy | InventoryError::Storage)
        );
        let op = if retry {
            self.pending.get(&reply.request_id).cloned()
        } else {
            self.pending.remove(&reply.request_id)
        }
        .ok_or(TrackerError::UnexpectedReply(reply.request_id))?;
        if let Ok(snapshot) = &reply.result {
            self.observe(snapshot)?;
        }
        Ok(op)
    }

    /// Gives up a pending request (one answered `Busy` or `Storage` that
    /// will not be retried); returns its op.
    pub fn forget(&mut self, request_id: u64) -> Option<InventoryOp> {
        self.pending.remove(&request_id)
    }

    /// Applies a pushed update.
    ///
    /// # Errors
    /// [`TrackerError`] when it is inconsistent with what was seen.
    pub fn on_update(&mut self, update: &InventoryUpdate) -> Result<(), TrackerError> {
        self.observe(&update.inventory)
    }

    fn observe(&mut self, snapshot: &InventorySnapshot) -> Result<(), TrackerError> {
        match &self.inventory {
            Some(seen) if snapshot.version < seen.version => {
                // An old reply re-sent for a repeated request id: fine as
                // long as it does not replace the newer state.
                Ok(())
            }
            Some(seen) if snapshot.version == seen.version && snapshot != seen => {
                Err(TrackerError::Diverged(snapshot.version))
            }
            _ => {
                self.inventory = Some(snapshot.clone());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64, count: u32) -> InventorySnapshot {
        InventorySnapshot {
            version,
            slots: vec![Some(ItemStack {
                item: ItemId(1),
                count,
            })],
        }
    }

    #[test]
    fn the_tracker_matches_replies_and_keeps_the_newest_state() {
        let mut tracker = InventoryTracker::starting_at(10);
        let request = tracker.request(InventoryOp::List).unwrap();
        assert_eq!(request.request_id, 10);
        assert_eq!(tracker.pending().count(), 1);
        let reply = InventoryReply {
            request_id: 10,
            result: Ok(snapshot(3, 2)),
            trade: None,
        };
        assert_eq!(tracker.on_reply(&reply), Ok(InventoryOp::List));
        assert_eq!(
            tracker.on_reply(&reply),
            Err(TrackerError::UnexpectedReply(10))
        );
        tracker
            .on_update(&InventoryUpdate {
                inventory: snapshot(2, 9),
            })
            .unwrap();
        assert_eq!(tracker.inventory(), Some(&snapshot(3, 2)), "older kept out");
        assert_eq!(
            tracker.on_update(&InventoryUpdate {
                inventory: snapshot(3, 5)
            }),
            Err(TrackerError::Diverged(3))
        );
    }

    /// A request answered `Busy` or `Storage` stays pending, to be retried
    /// with its id (a copy queued before a reconnect may still apply: the
    /// same op under a new id could apply twice), until answered for good
    /// or forgotten.
    #[test]
    fn busy_and_storage_answers_leave_the_request_pending() {
        let mut tracker = InventoryTracker::starting_at(1);
        for error in [InventoryError::Busy, InventoryError::Storage] {
            let op = InventoryOp::PickUp { world_item: 7 };
            let request = tracker.request(op.clone()).unwrap();
            let answer = |result| InventoryReply {
                request_id: request.request_id,
                result,
                trade: None,
            };
            assert_eq!(tracker.on_reply(&answer(Err(error))), Ok(op.clone()));
            let pending: Vec<_> = tracker.pending().map(|p| p.request_id).collect();
            assert_eq!(pending, [request.request_id], "{error:?}");
            assert_eq!(
                tracker.on_reply(&answer(Ok(snapshot(request.request_id, 1)))),
                Ok(op)
            );
            assert_eq!(tracker.pending().count(), 0);
        }
        let request = tracker.request(InventoryOp::List).unwrap();
        let busy = InventoryReply {
            request_id: request.request_id,
            result: Err(InventoryError::Busy),
            trade: None,
        };
        tracker.on_reply(&busy).unwrap();
        assert_eq!(tracker.forget(request.request_id), Some(InventoryOp::List));
        assert_eq!(tracker.pending().count(), 0);
    }

    /// Request ids end before they would wrap round to ones the server
    /// answered already (it panicked in a debug build, and wrapped to 0 in
    /// a release one).
    #[test]
    fn request_ids_end_before_they_wrap() {
        let mut tracker = InventoryTracker::starting_at(u64::MAX - 1);
        let last = tracker.request(InventoryOp::List).unwrap();
        assert_eq!(last.request_id, u64::MAX - 1);
        assert_eq!(
            tracker.request(InventoryOp::List),
            Err(TrackerError::IdsExhausted)
        );
        assert_eq!(tracker.pending().count(), 1);
    }

    /// The tracker keeps at most [`MAX_PENDING_REQUESTS`] unanswered, and
    /// takes another once one is answered.
    #[test]
    fn the_tracker_refuses_more_pending_requests_than_it_may_send_again() {
        let mut tracker = InventoryTracker::starting_at(1);
        for _ in 0..MAX_PENDING_REQUESTS {
            tracker.request(InventoryOp::List).unwrap();
        }
        assert_eq!(
            tracker.request(InventoryOp::List),
            Err(TrackerError::TooManyPending)
        );
        assert_eq!(tracker.pending().count(), MAX_PENDING_REQUESTS);
        let answer = InventoryReply {
            request_id: 1,
            result: Ok(snapshot(1, 1)),
            trade: None,
        };
        tracker.on_reply(&answer).unwrap();
        let next = tracker.request(InventoryOp::List).unwrap();
        assert_eq!(next.request_id, MAX_PENDING_REQUESTS as u64 + 1);
    }

    #[test]
    fn inventory_messages_round_trip_through_the_codec() {
        let reply = InventoryReply {
            request_id: u64::MAX,
            result: Err(InventoryError::NoRoom),
            trade: Some(4),
        };
        let bytes = crate::protocol::encode(&reply).unwrap();
        assert_eq!(
            crate::protocol::decode::<InventoryReply>(&bytes).unwrap(),
            reply
        );
        let request = InventoryRequest {
            request_id: 1,
            op: InventoryOp::Offer {
                with: 2,
                offer: TradeOffer {
                    items: vec![(0, 1), (3, 7)],
                },
            },
        };
        let bytes = crate::protocol::encode(&request).unwrap();
        assert_eq!(
            crate::protocol::decode::<InventoryRequest>(&bytes).unwrap(),
            request
        );
    }
}
