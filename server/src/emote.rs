//! The example gameplay plugin: a client sends an emote, every other player
//! sees it. It shows the whole pattern of a gameplay concern: register the
//! message types once, read [`FromClient`], validate, write [`ToClient`].

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use shared::protocol::channels;
use shared::protocol::messages::{Emote, EmoteRequest};

use crate::net::{FromClient, NetAppExt, Recipients, ToClient};

/// Emotes known to the game; anything else is ignored.
pub const EMOTE_COUNT: u8 = 16;

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
) {
    for FromClient { client, message } in requests.read() {
        if message.emote >= EMOTE_COUNT {
            continue;
        }
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

    #[test]
    fn emotes_reach_everyone_else_and_unknown_ones_are_ignored() {
        let mut app = App::new();
        app.init_resource::<Clients>()
            .init_resource::<Outbox>()
            .add_plugins(EmotePlugin);
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
}
