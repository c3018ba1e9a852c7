//! Replay protection: a 256-packet window over 64-bit sequence numbers.
//!
//! [`ReplayWindow::already_received`] is checked before decryption and
//! [`ReplayWindow::advance`] is called only after the tag verified, as the
//! standard requires. All arithmetic is subtraction of a smaller value from a
//! larger one, so sequence numbers up to `u64::MAX` work (the overflow the
//! reference implementation once had near `u64::MAX` cannot happen here).

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

/// Number of sequence numbers the window remembers.
pub(crate) const REPLAY_WINDOW: u64 = 256;

const WORDS: usize = 4;

/// Which of the last [`REPLAY_WINDOW`] sequence numbers have been received.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayWindow {
    /// Highest sequence received so far, `None` before the first packet.
    most_recent: Option<u64>,
    /// Bit `d` set means `most_recent - d` was received (word `d / 64`).
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// A window that counts every sequence up to and including `sequence`
    /// as received: for a peer whose earlier packets under the same key
    /// (from an earlier connection with the same token) must not be
    /// accepted now.
    pub(crate) fn after(sequence: u64) -> Self {
        Self {
            most_recent: Some(sequence),
            bits: [u64::MAX; WORDS],
        }
    }

    /// Whether a packet with this sequence must be dropped: already seen, or
    /// too old to tell.
    pub(crate) fn already_received(&self, sequence: u64) -> bool {
        let Some(most_recent) = self.most_recent else {
            return false;
        };
        let Some(age) = most_recent.checked_sub(sequence) else {
            return false; // newer than anything seen
        };
        if age >= REPLAY_WINDOW {
            return true;
        }
        self.bit(age)
    }

    /// The newest sequence received, if any.
    pub(crate) fn newest(&self) -> Option<u64> {
        self.most_recent
    }

    /// Records `sequence` as received. Call only after the packet decrypted.
    pub(crate) fn advance(&mut self, sequence: u64) {
        let Some(most_recent) = self.most_recent else {
            self.most_recent = Some(sequence);
            self.bits = [0; WORDS];
            self.set_bit(0);
            return;
        };
        match sequence.checked_sub(most_recent) {
            Some(0) => self.set_bit(0),
            Some(ahead) => {
                self.shift_older(ahead);
                self.set_bit(0);
                self.most_recent = Some(sequence);
            }
            None => {
                let age = most_recent.abs_diff(sequence);
                if age < REPLAY_WINDOW {
                    self.set_bit(age);
                }
            }
        }
    }

    fn locate(age: u64) -> Option<(usize, u32)> {
        let word = usize::try_from(age / 64).ok()?;
        let bit = u32::try_from(age % 64).ok()?;
        (word < WORDS).then_some((word, bit))
    }

    fn bit(&self, age: u64) -> bool {
        Self::locate(age)
            .and_then(|(w, b)| self.bits.get(w).map(|word| word & (1u64 << b) != 0))
            .unwrap_or(true)
    }

    fn set_bit(&mut self, age: u64) {
        if let Some((w, b)) = Self::locate(age)
            && let Some(word) = self.bits.get_mut(w)
        {
            *word |= 1u64 << b;
        }
    }

    /// Moves every recorded bit `by` positions older, forgetting what falls
    /// out of the window.
    fn shift_older(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let Some((word_shift, bit_shift)) = Self::locate(by) else {
            self.bits = [0; WORDS];
            return;
        };
        let old = self.bits;
        let mut new = [0u64; WORDS];
        for (i, slot) in new.iter_mut().enumerate() {
            let Some(src) = i.checked_sub(word_shift) else {
                continue;
            };
            let high = old.get(src).copied().unwrap_or(0);
            let mut value = high.checked_shl(bit_shift).unwrap_or(0);
            if bit_shift != 0
                && let Some(lower_src) = src.checked_sub(1)
            {
                let low = old.get(lower_src).copied().unwrap_or(0);
                value |= low
                    .checked_shr(64u32.saturating_sub(bit_shift))
                    .unwrap_or(0);
            }
            *slot = value;
        }
        self.bits = new;
    }
}

#[cfg(test)]
#[expect(
    clippy::arithmetic_side_effects,
    reason = "tests index fixed-size buffers they just filled"
)]
mod tests {
    use super::*;

    /// A naive model: the set of accepted sequences plus the maximum.
    fn check_against_model(sequences: &[u64]) {
        let mut window = ReplayWindow::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut max: Option<u64> = None;
        for &s in sequences {
            let model_reject = match max {
                None => false,
                Some(m) => (m >= REPLAY_WINDOW && s <= m - REPLAY_WINDOW) || seen.contains(&s),
            };
            assert_eq!(window.already_received(s), model_reject, "sequence {s}");
            if !model_reject {
                window.advance(s);
                seen.insert(s);
                max = Some(max.map_or(s, |m| m.max(s)));
            }
        }
    }

    #[test]
    fn a_window_after_a_sequence_takes_only_newer_ones() {
        let mut window = ReplayWindow::after(1000);
        for old in [0, 700, 744, 745, 999, 1000] {
            assert!(window.already_received(old), "{old}");
        }
        assert!(!window.already_received(1001));
        window.advance(1003);
        assert!(!window.already_received(1001));
        assert!(!window.already_received(1002));
        assert!(window.already_received(1000));
        assert!(window.already_received(1003));
    }

    #[test]
    fn in_order_duplicates_and_old_packets() {
        check_against_model(&[
            0, 1, 2, 2, 1, 0, 5, 3, 4, 4, 300, 44, 45, 299, 299, 600, 344, 345,
        ]);
    }

    #[test]
    fn pseudo_random_sequences_match_model() {
        let mut x: u64 = 0x1234_5678;
        let mut seqs = Vec::new();
        let mut base: u64 = 0;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base += x % 3;
            seqs.push(base.saturating_sub(x % 300));
        }
        check_against_model(&seqs);
    }

    #[test]
    fn works_at_the_top_of_the_sequence_space() {
        let top = u64::MAX;
        let mut window = ReplayWindow::default();
        for s in (top - 300)..=top {
            assert!(!window.already_received(s));
            window.advance(s);
            assert!(window.already_received(s));
        }
        assert!(window.already_received(top - 10));
        assert!(window.already_received(top - 256));
        assert!(window.already_received(0));
        let mut sparse = ReplayWindow::default();
        sparse.advance(top);
        assert!(!sparse.already_received(top - 1));
        assert!(!sparse.already_received(top - 255));
        assert!(sparse.already_received(top - 256));
    }
}
