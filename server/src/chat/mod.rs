//! Chat: global, nearby and whisper scopes, system lines, validation, a
//! per-player token-bucket rate limit with mutes and kicks for repeated
//! offenders, a bound on one tick's total fan-out (refused `RateLimited`,
//! no offence), and a per-recipient sequence number on every line.
//!
//! Everything is on [`channels::CHAT`] (reliable, ordered):
//! [`ChatSend`] in, [`ChatLine`] and [`ChatRejected`] out. The rules live in
//! [`ChatRoom`], plain Rust keyed by account id; [`ChatSystems::Route`]
//! feeds it connections, messages, admin `say`s and the reasons of admin
//! kicks (a system line to the kicked player, before its disconnect) and
//! sends what it returns.
//!
//! Every send of a member in session is answered exactly once, and the
//! answer carries the send's [`ChatSend::client_ref`]: the speaker's own
//! copy (`ChatLine::reply_to`) or a `ChatRejected` (the send that gets its
//! sender kicked too: `Kicked`, before the disconnect, which the transport
//! delivers after it). Within a tick a client receives all
//! its `ChatLine`s (in `seq` order) before its `ChatRejected`s: the lines
//! are sent by the routing system itself (a [`NetSender`]: each message is
//! serialized once, each recipient's copy only adds its `seq` and
//! `reply_to`), the refusals as [`ToClient`] messages after the tick's
//! gameplay; so clients must match answers by `client_ref`, not by arrival
//! order.
//!
//! Rates and durations are in seconds of wall time, counted in the periods
//! each tick stands for ([`TickStats::periods_this_tick`]), not in ticks
//! run: a server that falls behind its tick rate refills buckets, ends
//! mutes and forgets offences as fast as one on schedule, so that players
//! sending at the advertised rate are not refused, muted and kicked
//! exactly when the server struggles.
//!
//! Session rule: a player is a chat member from its [`ClientConnected`]
//! (the handshake is done and its entity exists) to its
//! [`ClientDisconnected`]; anything else is ignored and counted. A
//! session's messages come before its end, so what it sent in the tick it
//! left is still said; lines go to the session they were numbered for,
//! never to the next session of the same account.

mod room;

use std::collections::HashMap;
use std::sync::Arc;

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use glam::Vec2;
use shared::io::{ClientId, NetCommand};
use shared::protocol::channels;
use shared::protocol::chat::{
    ChatLine, ChatLineBody, ChatRejected, ChatScope, ChatSend, EncodedChatLine,
};
use shared::transport::DisconnectReason;

pub use room::{
    ChatOutput, ChatRoom, DELIVERY_OVERHEAD_BYTES, SYSTEM_NAME, Whereabouts, clean_text,
};

use crate::config::ServerConfig;
use crate::console::{AdminKick, AdminSay};
use crate::interest::SpatialGrid;
use crate::metrics::{Counter, Metrics};
use crate::movement::MovementSystems;
use crate::net::{
    ClientConnected, ClientDisconnected, DepartedPositions, FromClient, NetAppExt, NetSender,
    Outbox, SessionChange, ToClient, session_changes,
};
use crate::tick::TickStats;
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
    /// Sustained messages per second of wall time once the burst is spent
    /// (default 1), however many ticks the server manages in it.
    pub rate_per_sec: f64,
    /// The area-of-interest radius: how far the nearby scope reaches, in
    /// metres (default 50; the server sets it to the interest radius).
    /// Players without a [`Position`] are nowhere: their nearby lines reach
    /// only themselves.
    #[serde(skip)]
    pub nearby_radius: f32,
    /// Offences (rate-limited sends, sends while muted) that earn a mute
    /// (default 5), each within a minute of the one before: offences
    /// further apart start the count again.
    pub mute_after_offences: u32,
    /// How long a mute lasts, in seconds of wall time (default 30).
    pub mute_secs: u32,
    /// Mutes after which the next would-be mute is a kick instead (default
    /// 2), each within ten minutes of the end of the one before: the
    /// offender is disconnected with [`DisconnectReason::Kicked`]. Leaving
    /// and coming back does not start the count again.
    pub kick_after_mutes: u32,
    /// Most players who left with something to answer for whose chat
    /// standing is kept at once, for their return: a mute, offences and
    /// spent tokens for a minute (or to the mute's end), mutes for as long
    /// as they count toward a kick. Past it the standing that runs out
    /// soonest is forgotten, and its player comes back with a clean slate.
    /// Default 10,000, about a megabyte; 0 forgets at once.
    pub rejoin_memory_players: u32,
    /// The tick rate, to turn seconds into periods of wall time (default:
    /// the server's).
    #[serde(skip)]
    pub tick_hz: u32,
    /// Send "X joined" / "X left" system lines to everyone (default
    /// false: clients that do not expect chat traffic, such as the
    /// end-to-end test's, would see unexpected messages; turn it on for a
    /// game). Each line costs its player a token of its chat bucket, and
    /// with none left, or while the player is muted, is not sent:
    /// reconnecting again and again sends everyone no more lines than
    /// chatting would.
    pub announce_sessions: bool,
    /// Most bytes of chat one tick may send, every copy of every line
    /// counted (text, name and [`DELIVERY_OVERHEAD_BYTES`] a copy;
    /// default 8 MiB). A line to everyone costs its size times the
    /// players: beyond the budget, sends are refused `RateLimited` (not
    /// counted as an offence; the token of a sender's first such refusal
    /// in a tick kept, the others spent) until the next tick, and
    /// announcements of joins and leaves are left out. A tick's first line
    /// always goes, and so does the console's `say` (counted too).
    pub max_fanout_bytes_per_tick: usize,
    /// Most bytes of other players' lines one player may be sent in a
    /// burst (default 256 KiB), counted as the fan-out bound counts a copy;
    /// refilled at [`recipient_bytes_per_sec`](Self::recipient_bytes_per_sec).
    /// A player's chat channel holds at most
    /// [`RELIABLE_QUEUE_BYTES`](shared::protocol::channels::RELIABLE_QUEUE_BYTES)
    /// queued and unacknowledged, past which it is disconnected
    /// (`SendQueueFull`): without
    /// this bound, a few dozen accounts whispering one player at once
    /// could cut them off with a burst (the rate does not follow the
    /// player's link: one that drains less than it, for long, is still cut
    /// off). Past it a whisper to them is refused
    /// `RateLimited` (no offence, as for the fan-out bound) and their copy
    /// of a nearby or global line is withheld (`chat_withheld_total`);
    /// their own lines' copies always go.
    pub recipient_burst_bytes: usize,
    /// The sustained rate of [`recipient_burst_bytes`](Self::recipient_burst_bytes),
    /// in bytes a second of wall time (default 64 KiB: hundreds of lines a
    /// second, more than anyone reads).
    pub recipient_bytes_per_sec: usize,
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
            rejoin_memory_players: 10_000,
            tick_hz: 30,
            announce_sessions: false,
            max_fanout_bytes_per_tick: 8 << 20,
            recipient_burst_bytes: 256 << 10,
            recipient_bytes_per_sec: 64 << 10,
        }
    }
}

impl ChatConfig {
    /// Longest `max_chars` accepted: a line is fanned out to everyone in
    /// range.
    pub const MAX_CHARS: usize = 4_096;
    /// Largest `burst` accepted.
    pub const MAX_BURST: u32 = 1_000_000;
    /// Highest `rate_per_sec` accepted (a load test's "unlimited").
    pub const MAX_RATE_PER_SEC: f64 = 1_000_000.0;
    /// Smallest `max_fanout_bytes_per_tick` accepted.
    pub const MIN_FANOUT_BYTES_PER_TICK: usize = 64 * 1024;
    /// Smallest `recipient_burst_bytes` accepted: room for a copy of the
    /// longest line.
    pub const MIN_RECIPIENT_BURST_BYTES: usize = 64 * 1024;
    /// Smallest `recipient_bytes_per_sec` accepted.
    pub const MIN_RECIPIENT_BYTES_PER_SEC: usize = 1024;
    /// Highest `recipient_bytes_per_sec` accepted.
    pub const MAX_RECIPIENT_BYTES_PER_SEC: usize = 1 << 30;

    /// Checks values the file may set; the message says what is wrong.
    ///
    /// # Errors
    /// A value that cannot run a chat (a zero burst refuses every line
    /// and then mutes and kicks the sender; an infinite rate overflows the
    /// token bucket).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_CHARS).contains(&self.max_chars) {
            return Err(format!(
                "max_chars must be 1 to {}, got {}",
                Self::MAX_CHARS,
                self.max_chars
            ));
        }
        if !(1..=Self::MAX_BURST).contains(&self.burst) {
            return Err(format!(
                "burst must be 1 to {}, got {}",
                Self::MAX_BURST,
                self.burst
            ));
        }
        if !(self.rate_per_sec > 0.0 && self.rate_per_sec <= Self::MAX_RATE_PER_SEC) {
            return Err(format!(
                "rate_per_sec must be above 0 and at most {}, got {}",
                Self::MAX_RATE_PER_SEC,
                self.rate_per_sec
            ));
        }
        if self.mute_after_offences == 0 {
            return Err("mute_after_offences must be at least 1".to_owned());
        }
        if self.max_fanout_bytes_per_tick < Self::MIN_FANOUT_BYTES_PER_TICK {
            return Err(format!(
                "max_fanout_bytes_per_tick must be at least {}, got {}",
                Self::MIN_FANOUT_BYTES_PER_TICK,
                self.max_fanout_bytes_per_tick
            ));
        }
        let queue = shared::protocol::channels::RELIABLE_QUEUE_BYTES;
        if !(Self::MIN_RECIPIENT_BURST_BYTES..=queue).contains(&self.recipient_burst_bytes) {
            return Err(format!(
                "recipient_burst_bytes must be {} to {queue} (a chat channel's send queue, past \
                 which its player is cut off), got {}",
                Self::MIN_RECIPIENT_BURST_BYTES,
                self.recipient_burst_bytes
            ));
        }
        if !(Self::MIN_RECIPIENT_BYTES_PER_SEC..=Self::MAX_RECIPIENT_BYTES_PER_SEC)
            .contains(&self.recipient_bytes_per_sec)
        {
            return Err(format!(
                "recipient_bytes_per_sec must be {} to {}, got {}",
                Self::MIN_RECIPIENT_BYTES_PER_SEC,
                Self::MAX_RECIPIENT_BYTES_PER_SEC,
                self.recipient_bytes_per_sec
            ));
        }
        Ok(())
    }
}

/// The chat systems (`FixedUpdate`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatSystems {
    /// Messages of the sessions in place that end this tick, then joins
    /// and leaves in the order they happened (a session that began this
    /// tick says its messages as it leaves), then messages of the other
    /// sessions, then admin lines.
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
    withheld: Counter,
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
            withheld: counter(
                "chat_withheld_total",
                "Copies of chat lines not sent: their recipient's chat bound was spent.",
            ),
        };
        app.init_resource::<Outbox>()
            .add_message::<AdminSay>()
            .add_message::<AdminKick>()
            .add_message::<ClientConnected>()
            .add_message::<ClientDisconnected>()
            .add_client_message::<ChatSend>(channels::CHAT)
            .add_server_message::<ChatLine>(channels::CHAT)
            .add_server_message::<ChatRejected>(channels::CHAT)
            .insert_resource(ChatState(ChatRoom::new(config.clone())))
            .insert_resource(config)
            .insert_resource(metrics)
            .init_resource::<ChatMembers>()
            .add_systems(
                FixedUpdate,
                route
                    .in_set(ChatSystems::Route)
                    // A newcomer's position is in place (nearby lines).
                    .after(MovementSystems::Integrate),
            );
    }
}

/// Members' positions for one tick's nearby messages: a grid over every
/// member with a [`Position`], built only on ticks with a nearby message,
/// so that a message costs its neighbourhood, not a look-up per member.
#[derive(Default)]
struct NearbyIndex {
    members: Vec<(Vec2, u64)>,
    grid: SpatialGrid<u64>,
}

impl NearbyIndex {
    fn rebuild(&mut self, located: impl Iterator<Item = (u64, Vec2)>, cell: f32) {
        self.members.clear();
        self.members
            .extend(located.map(|(account, position)| (position, account)));
        self.grid.rebuild(&self.members, cell);
    }
}

/// Where members are, for [`ChatRoom::say`]: `position` looks one up,
/// the index (on ticks with nearby messages) answers area searches.
struct Located<'a, P> {
    position: P,
    index: Option<&'a NearbyIndex>,
}

impl<P: Fn(u64) -> Option<Vec2>> Whereabouts for Located<'_, P> {
    fn position(&self, account: u64) -> Option<Vec2> {
        (self.position)(account)
    }

    fn within(&self, origin: Vec2, radius: f32, out: &mut Vec<u64>) -> bool {
        let Some(index) = self.index else {
            return false;
        };
        index.grid.query(origin, radius, |position, &account| {
            if position.distance_squared(origin) <= radius * radius {
                out.push(account);
            }
        });
        true
    }
}

/// Buffers [`route`] reuses from tick to tick.
#[derive(Default)]
struct RouteScratch {
    out: Vec<ChatOutput>,
    nearby: NearbyIndex,
    /// The body of the line being sent, serialized once for its recipients.
    encoded: EncodedChatLine,
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
    mut kicks: MessageReader<AdminKick>,
    stats: Option<Res<TickStats>>,
    positions: Query<&'static Position>,
    departed: Option<Res<DepartedPositions>>,
    mut lines: NetSender<ChatLine>,
    mut rejections: MessageWriter<ToClient<ChatRejected>>,
    metrics: Res<ChatMetrics>,
    mut scratch: Local<RouteScratch>,
) {
    let RouteScratch {
        out,
        nearby,
        encoded,
    } = &mut *scratch;
    let room = &mut room.0;
    // 1 when no runner measures the ticks (tests that update by hand).
    room.tick(stats.map_or(1, |stats| stats.periods_this_tick()));
    out.clear();
    let mut sink = Sink {
        lines: &mut lines,
        rejections: &mut rejections,
        metrics: &metrics,
        encoded,
    };
    let changes = session_changes(&mut connected, &mut disconnected);
    let ending: Vec<ClientId> = changes
        .iter()
        .filter_map(|change| match change {
            SessionChange::Left(left) => Some(left.client),
            SessionChange::Joined(_) => None,
        })
        .collect();
    // What sessions in place that end this tick sent comes first, said to
    // the members of that moment: a client's messages come before its
    // end, so a player's last line before it left is still said.
    let (in_place, mut after): (Vec<&FromClient<ChatSend>>, Vec<_>) = sends
        .read()
        .partition(|send| members.is_current(send.client));
    let (last_words, staying): (Vec<_>, Vec<_>) = in_place
        .into_iter()
        .partition(|send| ending.contains(&send.client));
    let empty = HashMap::new();
    let departed = departed.as_deref().map_or(&empty, |d| &d.0);
    let places = Places {
        positions: &positions,
        departed,
    };
    say_all(room, &members, &last_words, &places, nearby, &metrics, out);
    sink.emit(out, &members);
    // Each change, then its lines at once: a line goes to the session it
    // was numbered for, not to the next session of its account.
    for change in changes {
        match change {
            SessionChange::Joined(joined) => {
                let account = joined.client.account;
                members
                    .clients
                    .insert(account, (joined.client, joined.entity));
                room.join(account, format!("player-{account}"), out);
            }
            SessionChange::Left(left) => {
                if members.is_current(left.client) {
                    // A session that began this tick says what it sent
                    // before it ends, to the members of that moment.
                    let last: Vec<_> = after
                        .iter()
                        .copied()
                        .filter(|send| send.client == left.client)
                        .collect();
                    if !last.is_empty() {
                        after.retain(|send| send.client != left.client);
                        say_all(room, &members, &last, &places, nearby, &metrics, out);
                        sink.emit(out, &members);
                    }
                    members.clients.remove(&left.client.account);
                    room.leave(left.client.account, out);
                }
            }
        }
        sink.emit(out, &members);
    }
    // Then what the sessions in place that stay sent, and what those that
    // began this tick sent: to the sessions of this moment, so that a
    // whisper to a player who left this tick is refused, and one who
    // came back gets it.
    let (after, stale): (Vec<_>, Vec<_>) = staying
        .into_iter()
        .chain(after)
        .partition(|send| members.is_current(send.client));
    for _ in stale {
        metrics.outside_session.inc();
    }
    say_all(room, &members, &after, &places, nearby, &metrics, out);
    for say in says.read() {
        room.announce(&say.text, out);
    }
    // The reason reaches the player before its disconnect: the network
    // plugin sends a tick's disconnects after everything else.
    for kick in kicks.read() {
        room.system_to(kick.client.0, &format!("kicked: {}", kick.reason), out);
    }
    sink.emit(out, &members);
}

impl ChatMembers {
    /// Whether `client` is its account's session in chat.
    fn is_current(&self, client: ClientId) -> bool {
        self.clients.get(&client.account).map(|(c, _)| *c) == Some(client)
    }
}

/// Has the members of `sends` (in session) say their lines.
/// Where members stand: their entities' positions, or, for one who left
/// this tick (its entity gone), where it last stood.
struct Places<'a, 'w, 's> {
    positions: &'a Query<'w, 's, &'static Position>,
    departed: &'a HashMap<u64, Vec2>,
}

fn say_all(
    room: &mut ChatRoom,
    members: &ChatMembers,
    sends: &[&FromClient<ChatSend>],
    places: &Places<'_, '_, '_>,
    nearby: &mut NearbyIndex,
    metrics: &ChatMetrics,
    out: &mut Vec<ChatOutput>,
) {
    let any_nearby = sends
        .iter()
        .any(|send| send.message.scope == ChatScope::Nearby);
    if any_nearby {
        let located = members
            .clients
            .iter()
            .filter_map(|(&account, (_, entity))| {
                places.positions.get(*entity).ok().map(|p| (account, p.0))
            });
        nearby.rebuild(located, room.config().nearby_radius);
    }
    for FromClient { client, message } in sends {
        let located = Located {
            position: |account: u64| {
                let here = members
                    .clients
                    .get(&account)
                    .and_then(|(_, entity)| places.positions.get(*entity).ok())
                    .map(|p| p.0);
                here.or_else(|| places.departed.get(&account).copied())
            },
            index: any_nearby.then_some(&*nearby),
        };
        if !room.say(
            client.account,
            message.client_ref,
            &message.scope,
            &message.text,
            located,
            out,
        ) {
            metrics.outside_session.inc();
        }
    }
}

/// Where the room's outputs go.
struct Sink<'a, 'l, 'r> {
    lines: &'a mut NetSender<'l, ChatLine>,
    rejections: &'a mut MessageWriter<'r, ToClient<ChatRejected>>,
    metrics: &'a ChatMetrics,
    encoded: &'a mut EncodedChatLine,
}

impl Sink<'_, '_, '_> {
    /// Sends `out` to the sessions its accounts have in `members` now, and
    /// empties it.
    fn emit(&mut self, out: &mut Vec<ChatOutput>, members: &ChatMembers) {
        // Consecutive lines of one message share its body: serialize it once.
        let mut encoded_body: Option<&Arc<ChatLineBody>> = None;
        for output in out.iter() {
            match output {
                ChatOutput::Line {
                    to,
                    seq,
                    reply_to,
                    line,
                } => {
                    let Some((client, _)) = members.clients.get(to) else {
                        continue;
                    };
                    if !encoded_body.is_some_and(|body| Arc::ptr_eq(body, line)) {
                        if let Err(error) = self.encoded.set(line) {
                            tracing::error!(%error, "cannot encode a chat line");
                            continue;
                        }
                        encoded_body = Some(line);
                    }
                    self.metrics.lines.inc();
                    self.lines
                        .send(*client, &self.encoded.copy_for(*seq, *reply_to));
                }
                ChatOutput::Rejected { to, rejected } => {
                    if let Some((client, _)) = members.clients.get(to) {
                        self.metrics.rejected.inc();
                        self.rejections
                            .write(ToClient::one(*client, rejected.clone()));
                    }
                }
                ChatOutput::Withheld { .. } => self.metrics.withheld.inc(),
                ChatOutput::Kick { account } | ChatOutput::KickAgain { account } => {
                    if let Some((client, _)) = members.clients.get(account) {
                        if matches!(output, ChatOutput::Kick { .. }) {
                            self.metrics.kicked.inc();
                            tracing::info!(account, "kicking a chat flooder");
                        }
                        self.lines.outbox().push(NetCommand::Disconnect {
                            client: *client,
                            reason: DisconnectReason::Kicked,
                        });
                    }
                }
            }
        }
        out.clear();
    }
}

#[cfg(test)]
mod tests;
