//! Chat: global, nearby and whisper scopes, system lines, validation, a
//! per-player token-bucket rate limit with mutes and kicks for repeated
//! offenders, and a per-recipient sequence number on every line.
//!
//! Everything is on [`channels::CHAT`] (reliable, ordered):
//! [`ChatSend`] in, [`ChatLine`] and [`ChatRejected`] out. The rules live in
//! [`ChatRoom`], plain Rust keyed by account id; [`ChatSystems::Route`]
//! feeds it connections, messages and admin `say`s and sends what it
//! returns.
//!
//! Every send of a member in session is answered exactly once, and the
//! answer carries the send's [`ChatSend::client_ref`]: the speaker's own
//! copy (`ChatLine::reply_to`) or a `ChatRejected` (only a send that gets
//! its sender kicked goes unanswered). Within a tick a client receives all
//! its `ChatLine`s (in `seq` order) before its `ChatRejected`s: server
//! message types are encoded in registration order (see
//! [`NetAppExt`]), so clients must match answers by `client_ref`, not by
//! arrival order.
//!
//! Session rule: a player is a chat member from its [`ClientConnected`]
//! (the handshake is done and its entity exists) to its
//! [`ClientDisconnected`]; anything else is ignored and counted.

mod room;

use std::collections::HashMap;

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use shared::io::{ClientId, NetCommand};
use shared::protocol::channels;
use shared::protocol::chat::{ChatLine, ChatRejected, ChatSend};
use shared::transport::DisconnectReason;

pub use room::{ChatOutput, ChatRoom, SYSTEM_NAME, clean_text};

use crate::config::ServerConfig;
use crate::console::AdminSay;
use crate::metrics::{Counter, Metrics};
use crate::net::{ClientConnected, ClientDisconnected, FromClient, NetAppExt, Outbox, ToClient};
use crate::world::Position;

/// Chat rules; a resource, set through [`ChatPlugin::config`].
#[derive(Resource, Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Longest message, in characters after cleaning (default 256); longer
    /// ones are refused with `TooLong`, not truncated.
    pub max_chars: usize,
    /// Messages a player may send in a burst (default 10).
    pub burst: u32,
    /// Sustained messages per second once the burst is spent (default 1).
    pub rate_per_sec: f64,
    /// The area-of-interest radius: how far the nearby scope reaches, in
    /// metres (default 50; the server sets it to the interest radius).
    /// Players without a [`Position`] are nowhere: their nearby lines reach
    /// only themselves.
    #[serde(skip)]
    pub nearby_radius: f32,
    /// Offences (rate-limited sends, sends while muted) that earn a mute
    /// (default 5).
    pub mute_after_offences: u32,
    /// How long a mute lasts (default 30 s).
    pub mute_secs: u32,
    /// Mutes after which the next would-be mute is a kick instead (default
    /// 2): the offender is disconnected with [`DisconnectReason::Kicked`].
    pub kick_after_mutes: u32,
    /// The tick rate, to turn seconds into ticks (default: the server's).
    #[serde(skip)]
    pub tick_hz: u32,
    /// Send "X joined" / "X left" system lines to everyone (default
    /// false: clients that do not expect chat traffic, such as the
    /// end-to-end test's, would see unexpected messages; turn it on for a
    /// game).
    pub announce_sessions: bool,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_chars: 256,
            burst: 10,
            rate_per_sec: 1.0,
            nearby_radius: 50.0,
            mute_after_offences: 5,
            mute_secs: 30,
            kick_after_mutes: 2,
            tick_hz: 30,
            announce_sessions: false,
        }
    }
}

/// The chat systems (`FixedUpdate`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatSystems {
    /// Joins, leaves, messages and admin lines, in that order.
    Route,
}

/// Installs chat. `config: None` takes [`ChatConfig::default`] with the
/// tick rate of the [`ServerConfig`] resource, if any.
#[derive(Debug, Clone, Default)]
pub struct ChatPlugin {
    /// The rules.
    pub config: Option<ChatConfig>,
}

/// Chat counters.
#[derive(Resource, Clone)]
struct ChatMetrics {
    lines: Counter,
    rejected: Counter,
    kicked: Counter,
    outside_session: Counter,
}

/// Connected members: account → connection, for delivery.
#[derive(Resource, Default)]
struct ChatMembers {
    clients: HashMap<u64, (ClientId, Entity)>,
}

/// The room, as a resource.
#[derive(Resource)]
pub struct ChatState(pub ChatRoom);

impl Plugin for ChatPlugin {
    fn build(&self, app: &mut App) {
        let config = self.config.clone().unwrap_or_else(|| ChatConfig {
            tick_hz: app
                .world()
                .get_resource::<ServerConfig>()
                .map_or(30, |c| c.tick_rate.hz()),
            ..ChatConfig::default()
        });
        let registry = app.world_mut().get_resource_or_init::<Metrics>().clone();
        let r = registry.registry();
        let counter = |name: &str, help: &str| r.counter(name, help).unwrap_or_default();
        let metrics = ChatMetrics {
            lines: counter("chat_lines_total", "Chat lines delivered (per recipient)."),
            rejected: counter("chat_rejected_total", "Chat messages refused."),
            kicked: counter("chat_kicks_total", "Players kicked for flooding the chat."),
            outside_session: counter(
                "chat_outside_session_total",
                "Chat messages from clients without an established session.",
            ),
        };
        app.init_resource::<Outbox>()
            .add_message::<AdminSay>()
            .add_message::<ClientConnected>()
            .add_message::<ClientDisconnected>()
            .add_client_message::<ChatSend>(channels::CHAT)
            .add_server_message::<ChatLine>(channels::CHAT)
            .add_server_message::<ChatRejected>(channels::CHAT)
            .insert_resource(ChatState(ChatRoom::new(config.clone())))
            .insert_resource(config)
            .insert_resource(metrics)
            .init_resource::<ChatMembers>()
            .add_systems(FixedUpdate, route.in_set(ChatSystems::Route));
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one system routing every input of the room keeps the order explicit"
)]
fn route(
    mut room: ResMut<ChatState>,
    mut members: ResMut<ChatMembers>,
    mut connected: MessageReader<ClientConnected>,
    mut disconnected: MessageReader<ClientDisconnected>,
    mut sends: MessageReader<FromClient<ChatSend>>,
    mut says: MessageReader<AdminSay>,
    positions: Query<&Position>,
    mut lines: MessageWriter<ToClient<ChatLine>>,
    mut rejections: MessageWriter<ToClient<ChatRejected>>,
    mut outbox: ResMut<Outbox>,
    metrics: Res<ChatMetrics>,
) {
    let room = &mut room.0;
    room.tick();
    let mut out = Vec::new();
    for joined in connected.read() {
        let account = joined.client.account;
        members
            .clients
            .insert(account, (joined.client, joined.entity));
        room.join(account, format!("player-{account}"), &mut out);
    }
    for left in disconnected.read() {
        let account = left.client.account;
        if members.clients.get(&account).map(|(c, _)| *c) == Some(left.client) {
            members.clients.remove(&account);
            room.leave(account, &mut out);
        }
    }
    for FromClient { client, message } in sends.read() {
        let current = members.clients.get(&client.account).map(|(c, _)| *c);
        if current != Some(*client) {
            metrics.outside_session.inc();
            continue;
        }
        let position = |account: u64| {
            let (_, entity) = members.clients.get(&account)?;
            positions.get(*entity).ok().map(|p| p.0)
        };
        if !room.say(
            client.account,
            message.client_ref,
            &message.scope,
            &message.text,
            position,
            &mut out,
        ) {
            metrics.outside_session.inc();
        }
    }
    for say in says.read() {
        room.system(&say.text, &mut out);
    }
    for output in out {
        match output {
            ChatOutput::Line { to, line } => {
                if let Some((client, _)) = members.clients.get(&to) {
                    metrics.lines.inc();
                    lines.write(ToClient::one(*client, line));
                }
            }
            ChatOutput::Rejected { to, rejected } => {
                if let Some((client, _)) = members.clients.get(&to) {
                    metrics.rejected.inc();
                    rejections.write(ToClient::one(*client, rejected));
                }
            }
            ChatOutput::Kick { account } => {
                if let Some((client, _)) = members.clients.get(&account) {
                    metrics.kicked.inc();
                    tracing::info!(account, "kicking a chat flooder");
                    outbox.push(NetCommand::Disconnect {
                        client: *client,
                        reason: DisconnectReason::Kicked,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
