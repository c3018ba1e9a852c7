//! Sessions: player entities follow connections, and the inbox is drained
//! into typed messages once per tick.

use std::collections::{HashMap, HashSet};

use bevy_ecs::prelude::*;
use glam::Vec2;
use shared::io::{ClientId, NetCommand, NetEvent};
use shared::movement::MovementRules;
use shared::protocol::{self, channels, messages::Welcome};
use shared::transport::DisconnectReason;

use super::typed::InboundRegistry;
use super::{Clients, MAX_STRIKES, NetMetrics, NetServer, Outbox};
use crate::config::ServerConfig;
use crate::movement::MovementConfig;
use crate::players::{self, PlayerRoster, PlayerSummary};
use crate::world::Position;

/// The player entity of a connected client.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Player {
    /// Its connection.
    pub client: ClientId,
    /// Protocol strikes so far (see [`MAX_STRIKES`]).
    pub strikes: u32,
}

/// A client finished the handshake; its [`Player`] entity exists.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConnected {
    /// The client.
    pub client: ClientId,
    /// Its player entity.
    pub entity: Entity,
}

/// Where the players who left this tick stood, by account: their entities
/// are gone, but what they said before leaving is still said where they
/// were (nearby chat). Cleared when the next tick's events are drained.
#[derive(Resource, Default, Debug)]
pub struct DepartedPositions(pub HashMap<u64, Vec2>);

/// A client left; its player entity is despawned at the end of this tick's
/// receive step, so plugins that need to save it read this message and the
/// data they keep by account id.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDisconnected {
    /// The client.
    pub client: ClientId,
    /// Why.
    pub reason: DisconnectReason,
}

/// One client's arrival or departure (see [`session_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// A [`ClientConnected`].
    Joined(ClientConnected),
    /// A [`ClientDisconnected`].
    Left(ClientDisconnected),
}

/// This tick's connects and disconnects, in the order they happened to
/// each account.
///
/// The two come in separate message queues. A plugin that keys its state
/// by account and reads every connect before every disconnect gets an
/// account that left and came back within one tick backwards: the new
/// session first, then the old one's end, which then no longer matches
/// and is dropped (the old session's trades stay open, say). Sessions are
/// numbered in connect order and an account holds one at a time, so
/// ordering by session, a join before its own leave, restores the order.
pub fn session_changes(
    connected: &mut MessageReader<ClientConnected>,
    disconnected: &mut MessageReader<ClientDisconnected>,
) -> Vec<SessionChange> {
    let mut changes: Vec<SessionChange> = connected
        .read()
        .copied()
        .map(SessionChange::Joined)
        .chain(disconnected.read().copied().map(SessionChange::Left))
        .collect();
    changes.sort_by_key(|change| match change {
        SessionChange::Joined(joined) => (joined.client.session, false),
        SessionChange::Left(left) => (left.client.session, true),
    });
    changes
}

/// `NetSystems::Receive`: drains the `net-io` channel.
pub(super) fn receive(world: &mut World) {
    // The registry is taken out of the world once for the whole batch (not
    // per message), and lends its buffer for the drained events.
    world.resource_scope(|world, mut registry: Mut<InboundRegistry>| {
        let mut events = std::mem::take(&mut registry.pending);
        if let Some(mut departed) = world.get_resource_mut::<DepartedPositions>() {
            departed.0.clear();
        }
        world.resource_mut::<NetServer>().drain_events(&mut events);
        // The clients told to go for their strikes in this batch: once each.
        let mut struck_out = HashSet::new();
        for event in events.drain(..) {
            match event {
                NetEvent::Connected { client } => on_connected(world, client),
                NetEvent::Disconnected { client, reason } => {
                    on_disconnected(world, client, reason);
                }
                NetEvent::Message {
                    client,
                    channel,
                    payload,
                } => {
                    let Some(entity) = world.resource::<Clients>().entity(client) else {
                        continue;
                    };
                    if !registry.dispatch(world, client, channel, &payload) {
                        strike(world, client, entity, &mut struck_out);
                    }
                }
            }
        }
        registry.pending = events;
    });
}

fn on_connected(world: &mut World, client: ClientId) {
    // An account holds one session. Its new connection can be reported
    // before the old one's end, a tick or more apart: the connection layer
    // frees the account as soon as the old connection ends, and `net-io`
    // reports that end only once its last datagrams have left. The old
    // session ends here, so every plugin sees it leave before the new one
    // joins (its trades cancelled, its chat numbering over); its own
    // `Disconnected`, when it comes, finds nothing left to end but says
    // why it ended (plugins are told `Closed`: the reason is not known
    // yet).
    if let Some(old) = world.resource::<Clients>().by_account(client.account)
        && end_session(world, old, DisconnectReason::Closed)
    {
        tracing::info!(
            account = old.account,
            "client disconnected: its account connected again (why the old connection \
             ended follows)"
        );
    }
    // `net-io` reports a slot's `Disconnected` before the next `Connected`
    // in it; should that ever break, the old player ends properly here.
    if let Some(old) = world.resource::<Clients>().occupant(client) {
        tracing::warn!(
            account = old.account,
            slot = old.slot.get(),
            "a new client took a slot whose disconnect never came"
        );
        on_disconnected(world, old, DisconnectReason::Closed);
    }
    let entity = world.spawn(Player { client, strikes: 0 }).id();
    world.resource_mut::<Clients>().insert(client, entity);
    world.resource_mut::<PlayerRoster>().insert(
        players::ClientId(client.account),
        PlayerSummary {
            name: format!("player-{}", client.account),
            addr: None,
            rtt: None,
        },
    );
    let tick_hz = world
        .get_resource::<ServerConfig>()
        .map_or(30, |c| c.tick_rate.hz() as u16);
    let rules = world
        .get_resource::<MovementConfig>()
        .map_or_else(MovementRules::default, MovementConfig::rules);
    if let Ok(payload) = protocol::encode(&Welcome {
        client_id: client.account,
        tick_hz,
        rules,
    }) {
        world.resource_mut::<Outbox>().push(NetCommand::Send {
            client,
            channel: channels::CONTROL,
            payload,
        });
    }
    tracing::info!(
        account = client.account,
        slot = client.slot.get(),
        "client connected"
    );
    world.write_message(ClientConnected { client, entity });
}

fn on_disconnected(world: &mut World, client: ClientId, reason: DisconnectReason) {
    if end_session(world, client, reason) {
        tracing::info!(account = client.account, %reason, "client disconnected");
    } else {
        // A session already ended here (a new connection took its account
        // or its slot first): its end says why, which the early end could
        // not.
        tracing::info!(
            account = client.account,
            %reason,
            "a connection ended early for a new one has ended"
        );
    }
}

/// Ends `client`'s session for `reason`: its entity despawned, plugins
/// told ([`ClientDisconnected`]). False when it had ended already.
fn end_session(world: &mut World, client: ClientId, reason: DisconnectReason) -> bool {
    let Some(entity) = world.resource_mut::<Clients>().remove(client) else {
        return false;
    };
    // The account's new session, if any, is listed again when it joins.
    world
        .resource_mut::<PlayerRoster>()
        .remove(players::ClientId(client.account));
    world.write_message(ClientDisconnected { client, reason });
    let position = world.get::<Position>(entity).map(|p| p.0);
    if let (Some(position), Some(mut departed)) =
        (position, world.get_resource_mut::<DepartedPositions>())
    {
        departed.0.insert(client.account, position);
    }
    world.despawn(entity);
    true
}

/// Counts a protocol strike against `client`; at [`MAX_STRIKES`] and past
/// it, asks `net-io` to disconnect it, once a batch (`struck_out` lists the
/// clients asked in this one).
fn strike(world: &mut World, client: ClientId, entity: Entity, struck_out: &mut HashSet<ClientId>) {
    world.resource::<NetMetrics>().malformed.inc();
    let Some(mut player) = world.get_mut::<Player>(entity) else {
        return;
    };
    player.strikes = player.strikes.saturating_add(1);
    // Again in every batch with a strike past the limit: a disconnect
    // dropped on the way to net-io (its queue full) must not leave the
    // client in. Once a batch: each one past the first would only be
    // dropped as stale.
    if player.strikes >= MAX_STRIKES && struck_out.insert(client) {
        if player.strikes == MAX_STRIKES {
            tracing::warn!(
                account = client.account,
                "too many malformed messages; disconnecting"
            );
        }
        world.resource_mut::<Outbox>().push(NetCommand::Disconnect {
            client,
            reason: DisconnectReason::ProtocolViolation,
        });
    }
}
