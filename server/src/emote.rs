//! The example gameplay plugin: a client sends an emote, every other player
//! sees it. It shows the whole pattern of a gameplay concern: register the
//! message types once, read [`FromClient`], validate, write [`ToClient`].
//! A message that goes to every player is also rate-limited per sender,
//! and a tick relays only so many copies: otherwise each one a client sends
//! costs the server a send per player, and everyone emoting at once costs
//! it players squared.
//!
//! Both limits are in wall time, not ticks, so that they mean the same at
//! any `--tick-hz`: the cooldown is counted in the periods each tick stands
//! for ([`TickStats::periods_this_tick`], 1 when no runner drives the app),
//! so a server that falls behind its tick rate does not hold players back
//! longer; the copies budget is a rate, shared out evenly between the ticks
//! of a second, and stays a bound on each tick's work: a tick standing for
//! several periods gets one tick's share.

use std::collections::HashMap;
use std::time::Duration;

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use shared::protocol::channels;
use shared::protocol::messages::{Emote, EmoteRequest};

use crate::metrics::{Counter, Metrics};
use crate::net::{Clients, FromClient, NetAppExt, Recipients, ToClient};
use crate::tick::{TickRate, TickStats};

pub use shared::protocol::messages::EMOTE_COUNT;

/// How long a player waits between two emotes, rounded up to whole tick
/// periods (8 at 30 Hz: 267 ms; 32 at 128 Hz); emotes sent meanwhile are
/// dropped.
pub const EMOTE_COOLDOWN: Duration = Duration::from_millis(250);

/// Most copies of emotes relayed a second (an emote is a copy to every
/// other player), shared out evenly between the ticks of a second: 65,536
/// a tick at 30 Hz, so with 1,000 players online 65 emotes a tick, with
/// 5,000 13. Those beyond a tick's share are dropped; a tick relays at
/// least one.
pub const MAX_EMOTE_COPIES_PER_SEC: usize = 65_536 * 30;

/// When each player (by account: reconnecting buys no emote) last emoted,
/// for those still cooling down; times in periods of wall time.
#[derive(Default)]
struct Cooldowns {
    now: u64,
    last: HashMap<u64, u64>,
}

/// Emote counters: `emotes_relayed_total`, and
/// `emotes_dropped_total{reason}` by why (an operator tells "nobody
/// emotes" from "every emote dropped").
#[derive(Resource, Clone)]
struct EmoteMetrics {
    relayed: Counter,
    /// An emote id past [`EMOTE_COUNT`].
    unknown: Counter,
    /// Within the sender's [`EMOTE_COOLDOWN`].
    cooldown: Counter,
    /// Beyond the tick's share of [`MAX_EMOTE_COPIES_PER_SEC`].
    budget: Counter,
}

/// Relays emotes.
pub struct EmotePlugin;

impl Plugin for EmotePlugin {
    fn build(&self, app: &mut App) {
        let metrics = app.world_mut().get_resource_or_init::<Metrics>().clone();
        let r = metrics.registry();
        let dropped = |reason: &str| {
            r.counter_with_labels(
                "emotes_dropped_total",
                "Emotes not relayed, by reason.",
                &[("reason", reason)],
            )
            .unwrap_or_default()
        };
        let metrics = EmoteMetrics {
            relayed: r
                .counter(
                    "emotes_relayed_total",
                    "Emotes relayed (each one a copy to every other player).",
                )
                .unwrap_or_default(),
            unknown: dropped("unknown"),
            cooldown: dropped("cooldown"),
            budget: dropped("budget"),
        };
        app.add_client_message::<EmoteRequest>(channels::EVENTS)
            .add_server_message::<Emote>(channels::EVENTS)
            .insert_resource(metrics)
            .add_systems(FixedUpdate, relay_emotes);
    }
}

fn relay_emotes(
    mut requests: MessageReader<FromClient<EmoteRequest>>,
    mut out: MessageWriter<ToClient<Emote>>,
    mut cooldowns: Local<Cooldowns>,
    clients: Res<Clients>,
    stats: Option<Res<TickStats>>,
    metrics: Res<EmoteMetrics>,
) {
    // The default rate and 1 period a tick when no runner measures the
    // ticks (tests that update by hand).
    let (rate, periods) = stats.map_or((TickRate::default(), 1), |stats| {
        (stats.rate(), stats.periods_this_tick())
    });
    let hz = rate.hz();
    let cooldown = u64::try_from((EMOTE_COOLDOWN.as_millis() * u128::from(hz)).div_ceil(1_000))
        .unwrap_or(u64::MAX);
    let Cooldowns { now, last } = &mut *cooldowns;
    *now += u64::from(periods);
    let now = *now;
    last.retain(|_, at| now - *at < cooldown);
    let per_tick = MAX_EMOTE_COPIES_PER_SEC / hz as usize;
    let mut budget = (per_tick / clients.len().max(1)).max(1);
    for FromClient { client, message } in requests.read() {
        // Beyond the tick's copies, dropped (read, so not relayed later).
        let dropped = if message.emote >= EMOTE_COUNT {
            Some(&metrics.unknown)
        } else if last.contains_key(&client.account) {
            Some(&metrics.cooldown)
        } else if budget == 0 {
            Some(&metrics.budget)
        } else {
            None
        };
        if let Some(dropped) = dropped {
            dropped.inc();
            continue;
        }
        metrics.relayed.inc();
        budget -= 1;
        last.insert(client.account, now);
        // The player is left out, in whichever session: net-io leaves out
        // the account (a session that joined after this tick too).
        let sender = clients.by_account(client.account).unwrap_or(*client);
        out.write(ToClient {
            to: Recipients::AllExcept(sender),
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

    /// The emotes the last update sent.
    fn sent_this_update(app: &App) -> Vec<ToClient<Emote>> {
        let sent = app.world().resource::<Messages<ToClient<Emote>>>();
        sent.iter_current_update_messages().cloned().collect()
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
        assert_eq!(
            sent_this_update(&app),
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
        // 250 ms at 30 Hz: 8 ticks, as rounded up.
        let cooldown = 8;
        for tick in 0..=cooldown {
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
            [(0, 7, 0), (0, 8, 5), (cooldown, 7, 0)],
            "the first of each cooldown, the rest dropped"
        );
    }

    /// Every emote is counted: relayed, or dropped by reason.
    #[test]
    fn emotes_are_counted_relayed_or_dropped_by_reason() {
        let mut app = app();
        for (account, emote) in [(7, 1), (7, 2), (8, EMOTE_COUNT), (9, 0)] {
            app.world_mut().write_message(FromClient {
                client: client(account),
                message: EmoteRequest { emote },
            });
        }
        app.world_mut().run_schedule(FixedUpdate);
        let metrics = app.world().resource::<EmoteMetrics>();
        let counts = [
            &metrics.relayed,
            &metrics.unknown,
            &metrics.cooldown,
            &metrics.budget,
        ]
        .map(Counter::get);
        assert_eq!(counts, [2, 1, 1, 0]);
        let mut page = String::new();
        app.world()
            .resource::<Metrics>()
            .registry()
            .render(&mut page);
        assert!(
            page.contains("emotes_dropped_total{reason=\"cooldown\"} 1"),
            "{page}"
        );
    }

    /// The cooldown is wall time, not ticks: at 128 Hz a player flooding
    /// every tick for a second is relayed once every 250 ms, four times,
    /// as at 30 Hz.
    #[test]
    fn the_cooldown_is_the_same_in_seconds_at_any_tick_rate() {
        let mut app = app();
        app.insert_resource(TickStats::new(TickRate::new(128).unwrap()));
        let mut relayed = 0;
        for _ in 0..128 {
            app.world_mut().write_message(FromClient {
                client: client(7),
                message: EmoteRequest { emote: 1 },
            });
            app.world_mut().run_schedule(FixedUpdate);
            let mut sent = app.world_mut().resource_mut::<Messages<ToClient<Emote>>>();
            relayed += sent.iter_current_update_messages().count();
            sent.update();
        }
        assert_eq!(relayed, 4, "at 0, 250, 500 and 750 ms");
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

    /// An emote of a session that has ended, read in the tick its
    /// player's next session joined, is not sent back to that player: the
    /// copy left out is the account's current session's (the ended one's
    /// excluded nobody, as `net-io` sends to current sessions only).
    #[test]
    fn an_ended_sessions_emote_is_not_sent_to_its_players_next_session() {
        let mut app = app();
        let next = ClientId {
            slot: ClientIndex::from_slot(1),
            account: 7,
            session: 2,
        };
        let entity = app.world_mut().spawn_empty().id();
        app.world_mut()
            .resource_mut::<Clients>()
            .insert(next, entity);
        app.world_mut().write_message(FromClient {
            client: client(7),
            message: EmoteRequest { emote: 2 },
        });
        app.world_mut().run_schedule(FixedUpdate);
        assert_eq!(
            sent_this_update(&app),
            vec![ToClient {
                to: Recipients::AllExcept(next),
                message: Emote { from: 7, emote: 2 },
            }]
        );
    }

    /// Connects `players` and has the first `emoters` of them emote in one
    /// tick; returns how many emotes it relayed.
    fn relayed_in_one_tick(app: &mut App, players: u32, emoters: u64) -> usize {
        for slot in 0..players {
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
        for account in 0..emoters {
            app.world_mut().write_message(FromClient {
                client: client(account),
                message: EmoteRequest { emote: 1 },
            });
        }
        app.world_mut().run_schedule(FixedUpdate);
        let sent = app.world().resource::<Messages<ToClient<Emote>>>();
        sent.iter_current_update_messages().count()
    }

    /// Each emote is a send to every other player: with many online, a
    /// tick relays only as many as its share of
    /// [`MAX_EMOTE_COPIES_PER_SEC`] allows (at least one), the rest dropped.
    #[test]
    fn a_tick_relays_emotes_within_its_copies_budget() {
        let mut app = app();
        let players = 1_000;
        // 65,536 copies a tick at 30 Hz.
        assert_eq!(relayed_in_one_tick(&mut app, players, 200), 65);
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

    /// The budget is copies a second: at 128 Hz a tick relays 15,360
    /// copies, not the 65,536 of a tick at 30 Hz.
    #[test]
    fn the_copies_budget_is_the_same_in_seconds_at_any_tick_rate() {
        let mut app = app();
        app.insert_resource(TickStats::new(TickRate::new(128).unwrap()));
        assert_eq!(relayed_in_one_tick(&mut app, 1_000, 200), 15);
    }
}
