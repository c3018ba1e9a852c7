//! Movement as both sides compute it: the integration step the server runs
//! and clients predict with ([`step`](MovementRules::step)), snapshot decoding with delta
//! application ([`SnapshotReceiver`]), and client-side prediction with
//! reconciliation ([`Predictor`]). No bevy, no clock: the caller passes the
//! tick period, [`tick_dt`] of the tick rate on both sides.
//!
//! A game client's loop, once per tick:
//!
//! 1. for each received [`Snapshot`](crate::protocol::movement::Snapshot):
//!    [`SnapshotReceiver::apply`] (its working lists in an [`ApplyScratch`]
//!    you keep; one serves any number of receivers); on success,
//!    [`Predictor::reconcile`] with your own entity's position and
//!    `last_input`;
//! 2. [`Predictor::input`] with the intended velocity and
//!    [`SnapshotReceiver::ack`]; send the returned
//!    [`MoveInput`](crate::protocol::movement::MoveInput) on `MOVEMENT`.

mod predict;
mod receiver;

use glam::Vec2;

pub use predict::{MAX_PENDING_INPUTS, Predictor};
pub use receiver::{
    ApplyError, ApplyScratch, CLIENT_SNAPSHOT_HISTORY, MAX_SNAPSHOT_ENTITIES, SnapshotReceiver,
    ViewChanges,
};

/// The rules of motion both sides agree on (the server sends its own in
/// [`Welcome`](crate::protocol::messages::Welcome)).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MovementRules {
    /// Fastest allowed speed, metres per second.
    pub max_speed: f32,
    /// Lowest corner of the world, metres.
    pub world_min: Vec2,
    /// Highest corner of the world, metres.
    pub world_max: Vec2,
}

impl Default for MovementRules {
    /// 8 m/s in a 2 km × 2 km world centred on the origin.
    fn default() -> Self {
        Self {
            max_speed: 8.0,
            world_min: Vec2::splat(-1000.0),
            world_max: Vec2::splat(1000.0),
        }
    }
}

/// The `dt` of one tick at `tick_hz` ticks a second (taken as at least
/// one) for [`MovementRules::step`]: `1 / tick_hz`, the one way the server
/// and its clients compute it, so that a prediction agrees with the server
/// to the bit. (The server's tick period, whole nanoseconds, is another
/// `f32`: 0.033333331 s at 30 Hz, against 0.033333335 s.)
pub fn tick_dt(tick_hz: u16) -> f32 {
    1.0 / f32::from(tick_hz.max(1))
}

impl MovementRules {
    /// Whether these rules can be followed: a positive finite speed and a
    /// world whose corners are finite and in order (a client checks what
    /// a server sends before it predicts with it).
    pub fn is_valid(&self) -> bool {
        self.max_speed.is_finite()
            && self.max_speed > 0.0
            && self.world_min.is_finite()
            && self.world_max.is_finite()
            && self.world_min.cmplt(self.world_max).all()
    }

    /// `velocity` with its length limited to [`Self::max_speed`]; `None`
    /// when it is not finite.
    pub fn clamp_velocity(&self, velocity: Vec2) -> Option<Vec2> {
        if !velocity.is_finite() {
            return None;
        }
        if velocity.length_squared().is_finite() {
            return Some(velocity.clamp_length_max(self.max_speed));
        }
        // A finite velocity whose squared length overflows f32 (1e30 m/s) is
        // far over the limit: full speed along its heading.
        let heading = (velocity / velocity.abs().max_element()).normalize_or_zero();
        Some(heading * self.max_speed)
    }

    /// One tick of motion: `position + clamped velocity * dt`, kept inside
    /// the world. A non-finite velocity does not move.
    pub fn step(&self, position: Vec2, velocity: Vec2, dt: f32) -> Vec2 {
        let velocity = self.clamp_velocity(velocity).unwrap_or(Vec2::ZERO);
        (position + velocity * dt).clamp(self.world_min, self.world_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_velocities_clamp_to_max_speed_with_their_heading() {
        let rules = MovementRules::default();
        let v = rules.clamp_velocity(Vec2::new(1e30, -1e30)).unwrap();
        assert!((v.length() - rules.max_speed).abs() < 1e-4, "{v}");
        assert!(v.x > 0.0 && v.y < 0.0);
        assert_eq!(rules.clamp_velocity(Vec2::new(f32::NAN, 0.0)), None);
    }

    #[test]
    fn step_clamps_speed_and_bounds() {
        let rules = MovementRules::default();
        let p = rules.step(Vec2::ZERO, Vec2::new(100.0, 0.0), 0.5);
        assert_eq!(p, Vec2::new(4.0, 0.0));
        let p = rules.step(Vec2::splat(999.0), Vec2::splat(8.0), 1.0);
        assert_eq!(p, Vec2::splat(1000.0));
        assert_eq!(rules.step(Vec2::ONE, Vec2::NAN, 1.0), Vec2::ONE);
    }
}
