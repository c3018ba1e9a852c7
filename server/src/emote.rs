//! The example gameplay plugin: a client sends an emote, every other player
//! sees it. It shows the whole pattern of a gameplay concern: register the
//! message types once, read [`FromClient`], validate, write [`ToClient`].
//! A message that goes to every player is also rate-limited per sender,
//! and a tick relays only so many copies: otherwise each one a client sends
//! costs the server a send per player, and everyone emoting at once costs
//! it players squared.

use std::collections::HashMap;

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use shared::protocol::channels;
use shared::protocol::messages::{Emote, EmoteRequest};

use crate::net::{Clients, FromClient, NetAppExt, Recipients, ToClient};

pub use shared::protocol::messages::EMOTE_COUNT;

/// Ticks a player waits between two emotes (about a quarter of a second at
/// 30 Hz); emotes sent meanwhile are dropped.
pub const EMOTE_COOLDOWN_TICKS: u64 = 8;

/// Most copies of emotes one tick relays (an emote is a copy to every
/// other player): with 1,000 players online, 65 emotes a tick; with
/// 5,000, 13. Those beyond are dropped; a tick relays at least one.
pub const MAX_EMOTE_COPIES_PER_TICK: usize = 65_536;

/// When each player (by account: reconnecting buys no emote) last emoted,
/// for those still cooling down.
#[derive(Default)]
struct Cooldowns {
    tick: u64,
    last: HashMap<u64, u64>,
}

/// Relays emotes.
pub struct EmotePlugin;

impl Plugin for EmotePlugin {
    fn build(&self, app: &mut App) {
        app.add_client_message::<EmoteRequest>(channels::EVENTS)
            .add_server_message::<Emote>(channels::EVENTS)
            .add_systems(FixedUpdate, relay_emotes);
    }
}

fn relay_emotes(
    mut requests: MessageReader<FromClient<EmoteRequest>>,
    mut out: MessageWriter<ToClient<Emote>>,
    mut cooldowns: Local<Cooldowns>,
    clients: Res<Clients>,
) {
    let Cooldowns { tick, last } = &mut *cooldowns;
    *tick += 1;
    let now = *tick;
    last.retain(|_, at| now - *at < EMOTE_COOLDOWN_TICKS);
    let mut budget = (MAX_EMOTE_COPIES_PER_TICK / clients.len().max(1)).max(1);
    for FromClient { client, message } in requests.read() {
        // Beyond the tick's copies, dropped (read, so not relayed later).
        if message.emote >= EMOTE_COUNT || last.contains_key(&client.account) || budget == 0 {
            continue;
        }
        budget -= 1;
        last.insert(client.account, now);
        out.write(ToClient {
            to: Recipients::AllExcept(*client),
            message: Emote {
                from: client.account,
                emote: message.emote,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use bevy_ecs::message::Messages;
    use shared::io::ClientId;
    use shared::netcode::ClientIndex;

    use super::*;
    use crate::net::{Clients, Outbox};

    fn client(account: u64) -> ClientId {
        ClientId {
            slot: ClientIndex::from_slot(0),
            account,
            session: account,
        }
    }

    fn app() -> App {
        let mut app = App::new();
        app.init_resource::<Clients>()
            .init_resource::<Outbox>()
            .add_plugins(EmotePlugin);
        app
    }

    #[test]
    fn emotes_reach_everyone_else_and_unknown_ones_are_ignored() {
        let mut app = app();
        app.world_mut().write_message(FromClient {
            client: client(7),
            message: EmoteRequest { emote: 3 },
        });
        app.world_mut().write_message(FromClient {
            client: client(8),
            message: EmoteRequest { emote: EMOTE_COUNT },
        });
        app.world_mut().run_schedule(FixedUpdate);
        let sent = app.world().resource::<Messages<ToClient<Emote>>>();
        let sent: Vec<_> = sent.iter_current_update_messages().cloned().collect();
        assert_eq!(
            sent,
            vec![ToClient {
                to: Recipients::AllExcept(client(7)),
                message: Emote { from: 7, emote: 3 },
            }]
        );
    }

    #[test]
    fn a_player_emotes_at_most_once_per_cooldown() {
        let mut app = app();
        let mut relayed = Vec::new();
        for tick in 0..=EMOTE_COOLDOWN_TICKS {
            // Client 7 floods: three emotes every tick. Client 8 emotes
            // once, in the first tick.
            for emote in 0..3 {
                app.world_mut().write_message(FromClient {
                    client: client(7),
                    message: EmoteRequest { emote },
                });
            }
            if tick == 0 {
                app.world_mut().write_message(FromClient {
                    client: client(8),
                    message: EmoteRequest { emote: 5 },
                });
            }
            app.world_mut().run_schedule(FixedUpdate);
            let sent = app.world().resource::<Messages<ToClient<Emote>>>();
            relayed.extend(
                sent.iter_current_update_messages()
                    .map(|m| (tick, m.message.from, m.message.emote)),
            );
            app.world_mut()
                .resource_mut::<Messages<ToClient<Emote>>>()
                .update();
        }
        assert_eq!(
            relayed,
            [(0, 7, 0), (0, 8, 5), (EMOTE_COOLDOWN_TICKS, 7, 0)],
            "the first of each cooldown, the rest dropped"
        );
    }

    /// The cooldown is the player's, not the connection's: reconnecting
    /// does not buy an emote.
    #[test]
    fn reconnecting_does_not_reset_the_cooldown() {
        let mut app = app();
        for session in [1, 2] {
            app.world_mut().write_message(FromClient {
                client: ClientId {
                    slot: ClientIndex::from_slot(0),
                    account: 7,
                    session,
                },
                message: EmoteRequest { emote: 1 },
            });
            app.world_mut().run_schedule(FixedUpdate);
        }
        let sent = app.world().resource::<Messages<ToClient<Emote>>>();
        assert_eq!(sent.len(), 1);
    }

    /// Each emote is a send to every other player: with many online, a
    /// tick relays only as many as [`MAX_EMOTE_COPIES_PER_TICK`] copies
    /// allow (at least one), the rest dropped.
    #[test]
    fn a_tick_relays_emotes_within_its_copies_budget() {
        let mut app = app();
        let players = 1_000;
        for slot in 0..players as u32 {
            let entity = app.world_mut().spawn_empty().id();
            let client = ClientId {
                slot: ClientIndex::from_slot(slot),
                account: u64::from(slot),
                session: u64::from(slot),
            };
            app.world_mut()
                .resource_mut::<Clients>()
                .insert(client, entity);
        }
        for account in 0..200 {
            app.world_mut().write_message(FromClient {
                client: client(account),
                message: EmoteRequest { emote: 1 },
            });
        }
        app.world_mut().run_schedule(FixedUpdate);
        let sent = app.world().resource::<Messages<ToClient<Emote>>>();
        assert_eq!(
            sent.iter_current_update_messages().count(),
            MAX_EMOTE_COPIES_PER_TICK / players
        );
        // The rest were dropped, not relayed a tick late.
        app.world_mut()
            .resource_mut::<Messages<ToClient<Emote>>>()
            .update();
        app.world_mut()
            .resource_mut::<Messages<FromClient<EmoteRequest>>>()
            .update();
        app.world_mut().run_schedule(FixedUpdate);
        let sent = app.world().resource::<Messages<ToClient<Emote>>>();
        assert_eq!(sent.iter_current_update_messages().count(), 0);
    }
}
