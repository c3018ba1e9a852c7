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
