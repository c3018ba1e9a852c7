//! The typed message API: register a type on a channel once, then read
//! [`FromClient<T>`] and write [`ToClient<T>`].
//!
//! Outbound order within a tick: messages of one type go out in the order
//! they were written; different types go out in the order the types were
//! registered with [`NetAppExt::add_server_message`] (all of the first
//! type's messages of the tick, then all of the second's, ...). On one
//! ordered channel a client therefore receives, say, every `ChatLine` of a
//! tick before any `ChatRejected` of that tick, whatever order the
//! gameplay systems wrote them in.

use bevy_app::{App, FixedPostUpdate};
use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;
use shared::io::{ClientId, NetCommand, NetEvent};
use shared::protocol::{self, EncodeAs, EncodeBuffer, NetMessage};
use shared::transport::ChannelId;

use super::{NetSystems, Outbox};

/// A message from a client, decoded.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FromClient<T: NetMessage> {
    /// The sender.
    pub client: ClientId,
    /// The message.
    pub message: T,
}

/// Who receives a [`ToClient`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// One client.
    One(ClientId),
    /// Several clients.
    Many(Vec<ClientId>),
    /// Every connected client.
    All,
    /// Every connected client but one player: that client's account, in
    /// whichever session (one that joined since, too).
    AllExcept(ClientId),
}

/// A message for clients; encoded once, however many receive it.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct ToClient<T: NetMessage> {
    /// The recipients.
    pub to: Recipients,
    /// The message.
    pub message: T,
}

impl<T: NetMessage> ToClient<T> {
    /// A message for one client.
    pub fn one(client: ClientId, message: T) -> Self {
        Self {
            to: Recipients::One(client),
            message,
        }
    }
}

type Decoder = fn(&mut World, ClientId, &[u8]) -> bool;

/// Message id → (channel, decoder) for client-to-server types.
#[derive(Resource, Default)]
pub(super) struct InboundRegistry {
    /// Sorted by id: a game registers a handful of types, and every
    /// message received looks its id up here.
    decoders: Vec<(u16, ChannelId, Decoder)>,
    /// The receive system's buffer of drained events, reused every tick.
    pub(super) pending: Vec<NetEvent>,
}

impl InboundRegistry {
    /// Decodes and writes one message; false when it is not acceptable
    /// (unknown id, wrong channel, malformed body).
    pub(super) fn dispatch(
        &self,
        world: &mut World,
        client: ClientId,
        channel: ChannelId,
        payload: &[u8],
    ) -> bool {
        let Some(id) = protocol::message_id(payload) else {
            return false;
        };
        match self.decoders.binary_search_by_key(&id, |&(id, ..)| id) {
            Ok(at) => match self.decoders[at] {
                (_, expected, decode) if expected == channel => decode(world, client, payload),
                _ => false,
            },
            Err(_) => false,
        }
    }
}

fn decode_into<T: NetMessage>(world: &mut World, client: ClientId, payload: &[u8]) -> bool {
    match protocol::decode::<T>(payload) {
        Ok(message) => {
            world.write_message(FromClient { client, message });
            true
        }
        Err(error) => {
            tracing::debug!(account = client.account, %error, "malformed message");
            false
        }
    }
}

fn encode_outbound<T: NetMessage>(
    mut messages: MessageReader<ToClient<T>>,
    mut outbox: ResMut<Outbox>,
    mut channel: ResMut<OutboundChannel<T>>,
) {
    for ToClient { to, message } in messages.read() {
        let payload = match channel.buffer.encode::<T>(message) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, id = T::ID, "cannot encode message");
                continue;
            }
        };
        let channel = channel.channel;
        let mut send = |client: ClientId| {
            outbox.push(NetCommand::Send {
                client,
                channel,
                payload: payload.clone(),
            });
        };
        match to {
            Recipients::One(client) => send(*client),
            Recipients::Many(list) => list.iter().copied().for_each(send),
            Recipients::All => outbox.push(NetCommand::Broadcast {
                channel,
                payload: payload.clone(),
                except: None,
            }),
            // One command, not one a player: a message every player sees
            // costs the game's outbox the same at 5 players or 5,000.
            Recipients::AllExcept(except) => outbox.push(NetCommand::Broadcast {
                channel,
                payload: payload.clone(),
                except: Some(*except),
            }),
        }
    }
}

/// The encoder of the `n`-th registered server message type; each runs
/// after the previous one, so types are encoded in registration order.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct EncodeOrder(usize);

/// How many server message types have been registered.
#[derive(Resource, Default)]
struct ServerMessageTypes(usize);

#[derive(Resource)]
struct OutboundChannel<T> {
    channel: ChannelId,
    buffer: EncodeBuffer,
    _type: std::marker::PhantomData<fn() -> T>,
}

/// Sends `T` to one client at once: encoded into this tick's batch when
/// [`send`](Self::send) is called (before the tick's [`ToClient`]
/// messages), without taking the message. For bulk per-client messages
/// such as snapshots; `T` must be registered with
/// [`NetAppExt::add_server_message`].
#[derive(SystemParam)]
pub struct NetSender<'w, T: NetMessage> {
    outbox: ResMut<'w, Outbox>,
    channel: ResMut<'w, OutboundChannel<T>>,
}

impl<T: NetMessage> NetSender<'_, T> {
    /// Queues `message` (a `T`, or anything that encodes as one, such as
    /// one recipient's copy of a message serialized once) for `client`.
    pub fn send(&mut self, client: ClientId, message: &impl EncodeAs<T>) {
        match self.channel.buffer.encode_as::<T>(message) {
            Ok(payload) => {
                let channel = self.channel.channel;
                self.outbox.push(NetCommand::Send {
                    client,
                    channel,
                    payload,
                });
            }
            Err(error) => tracing::error!(%error, id = T::ID, "cannot encode message"),
        }
    }

    /// This tick's batch, for other commands (a disconnect) from the same
    /// system.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }
}

/// Registers message types with the network plugin.
pub trait NetAppExt {
    /// Clients may send `T` on `channel`; systems read it as [`FromClient<T>`].
    /// The same type on another channel counts as a protocol strike.
    fn add_client_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self;
    /// Systems write [`ToClient<T>`]; it goes out on `channel`. Within a
    /// tick, `T`'s messages are encoded in write order, after those of every
    /// type registered before `T` and before those of every type registered
    /// after it.
    fn add_server_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self;
}

impl NetAppExt for App {
    fn add_client_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self {
        self.add_message::<FromClient<T>>();
        let mut registry = self.world_mut().get_resource_or_init::<InboundRegistry>();
        match registry
            .decoders
            .binary_search_by_key(&T::ID, |&(id, ..)| id)
        {
            Ok(_) => {
                tracing::error!(id = T::ID, "message id registered twice; keeping the first");
            }
            Err(at) => registry
                .decoders
                .insert(at, (T::ID, channel, decode_into::<T>)),
        }
        self
    }

    fn add_server_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self {
        // A second encoder would read every message too: each sent twice.
        if self.world().contains_resource::<OutboundChannel<T>>() {
            tracing::error!(
                id = T::ID,
                "message type registered twice; keeping the first"
            );
            return self;
        }
        let slot = {
            let mut types = self
                .world_mut()
                .get_resource_or_init::<ServerMessageTypes>();
            types.0 += 1;
            types.0 - 1
        };
        if let Some(previous) = slot.checked_sub(1) {
            self.configure_sets(
                FixedPostUpdate,
                EncodeOrder(slot).after(EncodeOrder(previous)),
            );
        }
        self.add_message::<ToClient<T>>()
            .insert_resource(OutboundChannel::<T> {
                channel,
                buffer: EncodeBuffer::default(),
                _type: std::marker::PhantomData,
            })
            .add_systems(
                FixedPostUpdate,
                encode_outbound::<T>
                    .in_set(NetSystems::Encode)
                    .in_set(EncodeOrder(slot)),
            )
    }
}

#[cfg(test)]
mod tests {
    use bevy_app::App;
    use shared::netcode::ClientIndex;
    use shared::protocol::chat::{ChatKind, ChatLine, ChatRejectReason, ChatRejected};
    use shared::protocol::messages::{Emote, Welcome};
    use shared::protocol::{self, NetMessage, channels};

    use super::*;

    fn line(seq: u64) -> ChatLine {
        ChatLine {
            seq,
            reply_to: None,
            from: None,
            from_name: "server".into(),
            kind: ChatKind::System,
            text: format!("line {seq}"),
        }
    }

    #[test]
    fn a_message_for_everyone_but_one_is_one_command() {
        let mut app = App::new();
        app.init_resource::<Outbox>()
            .add_server_message::<Emote>(channels::EVENTS);
        let sender = ClientId {
            slot: ClientIndex::from_slot(3),
            account: 7,
            session: 1,
        };
        app.world_mut().write_message(ToClient {
            to: Recipients::AllExcept(sender),
            message: Emote { from: 7, emote: 1 },
        });
        app.world_mut().run_schedule(FixedPostUpdate);
        let commands = &app.world().resource::<Outbox>().commands;
        assert!(
            matches!(
                commands.as_slice(),
                [NetCommand::Broadcast { except: Some(c), .. }] if *c == sender
            ),
            "{commands:?}"
        );
    }

    /// Two plugins registering one type (a fork, a shared message) sent
    /// every message of it twice.
    #[test]
    fn a_server_message_registered_twice_is_sent_once() {
        let mut app = App::new();
        app.init_resource::<Outbox>()
            .add_server_message::<Emote>(channels::EVENTS)
            .add_server_message::<Emote>(channels::CHAT);
        app.world_mut().write_message(ToClient {
            to: Recipients::All,
            message: Emote { from: 7, emote: 1 },
        });
        app.world_mut().run_schedule(FixedPostUpdate);
        let commands = &app.world().resource::<Outbox>().commands;
        assert!(
            matches!(
                commands.as_slice(),
                [NetCommand::Broadcast { channel, .. }] if *channel == channels::EVENTS
            ),
            "{commands:?}"
        );
    }

    #[test]
    fn types_are_encoded_in_registration_order_and_messages_in_write_order() {
        let mut app = App::new();
        app.init_resource::<Outbox>()
            .add_server_message::<ChatLine>(channels::CHAT)
            .add_server_message::<ChatRejected>(channels::CHAT)
            .add_server_message::<Welcome>(channels::CONTROL);
        let world = app.world_mut();
        // Written in the opposite order to registration, and interleaved.
        world.write_message(ToClient {
            to: Recipients::All,
            message: Welcome {
                client_id: 1,
                tick_hz: 30,
                rules: shared::movement::MovementRules::default(),
            },
        });
        world.write_message(ToClient {
            to: Recipients::All,
            message: ChatRejected {
                client_ref: 9,
                reason: ChatRejectReason::Empty,
                message: "message is empty".into(),
            },
        });
        world.write_message(ToClient {
            to: Recipients::All,
            message: line(1),
        });
        world.write_message(ToClient {
            to: Recipients::All,
            message: line(2),
        });
        world.run_schedule(FixedPostUpdate);

        let sent: Vec<(u16, Option<u64>)> = world
            .resource::<Outbox>()
            .commands
            .iter()
            .map(|command| match command {
                NetCommand::Broadcast { payload, .. } => {
                    let id = protocol::message_id(payload).unwrap_or(u16::MAX);
                    let seq = protocol::decode::<ChatLine>(payload).ok().map(|l| l.seq);
                    (id, seq)
                }
                other => panic!("unexpected command {other:?}"),
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                (ChatLine::ID, Some(1)),
                (ChatLine::ID, Some(2)),
                (ChatRejected::ID, None),
                (Welcome::ID, None),
            ]
        );
    }
}
