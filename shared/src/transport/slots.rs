//! Per-id state for a window of consecutive `u16` ids (packet sequences,
//! reliable message ids) that starts small and grows with the window's
//! use.

/// Slots indexed by id modulo their number, a power of two. The number
/// divides the `u16` id space, so ids stay in distinct slots across the
/// wrap from 65,535 to 0 (a modulus that did not divide it would put the
/// ids either side of the wrap in one slot).
///
/// The slots start few: a game's connection has a few packets and
/// messages in flight, and a server revisits each connection's next slot
/// once per packet, after every other client's state went through the
/// cache. A small ring's slots are still there; a large one's come from
/// memory. [`cover`](Self::cover) doubles the slots when the window needs
/// more, so memory follows what a connection uses, up to the bound the
/// caller keeps.
pub(crate) struct IdSlots<T> {
    slots: Box<[T]>,
}

impl<T: Default> IdSlots<T> {
    /// `initial` slots, rounded up to a power of two.
    pub(crate) fn new(initial: usize) -> Self {
        Self {
            slots: Self::fresh(initial.max(1).next_power_of_two()),
        }
    }

    fn fresh(len: usize) -> Box<[T]> {
        (0..len).map(|_| T::default()).collect()
    }

    /// Slots held now.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot of `id`, shared with every id a multiple of
    /// [`len`](Self::len) away: callers record the id in the slot.
    pub(crate) fn get(&self, id: u16) -> &T {
        &self.slots[usize::from(id) & (self.slots.len() - 1)]
    }

    pub(crate) fn get_mut(&mut self, id: u16) -> &mut T {
        let mask = self.slots.len() - 1;
        &mut self.slots[usize::from(id) & mask]
    }

    /// Every slot, in index order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter()
    }

    /// Grows the slots, if needed, until each id from `base` to `base +
    /// distance` has its own, keeping the state of the ids from `base` on
    /// (those of the ids before `base` may end anywhere).
    pub(crate) fn cover(&mut self, base: u16, distance: u16) {
        let old = self.slots.len();
        if usize::from(distance) < old {
            return;
        }
        let len = (usize::from(distance) + 1).next_power_of_two();
        let mut larger = Self::fresh(len);
        for k in 0..old {
            let id = usize::from(base.wrapping_add(k as u16));
            std::mem::swap(&mut larger[id & (len - 1)], &mut self.slots[id & (old - 1)]);
        }
        self.slots = larger;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_keeps_each_ids_state_across_the_wrap() {
        let mut slots: IdSlots<Option<u16>> = IdSlots::new(5);
        assert_eq!(slots.len(), 8);
        let base = u16::MAX - 3;
        for k in 0..8u16 {
            *slots.get_mut(base.wrapping_add(k)) = Some(base.wrapping_add(k));
        }
        // Room for 8 ids from `base`: nothing to do.
        slots.cover(base, 7);
        assert_eq!(slots.len(), 8);
        slots.cover(base, 20);
        assert_eq!(slots.len(), 32);
        for k in 0..8u16 {
            let id = base.wrapping_add(k);
            assert_eq!(*slots.get(id), Some(id), "id {id}");
        }
        for k in 8..32u16 {
            assert_eq!(*slots.get(base.wrapping_add(k)), None);
        }
    }

    #[test]
    fn ids_either_side_of_the_wrap_get_their_own_slots() {
        // 100 ids in a window need 128 slots, not 100: with 100, ids
        // 65,535 and 35 would share one.
        let mut slots: IdSlots<Option<u16>> = IdSlots::new(1);
        let base = u16::MAX - 49;
        slots.cover(base, 99);
        assert_eq!(slots.len(), 128);
        for k in 0..100u16 {
            let id = base.wrapping_add(k);
            assert_eq!(*slots.get(id), None, "id {id} landed on a taken slot");
            *slots.get_mut(id) = Some(id);
        }
    }
}
