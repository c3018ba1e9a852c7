//! The typed message API: register a type on a channel once, then read
//! [`FromClient<T>`] and write [`ToClient<T>`].

use std::collections::HashMap;

use bevy_app::{App, FixedPostUpdate};
use bevy_ecs::prelude::*;
use shared::io::{ClientId, NetCommand};
use shared::protocol::{self, NetMessage};
use shared::transport::ChannelId;

use super::{Clients, NetSystems, Outbox};

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
    /// Every connected client but one.
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
    decoders: HashMap<u16, (ChannelId, Decoder)>,
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
        match self.decoders.get(&id) {
            Some(&(expected, decode)) if expected == channel => decode(world, client, payload),
            _ => false,
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
    clients: Res<Clients>,
    mut outbox: ResMut<Outbox>,
    channel: Res<OutboundChannel<T>>,
) {
    for ToClient { to, message } in messages.read() {
        let payload = match protocol::encode(message) {
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
            }),
            Recipients::AllExcept(except) => clients
                .iter()
                .map(|(c, _)| c)
                .filter(|c| c != except)
                .for_each(send),
        }
    }
}

#[derive(Resource)]
struct OutboundChannel<T> {
    channel: ChannelId,
    _type: std::marker::PhantomData<fn() -> T>,
}

/// Registers message types with the network plugin.
pub trait NetAppExt {
    /// Clients may send `T` on `channel`; systems read it as [`FromClient<T>`].
    /// The same type on another channel counts as a protocol strike.
    fn add_client_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self;
    /// Systems write [`ToClient<T>`]; it goes out on `channel`.
    fn add_server_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self;
}

impl NetAppExt for App {
    fn add_client_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self {
        self.add_message::<FromClient<T>>();
        let mut registry = self.world_mut().get_resource_or_init::<InboundRegistry>();
        match registry.decoders.entry(T::ID) {
            std::collections::hash_map::Entry::Occupied(_) => {
                tracing::error!(id = T::ID, "message id registered twice; keeping the first");
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((channel, decode_into::<T>));
            }
        }
        self
    }

    fn add_server_message<T: NetMessage>(&mut self, channel: ChannelId) -> &mut Self {
        self.add_message::<ToClient<T>>()
            .insert_resource(OutboundChannel::<T> {
                channel,
                _type: std::marker::PhantomData,
            })
            .add_systems(
                FixedPostUpdate,
                encode_outbound::<T>.in_set(NetSystems::Encode),
            )
    }
}
