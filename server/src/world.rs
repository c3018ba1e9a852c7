//! What every gameplay plugin shares about the world: where things are.
//!
//! The world is a 2D plane in metres. The movement plugin owns how
//! [`Position`] changes; other plugins (interest, chat's nearby scope,
//! item pickup range) read it.

use bevy_ecs::component::Component;
use glam::Vec2;

/// Where an entity is, in metres.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Position(pub Vec2);
