//! The inventory behaviour of one bot: which request to send next, how to
//! react to trades, and the exactly-one-reply check.
//!
//! Plain data, no socket and no clock reads: the bot passes `now`, its
//! position and random draws, and sends what this returns.
//!
//! - **pick**: `ListWorld` when the bot's list of world items is missing or
//!   older than [`WORLD_LIST_MAX_AGE`]; otherwise choose one of the nearest
//!   items as a target, walk to it ([`InventoryBehaviour::seek`] steers the
//!   wander behaviour) and send `PickUp` once within [`PICKUP_REACH`].
//! - **drop**, **move**, **use**, **give**: on a random occupied slot of
//!   the last inventory the server sent (a `List` first when there is none
//!   yet). Items the server answered `NotUsable` for are not used again.
//! - **trade**: `Offer` one item to another bot. The partner, on the
//!   `TradeUpdate`, counter-offers one of its items and accepts the trade
//!   once the update showing its counter-offer arrives; the initiator
//!   accepts once it sees the partner's acceptance. Every accept names the
//!   revision of the update it reacts to (the server refuses it with
//!   `TradeChanged` when an offer changed the trade since); the server
//!   swaps both sides atomically.
//!
//! Every request goes through a [`InventoryTracker`] (request ids from a
//! per-session range, see [`InventoryBehaviour::new`]): each reply must
//! answer a pending request, once. Replies to nothing pending are
//! `unexpected`; requests still pending when the connection ends (after the
//! bot's bounded drain) are `lost`. Every state the server sends is also
//! checked against the newest one the bot's earlier sessions were sent
//! ([`InventoryHistory`]): an older one is `regressed`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use glam::Vec2;
use serde::Serialize;
use shared::protocol::inventory::{
    InventoryError, InventoryOp, InventoryReply, InventoryRequest, InventorySnapshot,
    InventoryTracker, InventoryUpdate, ItemId, ItemStack, MAX_PENDING_REQUESTS, TradeOffer,
    TradeState, TradeUpdate, WorldItem, WorldItems,
};

use crate::scenario::InventoryOp as OpKind;

/// A world item list older than this is refreshed before picking.
pub(crate) const WORLD_LIST_MAX_AGE: Duration = Duration::from_secs(3);
/// How close the bot walks to an item before `PickUp` (the server's reach
/// is 5 m by default; the margin covers quantization and one tick of lag).
pub(crate) const PICKUP_REACH: f32 = 4.0;
/// A target not reached in this long is given up.
const TARGET_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests awaiting a reply; no new operation is started beyond it
/// (a trade's answer may add two more: within the tracker's bound).
pub(crate) const MAX_PENDING: usize = 64;
const _: () = assert!(MAX_PENDING + 2 <= MAX_PENDING_REQUESTS);
/// Targets are drawn from this many nearest items, so that bots spawned
/// together do not all walk to the same one.
const NEAREST_CHOICES: usize = 4;
/// World items remembered from the last list.
const MAX_KNOWN_ITEMS: usize = 64;

/// Counters of inventory traffic, summed over bots and sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct InventoryStats {
    /// Requests sent.
    pub(crate) sent: u64,
    /// Replies with a new state.
    pub(crate) ok: u64,
    /// Replies with an error, by `InventoryError` in snake case.
    pub(crate) failed: BTreeMap<String, u64>,
    /// Requests never answered by the end of their connection.
    pub(crate) lost: u64,
    /// Replies to no pending request (a second reply, or a stranger's id).
    pub(crate) unexpected: u64,
    /// States that contradict one seen before (same version, other content).
    pub(crate) inconsistent: u64,
    /// States older than the newest one an earlier session of the bot was
    /// sent (a lower version, or the same version with other contents): an
    /// acknowledged change lost between sessions.
    pub(crate) regressed: u64,
    /// Trades that completed, counted by their initiator.
    pub(crate) trades_completed: u64,
    /// Items picked up from the world.
    pub(crate) picked_up: u64,
}

impl InventoryStats {
    /// Adds `other` into `self`.
    pub(crate) fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (k, v) in &other.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        self.lost += other.lost;
        self.unexpected += other.unexpected;
        self.inconsistent += other.inconsistent;
        self.regressed += other.regressed;
        self.trades_completed += other.trades_completed;
        self.picked_up += other.picked_up;
    }

    /// Every request answered exactly once.
    pub(crate) fn exactly_one_reply(&self) -> bool {
        self.lost == 0 && self.unexpected == 0
    }
}

/// `NoSuchWorldItem` → `no_such_world_item`.
pub(crate) fn error_key(error: InventoryError) -> String {
    crate::bot::snake_case(&format!("{error:?}"))
}

#[derive(Debug, Clone, Copy)]
struct Target {
    id: u64,
    position: Vec2,
    since: Instant,
}

/// What a bot carries from one connection's inventory behaviour to the
/// next ([`InventoryBehaviour::end_connection`], then
/// [`InventoryBehaviour::new`]).
///
/// The server keeps each account's inventory, version and contents, across
/// sessions and restarts (`server/src/inventory/core.rs`): a change is
/// committed before its reply or update goes out, every change raises the
/// version (so does growing to more slots, so that a client that kept the
/// old state sees a newer one), and a session starts from the committed
/// state. So nothing a later session is sent may be older than the newest
/// state an earlier one was sent. A change in flight when a connection
/// ended may have been applied with its reply lost: the next session then
/// sees a higher version, which is no fault; only going back is.
#[derive(Debug, Clone, Default)]
pub(crate) struct InventoryHistory {
    /// The newest inventory the bot's last session was sent (or an earlier
    /// one's, when the last was sent none).
    newest: Option<InventorySnapshot>,
    /// The lowest request id a later session may use: past every id an
    /// earlier one used, also should the clock step back, so that no
    /// request is answered with an earlier session's stored reply and its
    /// older state.
    next_request: u64,
}

/// The inventory behaviour of one bot for one connection.
#[derive(Debug)]
pub(crate) struct InventoryBehaviour {
    account: u64,
    tracker: InventoryTracker,
    /// The newest state earlier sessions were sent: nothing older may come.
    earlier: Option<InventorySnapshot>,
    /// One past the highest request id this session used.
    next_request: u64,
    world: Vec<WorldItem>,
    world_at: Option<Instant>,
    target: Option<Target>,
    unusable: BTreeSet<ItemId>,
    /// The trade this bot answered as a partner.
    answered: Option<u64>,
    /// The trade whose update showing this bot's counter-offer it accepts:
    /// its id, the newest revision seen and the initiator (to whom the
    /// counter-offer went).
    counter_offered: Option<CounterOffer>,
    /// The trade and revision this bot last accepted (a player is in one
    /// open trade at most, on either side). A newer revision resets both
    /// acceptances, and the bot accepts again.
    accepted: Option<(u64, u64)>,
    stats: InventoryStats,
}

impl InventoryBehaviour {
    /// A behaviour whose request ids start at `first_request`, or past the
    /// ids of the bot's earlier sessions in `history` if those reach
    /// further: use a range no earlier session of this account used (the
    /// server remembers applied ids per account, across restarts, and
    /// would answer a repeated id with the old reply instead of applying
    /// it). The states it is sent are checked against `history`'s newest.
    pub(crate) fn new(account: u64, first_request: u64, history: InventoryHistory) -> Self {
        let first_request = first_request.max(history.next_request);
        Self {
            account,
            tracker: InventoryTracker::starting_at(first_request),
            earlier: history.newest,
            next_request: first_request,
            world: Vec::new(),
            world_at: None,
            target: None,
            unusable: BTreeSet::new(),
            answered: None,
            counter_offered: None,
            accepted: None,
            stats: InventoryStats::default(),
        }
    }

    /// Requests awaiting their reply.
    pub(crate) fn pending(&self) -> usize {
        self.tracker.pending().count()
    }

    /// Where the bot wants to walk (a world item to pick up), if anywhere.
    pub(crate) fn seek(&self) -> Option<Vec2> {
        self.target.map(|t| t.position)
    }

    /// The counters so far (this connection).
    #[cfg(test)]
    pub(crate) fn stats(&self) -> &InventoryStats {
        &self.stats
    }

    /// The connection ended: what is still pending is lost. Returns the
    /// counters of the connection, and what the bot's next connection
    /// starts from.
    pub(crate) fn end_connection(mut self) -> (InventoryStats, InventoryHistory) {
        self.stats.lost += self.pending() as u64;
        // The newest state of this session, even one older than an
        // earlier session's (counted already): the server's state now, so
        // that one loss is not counted again in every later session.
        let history = InventoryHistory {
            newest: self.tracker.inventory().cloned().or(self.earlier),
            next_request: self.next_request,
        };
        (self.stats, history)
    }

    /// `request` could not be sent after all: it is not pending (its reply
    /// cannot come, and the drain would wait for it to its deadline) nor
    /// counted sent.
    pub(crate) fn unsend(&mut self, request_id: u64) {
        if self.tracker.forget(request_id).is_some() {
            self.stats.sent -= 1;
        }
    }

    /// The request for `op`, unless the tracker has too many pending
    /// (never below [`MAX_PENDING`]).
    fn send(&mut self, op: InventoryOp) -> Option<InventoryRequest> {
        let request = self.tracker.request(op).ok()?;
        self.next_request = self.next_request.max(request.request_id + 1);
        self.stats.sent += 1;
        Some(request)
    }

    /// The request for one scheduled operation of kind `kind`, or `None`
    /// when there is nothing sensible to do now (walking to an item, or
    /// too many requests pending). `me`: the bot's position; `partner`:
    /// another bot's account; `draws`: uniform numbers in `0.0..1.0`.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        kind: OpKind,
        me: Option<Vec2>,
        partner: u64,
        draws: [f64; 2],
    ) -> Option<InventoryRequest> {
        if self.pending() >= MAX_PENDING {
            return None;
        }
        if kind == OpKind::Pick {
            return self.pick(now, me, draws[0]).and_then(|op| self.send(op));
        }
        let Some(inventory) = self.tracker.inventory() else {
            return self.send(InventoryOp::List);
        };
        let occupied: Vec<(u16, ItemStack)> = slots(&inventory.slots)
            .filter(|(_, s)| kind != OpKind::Use || !self.unusable.contains(&s.item))
            .collect();
        let empty = inventory.slots.iter().position(Option::is_none);
        let chosen = (!occupied.is_empty()).then(|| occupied[index(draws[0], occupied.len())]);
        let op = match (kind, chosen) {
            // Nothing to drop, move, use, give or offer: go and find something.
            (OpKind::Drop | OpKind::Move | OpKind::Use | OpKind::Give, None) => {
                return self.pick(now, me, draws[1]).and_then(|op| self.send(op));
            }
            (OpKind::Drop, Some((slot, _))) => InventoryOp::Drop { slot, count: 1 },
            (OpKind::Move, Some((from, stack))) => match empty {
                Some(to) => InventoryOp::Move {
                    from,
                    to: to as u16,
                    // A split when the stack allows it, else a move.
                    count: (stack.count / 2).max(1),
                },
                None => InventoryOp::Drop {
                    slot: from,
                    count: 1,
                },
            },
            (OpKind::Use, Some((slot, _))) => InventoryOp::Use { slot },
            (OpKind::Give, Some((slot, _))) => InventoryOp::Give {
                to: partner,
                slot,
                count: 1,
            },
            (OpKind::Trade | OpKind::Pick, chosen) => InventoryOp::Offer {
                with: partner,
                offer: TradeOffer {
                    items: chosen.map(|(slot, _)| vec![(slot, 1)]).unwrap_or_default(),
                },
            },
        };
        self.send(op)
    }

    /// A `PickUp` as soon as the walk to the target item has brought the
    /// bot (`me`, as the server last placed it) within reach.
    pub(crate) fn poll_arrival(&mut self, me: Option<Vec2>) -> Option<InventoryRequest> {
        let (t, me) = (self.target?, me?);
        if me.distance(t.position) > PICKUP_REACH || self.pending() >= MAX_PENDING {
            return None;
        }
        self.target = None;
        self.world.retain(|w| w.id != t.id);
        self.send(InventoryOp::PickUp { world_item: t.id })
    }

    fn pick(&mut self, now: Instant, me: Option<Vec2>, draw: f64) -> Option<InventoryOp> {
        if let Some(t) = self.target
            && now.saturating_duration_since(t.since) > TARGET_TIMEOUT
        {
            self.target = None;
        }
        let fresh = self
            .world_at
            .is_some_and(|at| now.saturating_duration_since(at) <= WORLD_LIST_MAX_AGE);
        if let Some(t) = self.target {
            if me.is_some_and(|p| p.distance(t.position) <= PICKUP_REACH) {
                self.target = None;
                self.world.retain(|w| w.id != t.id);
                return Some(InventoryOp::PickUp { world_item: t.id });
            }
            // Still walking; look again now and then (someone may have
            // taken it).
            return (!fresh).then_some(InventoryOp::ListWorld);
        }
        if !fresh || self.world.is_empty() {
            return Some(InventoryOp::ListWorld);
        }
        let origin = me.unwrap_or(Vec2::ZERO);
        self.world.sort_by(|a, b| {
            a.position
                .distance_squared(origin)
                .total_cmp(&b.position.distance_squared(origin))
        });
        let choice = self.world[index(draw, self.world.len().min(NEAREST_CHOICES))];
        self.target = Some(Target {
            id: choice.id,
            position: choice.position,
            since: now,
        });
        if origin.distance(choice.position) <= PICKUP_REACH && me.is_some() {
            self.target = None;
            self.world.retain(|w| w.id != choice.id);
            return Some(InventoryOp::PickUp {
                world_item: choice.id,
            });
        }
        None
    }

    /// The world items of a `ListWorld`.
    pub(crate) fn on_world(&mut self, now: Instant, items: &WorldItems) {
        self.world.clear();
        self.world
            .extend(items.items.iter().take(MAX_KNOWN_ITEMS).copied());
        self.world_at = Some(now);
        if let Some(t) = self.target
            && !self.world.iter().any(|w| w.id == t.id)
        {
            self.target = None;
        }
    }

    /// A reply: counts it as ok or failed, or unexpected.
    /// A reply to one of the bot's requests: returns a request to send in
    /// reaction (an acceptance of the trade whose counter-offer was
    /// refused, which would otherwise stay open with both sides waiting).
    /// `respond`: false while the bot is leaving (it only counts then).
    pub(crate) fn on_reply(
        &mut self,
        reply: &InventoryReply,
        respond: bool,
    ) -> Option<InventoryRequest> {
        let matched = self.tracker.on_reply(reply);
        if let Err(shared::protocol::inventory::TrackerError::UnexpectedReply(_)) = matched {
            self.stats.unexpected += 1;
            return None;
        }
        if let Ok(snapshot) = &reply.result {
            self.check_against_earlier(snapshot);
        }
        let op = match matched {
            Ok(op) => op,
            Err(_) => {
                // Matched a pending request, but the state contradicts one
                // seen before.
                self.stats.inconsistent += 1;
                self.stats.ok += 1;
                return None;
            }
        };
        if matches!(
            reply.result,
            Err(InventoryError::Busy | InventoryError::Storage)
        ) {
            // The tracker keeps these for a retry with the same id; the
            // bots do not retry (their next op is a new one): given up.
            self.tracker.forget(reply.request_id);
        }
        match &reply.result {
            Ok(_) => {
                self.stats.ok += 1;
                if matches!(op, InventoryOp::PickUp { .. }) {
                    self.stats.picked_up += 1;
                }
            }
            Err(error) => {
                *self.stats.failed.entry(error_key(*error)).or_default() += 1;
                if let (InventoryError::NotUsable, InventoryOp::Use { slot }) = (error, &op)
                    && let Some(Some(stack)) = self
                        .tracker
                        .inventory()
                        .and_then(|i| i.slots.get(usize::from(*slot)))
                {
                    self.unusable.insert(stack.item);
                }
                // The counter-offer was refused (its item left meanwhile):
                // accept the trade as it stands.
                if let InventoryOp::Offer { with, .. } = op
                    && respond
                    && let Some(counter) = self.counter_offered
                    && counter.initiator == with
                {
                    self.counter_offered = None;
                    self.accepted = Some((counter.trade, counter.revision));
                    return self.send(InventoryOp::Accept {
                        trade: counter.trade,
                        revision: counter.revision,
                    });
                }
            }
        }
        None
    }

    /// A change the bot did not ask for (a gift, a completed trade).
    pub(crate) fn on_update(&mut self, update: &InventoryUpdate) {
        self.check_against_earlier(&update.inventory);
        if self.tracker.on_update(update).is_err() {
            self.stats.inconsistent += 1;
        }
    }

    /// Counts `snapshot` as regressed when it is older than the newest
    /// state an earlier session was sent. Within a session an older state
    /// may come legitimately (see [`InventoryTracker`]), but every request
    /// of this session has a new id, so none of its answers is an earlier
    /// session's stored one.
    fn check_against_earlier(&mut self, snapshot: &InventorySnapshot) {
        if let Some(earlier) = &self.earlier
            && (snapshot.version < earlier.version
                || (snapshot.version == earlier.version && snapshot != earlier))
        {
            self.stats.regressed += 1;
        }
    }

    /// A trade changed: returns the requests to send in reaction (the
    /// partner's counter-offer and acceptance, the initiator's acceptance).
    /// `respond`: false while the bot is leaving (it only counts then).
    pub(crate) fn on_trade(
        &mut self,
        update: &TradeUpdate,
        respond: bool,
    ) -> Vec<InventoryRequest> {
        let mut out = Vec::new();
        match update.state {
            TradeState::Completed => {
                if update.initiator == self.account {
                    self.stats.trades_completed += 1;
                }
            }
            TradeState::Cancelled => {}
            TradeState::Open {
                initiator_accepted,
                partner_accepted,
            } => {
                if !respond || self.pending() + 2 > MAX_PENDING {
                    return out;
                }
                let accept = InventoryOp::Accept {
                    trade: update.trade,
                    revision: update.revision,
                };
                if let Some(counter) = self.counter_offered.as_mut()
                    && counter.trade == update.trade
                {
                    counter.revision = update.revision;
                }
                let at = (update.trade, update.revision);
                if update.partner == self.account && self.answered != Some(update.trade) {
                    self.answered = Some(update.trade);
                    // Counter-offer one item, if any, and accept once the
                    // trade shows it; with nothing to offer, accept now.
                    let item = self
                        .tracker
                        .inventory()
                        .and_then(|inv| slots(&inv.slots).next())
                        .map(|(slot, _)| (slot, 1));
                    match item {
                        Some(item) => {
                            self.counter_offered = Some(CounterOffer {
                                trade: update.trade,
                                revision: update.revision,
                                initiator: update.initiator,
                            });
                            out.extend(self.send(InventoryOp::Offer {
                                with: update.initiator,
                                offer: TradeOffer { items: vec![item] },
                            }));
                        }
                        None => {
                            self.accepted = Some(at);
                            out.extend(self.send(accept));
                        }
                    }
                } else if update.partner == self.account
                    && self
                        .counter_offered
                        .is_some_and(|c| c.trade == update.trade)
                    && !update.partner_offer.is_empty()
                    && !partner_accepted
                {
                    self.counter_offered = None;
                    self.accepted = Some(at);
                    out.extend(self.send(accept));
                } else if update.partner == self.account
                    && self.answered == Some(update.trade)
                    && self.counter_offered.is_none()
                    && !partner_accepted
                    && self
                        .accepted
                        .is_some_and(|(t, r)| t == update.trade && r != update.revision)
                {
                    // An offer changed the trade after this bot accepted it
                    // (both acceptances reset): accept it as it stands now.
                    self.accepted = Some(at);
                    out.extend(self.send(accept));
                } else if update.initiator == self.account
                    && partner_accepted
                    && !initiator_accepted
                    && self.accepted != Some(at)
                {
                    self.accepted = Some(at);
                    out.extend(self.send(accept));
                }
            }
        }
        out
    }
}

/// A counter-offer sent as a trade's partner, waiting to show in the
/// trade.
#[derive(Debug, Clone, Copy)]
struct CounterOffer {
    trade: u64,
    revision: u64,
    initiator: u64,
}

fn slots(slots: &[Option<ItemStack>]) -> impl Iterator<Item = (u16, ItemStack)> + '_ {
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i as u16, s)))
}

/// `draw` in `0.0..1.0` → an index below `len` (which is not 0).
fn index(draw: f64, len: usize) -> usize {
    ((draw * len as f64) as usize).min(len.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use shared::protocol::inventory::OfferedStack;

    use super::*;

    /// A bot's first session.
    fn fresh(account: u64, first_request: u64) -> InventoryBehaviour {
        InventoryBehaviour::new(account, first_request, InventoryHistory::default())
    }

    fn stack(item: u32, count: u32) -> Option<ItemStack> {
        Some(ItemStack {
            item: ItemId(item),
            count,
        })
    }

    fn reply(request_id: u64, slots: Vec<Option<ItemStack>>, version: u64) -> InventoryReply {
        InventoryReply {
            request_id,
            result: Ok(InventorySnapshot { version, slots }),
            trade: None,
        }
    }

    fn offered(slot: u16, item: u32, count: u32) -> OfferedStack {
        OfferedStack {
            slot,
            stack: ItemStack {
                item: ItemId(item),
                count,
            },
        }
    }

    fn item(id: u64, x: f32) -> WorldItem {
        WorldItem {
            id,
            stack: ItemStack {
                item: ItemId(1),
                count: 1,
            },
            position: Vec2::new(x, 0.0),
        }
    }

    /// A bot does not retry: a request answered `Busy` is counted as
    /// failed and leaves nothing pending (the drain would wait for it).
    #[test]
    fn a_busy_answer_leaves_nothing_pending() {
        let mut b = fresh(7, 100);
        let r = b
            .next(
                Instant::now(),
                OpKind::Pick,
                Some(Vec2::ZERO),
                8,
                [0.0, 0.0],
            )
            .unwrap();
        assert_eq!(b.pending(), 1);
        b.on_reply(
            &InventoryReply {
                request_id: r.request_id,
                result: Err(InventoryError::Busy),
                trade: None,
            },
            true,
        );
        assert_eq!(b.pending(), 0);
        assert_eq!(b.stats().failed.values().sum::<u64>(), 1);
    }

    /// A request the transport refused is neither pending nor sent: its
    /// reply cannot come, and waiting for it held the drain to its
    /// deadline (each churning session's too) and counted it lost.
    #[test]
    fn a_request_that_could_not_be_sent_is_not_awaited() {
        let mut b = fresh(7, 100);
        let r = (b.next(Instant::now(), OpKind::Pick, Some(Vec2::ZERO), 8, [0.0; 2])).unwrap();
        assert_eq!((b.pending(), b.stats().sent), (1, 1));
        b.unsend(r.request_id);
        assert_eq!((b.pending(), b.stats().sent), (0, 0));
        assert_eq!(b.end_connection().0.lost, 0);
    }

    #[test]
    fn picking_lists_the_world_walks_to_an_item_and_picks_it_up() {
        let now = Instant::now();
        let mut b = fresh(7, 100);
        let r = b.next(now, OpKind::Pick, Some(Vec2::ZERO), 8, [0.0, 0.0]);
        assert_eq!(
            r.map(|r| (r.request_id, r.op)),
            Some((100, InventoryOp::ListWorld))
        );
        b.on_world(
            now,
            &WorldItems {
                items: vec![item(5, 20.0), item(6, 30.0)],
            },
        );
        b.on_reply(&reply(100, vec![None], 1), true);
        // The nearest item becomes the target; nothing to send while walking.
        assert_eq!(
            b.next(now, OpKind::Pick, Some(Vec2::ZERO), 8, [0.0, 0.0]),
            None
        );
        assert_eq!(b.seek(), Some(Vec2::new(20.0, 0.0)));
        assert_eq!(b.poll_arrival(Some(Vec2::new(10.0, 0.0))), None);
        let near = Some(Vec2::new(17.0, 0.0));
        let r = b.next(now, OpKind::Pick, near, 8, [0.0, 0.0]).unwrap();
        assert_eq!(r.op, InventoryOp::PickUp { world_item: 5 });
        assert_eq!(b.seek(), None);
        b.on_reply(&reply(r.request_id, vec![stack(1, 1)], 2), true);
        let s = b.stats().clone();
        assert_eq!((s.sent, s.ok, s.picked_up), (2, 2, 1));
        // Walking to the next one, the bot picks it up on arrival.
        b.on_world(
            now,
            &WorldItems {
                items: vec![item(6, 30.0)],
            },
        );
        assert_eq!(b.next(now, OpKind::Pick, near, 8, [0.0, 0.0]), None);
        let r = b.poll_arrival(Some(Vec2::new(27.0, 0.0))).unwrap();
        assert_eq!(r.op, InventoryOp::PickUp { world_item: 6 });
    }

    #[test]
    fn slot_operations_need_the_inventory_first_and_use_occupied_slots() {
        let now = Instant::now();
        let mut b = fresh(7, 1);
        let r = b.next(now, OpKind::Drop, None, 8, [0.0, 0.0]).unwrap();
        assert_eq!(r.op, InventoryOp::List);
        b.on_reply(&reply(1, vec![None, stack(3, 4), None], 1), true);
        let r = b.next(now, OpKind::Move, None, 8, [0.0, 0.0]).unwrap();
        assert_eq!(
            r.op,
            InventoryOp::Move {
                from: 1,
                to: 0,
                count: 2
            }
        );
        let r = b.next(now, OpKind::Give, None, 8, [0.0, 0.0]).unwrap();
        assert_eq!(
            r.op,
            InventoryOp::Give {
                to: 8,
                slot: 1,
                count: 1
            }
        );
        let r = b.next(now, OpKind::Use, None, 8, [0.0, 0.0]).unwrap();
        assert_eq!(r.op, InventoryOp::Use { slot: 1 });
        b.on_reply(
            &InventoryReply {
                request_id: r.request_id,
                result: Err(InventoryError::NotUsable),
                trade: None,
            },
            true,
        );
        // Item 3 is known not to be usable: the bot looks for items instead.
        let r = b.next(now, OpKind::Use, None, 8, [0.0, 0.0]).unwrap();
        assert_eq!(r.op, InventoryOp::ListWorld);
        assert_eq!(b.stats().failed.get("not_usable"), Some(&1));
    }

    #[test]
    fn every_request_is_answered_once_or_counted() {
        let now = Instant::now();
        let mut b = fresh(7, 1);
        b.next(now, OpKind::Drop, None, 8, [0.0, 0.0]);
        b.next(now, OpKind::Drop, None, 8, [0.0, 0.0]);
        b.on_reply(&reply(1, vec![None], 1), true);
        b.on_reply(&reply(1, vec![None], 1), true);
        let (s, _) = b.end_connection();
        assert_eq!((s.sent, s.ok, s.unexpected, s.lost), (2, 1, 1, 1));
        assert!(!s.exactly_one_reply());
    }

    #[test]
    fn a_trade_is_counter_offered_and_accepted_by_both_sides() {
        let mut a = fresh(1, 1);
        let mut b = fresh(2, 1);
        let first = b
            .next(Instant::now(), OpKind::Trade, None, 1, [0.0; 2])
            .unwrap();
        b.on_reply(&reply(first.request_id, vec![stack(4, 9)], 1), true);
        let open = |revision, countered: bool, ia, pa| TradeUpdate {
            trade: 3,
            revision,
            initiator: 1,
            partner: 2,
            initiator_offer: vec![offered(5, 1, 1)],
            partner_offer: if countered {
                vec![offered(0, 4, 1)]
            } else {
                Vec::new()
            },
            state: TradeState::Open {
                initiator_accepted: ia,
                partner_accepted: pa,
            },
        };
        let ops = |bot: &mut InventoryBehaviour, update: &TradeUpdate| -> Vec<InventoryOp> {
            bot.on_trade(update, true)
                .into_iter()
                .map(|r| r.op)
                .collect()
        };
        assert_eq!(
            ops(&mut b, &open(1, false, false, false)),
            [InventoryOp::Offer {
                with: 1,
                offer: TradeOffer {
                    items: vec![(0, 1)]
                }
            }]
        );
        // The partner accepts the update that shows its counter-offer, with
        // that update's revision; the initiator waits for that acceptance.
        assert!(a.on_trade(&open(1, false, false, false), true).is_empty());
        assert!(a.on_trade(&open(2, true, false, false), true).is_empty());
        assert_eq!(
            ops(&mut b, &open(2, true, false, false)),
            [InventoryOp::Accept {
                trade: 3,
                revision: 2
            }]
        );
        assert!(b.on_trade(&open(2, true, false, true), true).is_empty());
        assert_eq!(
            ops(&mut a, &open(2, true, false, true)),
            [InventoryOp::Accept {
                trade: 3,
                revision: 2
            }]
        );
        let mut done = open(2, true, true, true);
        done.state = TradeState::Completed;
        // Before the initiator's acceptance lands, an offer changes the
        // trade (revision 3, both acceptances reset): the partner accepts
        // again, and so does the initiator once it sees that.
        assert_eq!(
            ops(&mut b, &open(3, true, false, false)),
            [InventoryOp::Accept {
                trade: 3,
                revision: 3
            }]
        );
        assert!(b.on_trade(&open(3, true, false, true), true).is_empty());
        assert_eq!(
            ops(&mut a, &open(3, true, false, true)),
            [InventoryOp::Accept {
                trade: 3,
                revision: 3
            }]
        );
        a.on_trade(&done, true);
        b.on_trade(&done, true);
        assert_eq!(a.stats().trades_completed + b.stats().trades_completed, 1);
        // A counter-offer refused (its item left meanwhile): the partner
        // accepts the trade as it stands rather than leave it open.
        let mut d = fresh(2, 1);
        let first = d
            .next(Instant::now(), OpKind::Trade, None, 1, [0.0; 2])
            .unwrap();
        d.on_reply(&reply(first.request_id, vec![stack(4, 9)], 1), true);
        let counter = d.on_trade(&open(1, false, false, false), true);
        let refused = InventoryReply {
            request_id: counter[0].request_id,
            result: Err(InventoryError::EmptySlot),
            trade: None,
        };
        assert_eq!(
            d.on_reply(&refused, true).map(|r| r.op),
            Some(InventoryOp::Accept {
                trade: 3,
                revision: 1
            })
        );
        // A leaving bot does not react.
        let mut c = fresh(2, 1);
        assert!(c.on_trade(&open(1, false, false, false), false).is_empty());
        // With nothing to counter-offer, the partner accepts what it sees.
        let mut empty = fresh(2, 1);
        assert_eq!(
            ops(&mut empty, &open(4, false, false, false)),
            [InventoryOp::Accept {
                trade: 3,
                revision: 4
            }]
        );
    }

    /// The bot's next session, after `b`'s, which was sent `state` (at
    /// `version`) for its one request.
    fn next_session(
        mut b: InventoryBehaviour,
        state: Vec<Option<ItemStack>>,
        version: u64,
    ) -> InventoryBehaviour {
        let now = Instant::now();
        let r = b.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        b.on_reply(&reply(r.request_id, state, version), true);
        let (stats, history) = b.end_connection();
        assert_eq!(stats.regressed, 0, "{stats:?}");
        InventoryBehaviour::new(7, 1, history)
    }

    /// The server keeps an inventory's version and contents across
    /// sessions: a later session sent an older state (a lower version, or
    /// the same version with other contents) has lost an acknowledged
    /// change, and `inventory_exactly_one_reply` must fail for it.
    #[test]
    fn a_state_older_than_an_earlier_sessions_is_regressed() {
        let now = Instant::now();
        let earlier = || next_session(fresh(7, 1), vec![stack(3, 4), None], 5);
        // Session 2's first List: version 4, one item short.
        let mut b = earlier();
        let r = b.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        b.on_reply(&reply(r.request_id, vec![stack(3, 3), None], 4), true);
        assert_eq!(b.stats().regressed, 1);
        // The same version with other contents.
        let mut b = earlier();
        let r = b.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        b.on_reply(&reply(r.request_id, vec![None, None], 5), true);
        assert_eq!(b.stats().regressed, 1);
        // A pushed update counts the same.
        let mut b = earlier();
        b.on_update(&InventoryUpdate {
            inventory: InventorySnapshot {
                version: 2,
                slots: vec![None, None],
            },
        });
        let (stats, _) = b.end_connection();
        assert_eq!(stats.regressed, 1);
        assert!(stats.exactly_one_reply(), "every request was answered once");
    }

    /// What is no regression: the same state again, or a newer one (a
    /// request in flight when the connection ended may have been applied,
    /// its reply lost; a gift or a trade may have changed the inventory
    /// meanwhile).
    #[test]
    fn the_same_or_a_newer_state_in_a_later_session_is_no_regression() {
        let now = Instant::now();
        let mut first = fresh(7, 1);
        let r = first.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        first.on_reply(&reply(r.request_id, vec![stack(3, 4), None], 5), true);
        // Sent, and lost with the connection: it may have been applied.
        first.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        let (stats, history) = first.end_connection();
        assert_eq!(stats.lost, 1);
        let mut b = InventoryBehaviour::new(7, 1, history);
        let r = b.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        b.on_reply(&reply(r.request_id, vec![stack(3, 4), None], 5), true);
        let r = b.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        b.on_reply(&reply(r.request_id, vec![stack(3, 3), None], 6), true);
        b.on_update(&InventoryUpdate {
            inventory: InventorySnapshot {
                version: 9,
                slots: vec![stack(3, 3), stack(5, 1)],
            },
        });
        let (stats, history) = b.end_connection();
        assert_eq!(stats.regressed, 0, "{stats:?}");
        // The third session compares with the second's newest state.
        let mut c = InventoryBehaviour::new(7, 1, history);
        let r = c.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        c.on_reply(&reply(r.request_id, vec![stack(3, 3), None], 6), true);
        assert_eq!(c.stats().regressed, 1);
    }

    /// A later session's request ids start past every id an earlier one
    /// used, also when its own start (from the clock) is lower: a repeated
    /// id would be answered with the stored reply, an older state.
    #[test]
    fn a_later_sessions_request_ids_never_repeat_an_earlier_ones() {
        let mut b = fresh(7, 1_000);
        let now = Instant::now();
        for _ in 0..3 {
            b.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        }
        let (_, history) = b.end_connection();
        let mut later = InventoryBehaviour::new(7, 10, history);
        let r = later.next(now, OpKind::Drop, None, 8, [0.0; 2]).unwrap();
        assert_eq!(r.request_id, 1_003);
        let (_, history) = later.end_connection();
        let mut clock_ahead = InventoryBehaviour::new(7, 5_000, history);
        let r = clock_ahead
            .next(now, OpKind::Drop, None, 8, [0.0; 2])
            .unwrap();
        assert_eq!(r.request_id, 5_000);
    }
}
