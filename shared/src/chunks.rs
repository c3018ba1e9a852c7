//! Shared chunks of memory for many small messages.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Copies messages back to back into chunks of memory: one allocation per
/// chunk instead of one per message, each message a [`Bytes`] slice of its
/// chunk. A filled chunk is kept, and used again once every message in it
/// has been dropped, so that a steady stream of short-lived messages (a
/// snapshot per client per tick, the datagrams `net-io` reads) allocates
/// and frees nothing once warm, while the messages alive at once fit in
/// [`Chunks::MAX_SPENT`] chunks; past that, each chunk more is allocated
/// and freed.
///
/// Memory: the current chunk plus at most [`Chunks::MAX_SPENT`] filled
/// ones, all of the chunk size; a filled chunk beyond that is let go, and
/// freed when its last message is, as is a message larger than a chunk,
/// which gets an allocation of its own.
#[derive(Debug)]
pub struct Chunks {
    /// The chunk being filled (none before the first message).
    current: Option<BytesMut>,
    size: usize,
    /// Filled chunks, oldest first, waiting for their messages to go.
    spent: VecDeque<BytesMut>,
}

impl Chunks {
    /// Most filled chunks kept for reuse.
    pub const MAX_SPENT: usize = 32;

    /// Chunks of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self {
            current: None,
            size,
            spent: VecDeque::new(),
        }
    }

    /// Copies `data` into the current chunk (starting another when it does
    /// not fit) and returns it as a slice of the chunk.
    pub fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.len() > self.size {
            // An allocation of its own, freed with the message: chunks kept
            // for reuse are all `size` bytes, whatever a peer sends.
            return Bytes::copy_from_slice(data);
        }
        let current = match self.current.take() {
            Some(chunk) if chunk.capacity() >= data.len() => chunk,
            filled => self.start_chunk(filled),
        };
        let current = self.current.insert(current);
        current.extend_from_slice(data);
        current.split().freeze()
    }

    /// The chunk after `filled`: the oldest filled chunk whose messages
    /// are all gone, or a new one.
    fn start_chunk(&mut self, filled: Option<BytesMut>) -> BytesMut {
        if let Some(filled) = filled {
            if self.spent.len() >= Self::MAX_SPENT {
                self.spent.pop_front();
            }
            self.spent.push_back(filled);
        }
        // The oldest is the likeliest to be free; one that is not (a
        // message in it still lives) goes to the back, so that it does not
        // stop the others from being reused.
        if let Some(mut oldest) = self.spent.pop_front() {
            if oldest.try_reclaim(self.size) {
                return oldest;
            }
            self.spent.push_back(oldest);
        }
        BytesMut::with_capacity(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills `chunks`' current chunk of `size` bytes with 4-byte messages.
    fn fill(chunks: &mut Chunks, size: usize) -> Vec<Bytes> {
        (0..size / 4).map(|i| chunks.copy(&[i as u8; 4])).collect()
    }

    #[test]
    fn messages_are_slices_of_one_chunk_until_it_is_full() {
        let mut chunks = Chunks::new(64);
        let a = chunks.copy(b"hello");
        let b = chunks.copy(b"world!");
        assert_eq!((&a[..], &b[..]), (&b"hello"[..], &b"world!"[..]));
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        let big = vec![7u8; 65];
        let c = chunks.copy(&big);
        assert_eq!(&c[..], &big[..]);
        // The larger message did not take the chunk's place.
        let d = chunks.copy(b"!");
        assert_eq!(b.as_ptr().wrapping_add(b.len()), d.as_ptr());
        assert!(chunks.copy(b"").is_empty());
        assert_eq!((&a[..], &b[..]), (&b"hello"[..], &b"world!"[..]));
    }

    #[test]
    fn a_chunk_is_used_again_once_its_messages_are_gone() {
        let mut chunks = Chunks::new(64);
        let first = fill(&mut chunks, 64);
        let start = first[0].as_ptr();
        let second = fill(&mut chunks, 64);
        assert_ne!(second[0].as_ptr(), start, "the first chunk is still in use");
        drop(first);
        let third = chunks.copy(b"abcd");
        assert_eq!(third.as_ptr(), start, "the free chunk was not reused");
        assert_eq!(&third[..], b"abcd");
        assert!(second.iter().all(|m| m[0] == m[3]), "live messages changed");
    }

    #[test]
    fn a_chunk_still_in_use_does_not_block_the_others() {
        let mut chunks = Chunks::new(64);
        let pinned = fill(&mut chunks, 64).swap_remove(0);
        let free = fill(&mut chunks, 64);
        let start = free[0].as_ptr();
        drop(free);
        // The pinned chunk, tried first, goes to the back; the free one
        // serves the chunk after.
        let _current = fill(&mut chunks, 64);
        let next = chunks.copy(b"abcd");
        assert_eq!(next.as_ptr(), start);
        assert_eq!(&pinned[..], &[0; 4]);
    }

    #[test]
    fn filled_chunks_kept_are_bounded() {
        let mut chunks = Chunks::new(64);
        let held: Vec<Vec<Bytes>> = (0..Chunks::MAX_SPENT * 2)
            .map(|_| fill(&mut chunks, 64))
            .collect();
        assert!(chunks.spent.len() <= Chunks::MAX_SPENT);
        assert_eq!(held.len(), Chunks::MAX_SPENT * 2);
    }
}
