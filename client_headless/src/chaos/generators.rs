//! The attack traffic itself, as pure functions of a seeded [`Rng`]: what
//! `client_headless chaos` sends and what the adversarial end-to-end tests
//! (`tests/`, crate `e2e`) send, from one implementation.
//!
//! Nothing here touches a socket or a clock: callers choose where and when
//! to send, so the tests keep their own pacing and accounting.

use shared::netcode::CONNECT_TOKEN_PRIVATE_BYTES;
use shared::protocol::channels;
use shared::transport::wire::{FragmentInfo, MessageHeader};

/// Datagram sizes the parsers treat specially: empty, one byte, around the
/// 18-byte smallest sealed packet, around the 1,078-byte connection request
/// and the 1,200-byte payload limit, and a full Ethernet MTU.
pub const EDGE_SIZES: [usize; 11] = [
    0, 1, 17, 18, 1_077, 1_078, 1_079, 1_199, 1_200, 1_201, 1_500,
];

/// The largest garbage datagram (an Ethernet MTU).
pub const MAX_GARBAGE_BYTES: usize = 1_500;

/// The fragment size of `channels::transport_config()`.
pub const FRAGMENT_BYTES: usize = 1_024;

/// The most fragments a message may have under `channels::transport_config()`.
pub const MAX_FRAGMENTS: u16 = channels::MAX_GAME_MESSAGE.div_ceil(FRAGMENT_BYTES) as u16;

/// A small deterministic generator (xorshift64*): every attack is
/// replayable from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// Flips 1 to 8 distinct bits of `packet`, so a non-empty packet always
    /// differs from what it was.
    pub fn flip_bits(&mut self, packet: &mut [u8]) {
        let bits = packet.len() as u64 * 8;
        if bits == 0 {
            return;
        }
        let flips = (1 + self.below(8)).min(bits);
        let mut chosen: Vec<u64> = Vec::with_capacity(8);
        // Bounded: at most 64 draws for at most 8 distinct bits.
        for _ in 0..64 {
            if chosen.len() as u64 >= flips {
                break;
            }
            let bit = self.below(bits);
            if !chosen.contains(&bit) {
                chosen.push(bit);
            }
        }
        if chosen.is_empty() {
            chosen.push(0);
        }
        for bit in chosen {
            packet[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
    }
}

/// Writes one garbage datagram into `out` and returns its length: a random
/// [`EDGE_SIZES`] size of random bytes (1 in 4), a copy of one of the
/// `valid` packets with 1–8 bits flipped (1 in 4, when there are any), else
/// 0–1,500 random bytes.
pub fn garbage_datagram(
    rng: &mut Rng,
    valid: &[Vec<u8>],
    out: &mut [u8; MAX_GARBAGE_BYTES],
) -> usize {
    match rng.below(4) {
        1 if !valid.is_empty() => {
            let template = &valid[rng.below(valid.len() as u64) as usize];
            let len = template.len().min(MAX_GARBAGE_BYTES);
            out[..len].copy_from_slice(&template[..len]);
            rng.flip_bits(&mut out[..len]);
            len
        }
        choice => {
            let len = if choice == 0 {
                EDGE_SIZES[rng.below(EDGE_SIZES.len() as u64) as usize]
            } else {
                rng.below(MAX_GARBAGE_BYTES as u64 + 1) as usize
            };
            rng.fill(&mut out[..len]);
            len
        }
    }
}

/// One spoofed connection request made from a sniffed one (`request`, a
/// whole connection-request packet), in place: left as is (a replay, 1 in
/// 3), with its encrypted private token replaced by random bytes (a forged
/// token), or with 1–8 bits flipped (a corrupted request).
pub fn spoof_request(rng: &mut Rng, request: &mut [u8]) {
    match rng.below(3) {
        0 => {}
        1 => {
            let start = request.len().saturating_sub(CONNECT_TOKEN_PRIVATE_BYTES);
            rng.fill(&mut request[start..]);
        }
        _ => rng.flip_bits(request),
    }
}

/// The header of the `n`-th fragment of a fragment bomb: a middle fragment
/// of a [`MAX_FRAGMENTS`]-fragment message that never completes, cycling
/// over the six channels; the three reliable channels (0–2) get message
/// ids across the game's whole reliable window, the others random ids. Send it
/// with [`FRAGMENT_BYTES`] bytes of payload.
pub fn bomb_fragment(rng: &mut Rng, n: u64) -> MessageHeader {
    let channel = (n % 6) as u8;
    let id = if channel < 3 {
        ((n / 6) % u64::from(channels::RELIABLE_WINDOW)) as u16
    } else {
        rng.below(u64::from(u16::MAX)) as u16
    };
    MessageHeader {
        channel,
        id: Some(id),
        fragment: Some(FragmentInfo {
            index: 1 + rng.below(u64::from(MAX_FRAGMENTS) - 2) as u16,
            count: MAX_FRAGMENTS,
        }),
    }
}

/// A fragment claiming a message of 65,535 fragments (64 MiB), far over
/// the largest message: a protocol violation on arrival.
pub fn over_claim(channel: u8, id: u16) -> MessageHeader {
    MessageHeader {
        channel,
        id: Some(id),
        fragment: Some(FragmentInfo {
            index: 0,
            count: u16::MAX,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipped_copies_always_differ() {
        let mut rng = Rng::new(5);
        for len in [1usize, 2, 100] {
            let original = vec![0u8; len];
            let mut copy = original.clone();
            rng.flip_bits(&mut copy);
            assert_ne!(copy, original);
        }
    }

    #[test]
    fn garbage_covers_edge_sizes_flips_and_the_whole_range() {
        let mut rng = Rng::new(9);
        let valid = vec![vec![0x11u8; 300]];
        let mut out = [0u8; MAX_GARBAGE_BYTES];
        let (mut flipped, mut edges, mut longest) = (0, 0, 0);
        for _ in 0..4_000 {
            let len = garbage_datagram(&mut rng, &valid, &mut out);
            assert!(len <= MAX_GARBAGE_BYTES);
            if len == 300 && out[..len].iter().any(|&b| b != 0x11) && out[..len].contains(&0x11) {
                flipped += 1;
            }
            if EDGE_SIZES.contains(&len) {
                edges += 1;
            }
            longest = longest.max(len);
        }
        assert!(flipped > 800, "{flipped}");
        assert!(edges > 800, "{edges}");
        assert!(longest > 1_400, "{longest}");
    }

    #[test]
    fn bomb_fragments_never_complete_and_over_claims_exceed_the_limit() {
        let mut rng = Rng::new(3);
        for n in 0..1_000 {
            let header = bomb_fragment(&mut rng, n);
            let fragment = header.fragment.expect("a fragment");
            assert_eq!(fragment.count, MAX_FRAGMENTS);
            assert!((1..MAX_FRAGMENTS - 1).contains(&fragment.index));
            assert_eq!(u64::from(header.channel), n % 6);
        }
        assert_eq!(over_claim(4, 1).fragment.map(|f| f.count), Some(u16::MAX));
    }
}
