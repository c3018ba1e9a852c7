//! Client-side prediction and reconciliation.

use std::collections::VecDeque;

use glam::Vec2;

use super::MovementRules;
use crate::protocol::movement::MoveInput;

/// Inputs kept for replay. When more are unacknowledged (a stalled
/// connection), the oldest are forgotten: a later reconciliation then
/// replays fewer inputs and the correction is larger, never unbounded.
pub const MAX_PENDING_INPUTS: usize = 128;

/// Predicts the local player's position from its own inputs and
/// reconciles with the server's authoritative position.
///
/// The server applies each input for exactly one tick with
/// [`MovementRules::step`]; the predictor does the same, and on every
/// snapshot replays the inputs the server had not yet applied on top of
/// the server's position. Snapshot positions are quantized (1/32 m), so a
/// reconciled position may differ from the server's by up to 1/64 m per
/// axis.
#[derive(Debug, Clone)]
pub struct Predictor {
    rules: MovementRules,
    dt: f32,
    position: Vec2,
    next_seq: u32,
    pending: VecDeque<MoveInput>,
}

impl Predictor {
    /// A predictor starting at `position`, ticking every `dt` seconds
    /// ([`tick_dt`](super::tick_dt) of `Welcome::tick_hz`, as the server).
    pub fn new(rules: MovementRules, dt: f32, position: Vec2) -> Self {
        Self {
            rules,
            dt,
            position,
            next_seq: 1,
            pending: VecDeque::with_capacity(MAX_PENDING_INPUTS),
        }
    }

    /// Records this tick's input, moves the prediction and returns the
    /// message to send.
    pub fn input(&mut self, velocity: Vec2, ack_snapshot: u32) -> MoveInput {
        let input = MoveInput {
            seq: self.next_seq,
            velocity,
            ack_snapshot,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.pending.len() == MAX_PENDING_INPUTS {
            self.pending.pop_front();
        }
        self.pending.push_back(input);
        self.position = self.rules.step(self.position, velocity, self.dt);
        input
    }

    /// Takes the server's position as of input `last_input`, forgets the
    /// inputs it covers and replays the rest. Returns how far the
    /// prediction moved (0 when it was right).
    pub fn reconcile(&mut self, authoritative: Vec2, last_input: u32) -> f32 {
        while self.pending.front().is_some_and(|i| i.seq <= last_input) {
            self.pending.pop_front();
        }
        let mut position = authoritative;
        for input in &self.pending {
            position = self.rules.step(position, input.velocity, self.dt);
        }
        let correction = position.distance(self.position);
        self.position = position;
        correction
    }

    /// Predicts from now on with the server's `rules` and tick period
    /// `dt` ([`tick_dt`](super::tick_dt)): they come in its welcome, which a client may get after its
    /// first inputs (the server welcomes in its next tick). The inputs
    /// waiting for the server are replayed with them at the next
    /// [`reconcile`](Self::reconcile); the sequence goes on.
    pub fn set_rules(&mut self, rules: MovementRules, dt: f32) {
        self.rules = rules;
        self.dt = dt;
    }

    /// The predicted position.
    pub fn position(&self) -> Vec2 {
        self.position
    }

    /// Inputs sent but not yet applied by the server (as far as we know).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciling_with_an_agreeing_server_changes_nothing() {
        let rules = MovementRules::default();
        let dt = 1.0 / 30.0;
        let mut client = Predictor::new(rules, dt, Vec2::ZERO);
        let mut server = Vec2::ZERO;
        let mut inputs = Vec::new();
        for i in 0..10 {
            inputs.push(client.input(Vec2::new(i as f32, 2.0), 0));
        }
        for input in &inputs[..6] {
            server = rules.step(server, input.velocity, dt);
        }
        let correction = client.reconcile(server, inputs[5].seq);
        assert!(correction < 1e-4, "{correction}");
        assert_eq!(client.pending(), 4);
        // The server moved us elsewhere (a wall, a knock-back): we follow.
        let correction = client.reconcile(server + Vec2::X, inputs[5].seq);
        assert!((correction - 1.0).abs() < 1e-4);
    }
}
