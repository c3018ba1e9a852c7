//! Per-source-IP token buckets for handshake packets, in a fixed-size,
//! set-associative table that evicts the least recently used entry.
//!
//! Memory is allocated once at construction and never grows, whatever the
//! number of source addresses: a flood from many (possibly spoofed) IPs only
//! churns the table. An evicted IP comes back with a full bucket, so the limit
//! is exact for the IPs that stay in the table and best-effort otherwise.
//!
//! Past its source's limit a packet may still go through on a spare budget
//! shared by all sources: a sender that forges another's address spends
//! that address's bucket, and without the spare the address's own player
//! could not connect for as long as the forgery went on.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Entries per set; a lookup touches at most this many.
const WAYS: usize = 4;
/// Fixed-point scale: a bucket holds `tokens * SCALE`.
const SCALE: u64 = 1000;
/// The IPv6 blocks above a source (a /64) and the sources' limits each
/// may draw on together: one host given many /64s has a fresh bucket for
/// each otherwise. A /56 (a home's or a small site's allocation, 256
/// /64s) draws on 16; a /48 (a site's, or the pool an ISP hands /56s and
/// /60s out of) on 256, so that a customer draining its own /56, whatever
/// the /64s it uses, leaves the rest of the /48 its limits: with the /48
/// at 16 sources' worth, 16 /64s of one /60 held back every other
/// customer of the pool, without forging an address.
const BLOCKS: [(u32, u64); 2] = [(56, 16), (48, 256)];

/// Handshake rate limit per source: an IPv4 address, or an IPv6 /64
/// (whose /56 has 16 times the limit and whose /48 256 times, for all
/// their /64s together).
///
/// It bounds the decryption work that yields nothing: a request carrying
/// a token the server has not seen before and a response that connects
/// give their token back, so players behind one address (a campus or
/// carrier NAT) can all connect at once. Junk, repeated requests and
/// failed responses spend it; past it, one such sender behind a shared
/// address (or one forging the address as its source) holds back the
/// others' handshakes too (which packets are junk is only known by
/// decrypting them), down to what the spare budget lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeRateLimit {
    /// Sustained connection requests plus responses per second from one
    /// source (those that give theirs back aside).
    pub per_second: u32,
    /// Bucket size: how many may arrive at once. At the limit, packets are
    /// dropped and counted as [`DropReason::RateLimited`](super::DropReason::RateLimited).
    pub burst: u32,
    /// Number of buckets held at once (rounded up to a power of two,
    /// minimum 4): one per IPv4 source, three per IPv6 one (its /64, its
    /// /56 and its /48).
    /// The memory is about 64 bytes per entry, allocated up front.
    pub table_entries: usize,
    /// Packets a second, all sources together, let through past their
    /// source's limit (as many may come at once; 0: none). A packet over
    /// its source's limit draws on it first come, first served, so one
    /// forging a player's address as its source, at `n` packets a second
    /// over the limits, leaves each of the player's own packets about a
    /// `spare_per_second / n` chance: the forgery slows the player's
    /// handshake down instead of stopping it. This bounds the decryption
    /// work a flood adds past the limits of the sources the table tracks
    /// (one from more sources than it holds gets each new one in on its
    /// fresh bucket).
    pub spare_per_second: u32,
}

impl Default for HandshakeRateLimit {
    fn default() -> Self {
        Self {
            per_second: 32,
            burst: 64,
            table_entries: 4096,
            spare_per_second: 512,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    ip: Option<IpAddr>,
    milli_tokens: u64,
    last: Option<Instant>,
}

const EMPTY: Bucket = Bucket {
    ip: None,
    milli_tokens: 0,
    last: None,
};

/// Which budget paid for a packet [`RateLimiter::allow`] let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paid {
    /// Its source's bucket.
    Source,
    /// The spare budget of all sources.
    Spare,
}

pub(crate) struct RateLimiter {
    buckets: Box<[Bucket]>,
    /// The spare budget of all sources together (its `ip` unused).
    spare: Bucket,
    set_mask: usize,
    limit: HandshakeRateLimit,
    hash_key: [u64; 2],
}

impl RateLimiter {
    pub(crate) fn new(limit: HandshakeRateLimit, hash_key: [u64; 2]) -> Self {
        let entries = limit.table_entries.max(WAYS).next_power_of_two();
        let sets = (entries / WAYS).max(1);
        Self {
            buckets: vec![EMPTY; sets.saturating_mul(WAYS)].into_boxed_slice(),
            spare: Bucket {
                milli_tokens: u64::from(limit.spare_per_second).saturating_mul(SCALE),
                ..EMPTY
            },
            set_mask: sets.saturating_sub(1),
            limit,
            hash_key,
        }
    }

    /// Number of entries the table can hold (fixed).
    pub(crate) fn capacity(&self) -> usize {
        self.buckets.len()
    }

    /// Number of IPs currently tracked.
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.iter().filter(|b| b.ip.is_some()).count()
    }

    /// Takes one token for `ip`'s source (see [`source`]), or, past its
    /// limit, one of the spare budget: which paid, `None` when over both.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> Option<Paid> {
        if self.allow_source(ip, now) {
            Some(Paid::Source)
        } else if self.allow_spare(now) {
            Some(Paid::Spare)
        } else {
            None
        }
    }

    /// One token of `ip`'s source, and of each of its blocks if it has
    /// them: all or none.
    fn allow_source(&mut self, ip: IpAddr, now: Instant) -> bool {
        let source = source(ip);
        if !self.take_for(source, 1, now) {
            return false;
        }
        for (taken, &(bits, sources)) in BLOCKS.iter().enumerate() {
            let Some(key) = block(ip, bits) else {
                break;
            };
            if !self.take_for(key, sources, now) {
                self.give_back(source, 1);
                for &(bits, sources) in BLOCKS.iter().take(taken) {
                    if let Some(key) = block(ip, bits) {
                        self.give_back(key, sources);
                    }
                }
                return false;
            }
        }
        true
    }

    /// One token of `key`'s bucket, whose limits are `sources` times a
    /// source's.
    fn take_for(&mut self, key: IpAddr, sources: u64, now: Instant) -> bool {
        let full = self.full().saturating_mul(sources);
        let per_second = u64::from(self.limit.per_second).saturating_mul(sources);
        let Some(ways) = self.set_of(key) else {
            return true;
        };
        if let Some(bucket) = ways.iter_mut().find(|b| b.ip == Some(key)) {
            refill(bucket, now, per_second, full);
            return take(bucket);
        }
        // Not tracked: take an empty way, else evict the least recently used.
        let Some(victim) = ways.iter_mut().min_by_key(|b| (b.ip.is_some(), b.last)) else {
            return true;
        };
        *victim = Bucket {
            ip: Some(key),
            milli_tokens: full.saturating_sub(SCALE),
            last: Some(now),
        };
        full >= SCALE
    }

    /// A token back to `key`'s bucket (limits `sources` times a source's),
    /// if it is still tracked.
    fn give_back(&mut self, key: IpAddr, sources: u64) {
        let full = self.full().saturating_mul(sources);
        if let Some(bucket) = self
            .set_of(key)
            .and_then(|ways| ways.iter_mut().find(|b| b.ip == Some(key)))
        {
            bucket.milli_tokens = bucket.milli_tokens.saturating_add(SCALE).min(full);
        }
    }

    fn allow_spare(&mut self, now: Instant) -> bool {
        let per_second = u64::from(self.limit.spare_per_second);
        let full = per_second.saturating_mul(SCALE);
        refill(&mut self.spare, now, per_second, full);
        take(&mut self.spare)
    }
}

impl RateLimiter {
    /// Gives back the token [`Self::allow`] took for `ip`'s packet, to the
    /// budget that `paid`, for work that proved worth doing (a bucket
    /// evicted meanwhile is left alone: it comes back full anyway). Given
    /// to the source when the spare paid, it would credit a bucket that one
    /// forging the address keeps spending, and the spare would lose it.
    pub(crate) fn refund(&mut self, ip: IpAddr, paid: Paid) {
        if paid == Paid::Spare {
            let full = u64::from(self.limit.spare_per_second).saturating_mul(SCALE);
            self.spare.milli_tokens = self.spare.milli_tokens.saturating_add(SCALE).min(full);
            return;
        }
        self.give_back(source(ip), 1);
        for &(bits, sources) in &BLOCKS {
            if let Some(block) = block(ip, bits) {
                self.give_back(block, sources);
            }
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.limit.burst).saturating_mul(SCALE)
    }

    /// The ways of the set `ip` (a source) hashes to.
    fn set_of(&mut self, ip: IpAddr) -> Option<&mut [Bucket]> {
        let mut h = DefaultHasher::new();
        self.hash_key.hash(&mut h);
        ip.hash(&mut h);
        let set = usize::try_from(h.finish()).unwrap_or(0) & self.set_mask;
        let start = set.saturating_mul(WAYS);
        self.buckets.get_mut(start..start.saturating_add(WAYS))
    }
}

/// The source a bucket is kept for: an IPv4 address (also written as an
/// IPv4-mapped IPv6 one), or an IPv6 address's /64, the block one host or
/// site is given: keyed by the whole address, one host could draw a fresh
/// bucket from each of its 2^64 addresses, and flush real clients' buckets
/// out of the table doing so.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// The block of [`BLOCKS`] an IPv6 address's first `bits` bits name,
/// keyed with its length in the lowest bits (a /64's key has none set, so
/// no two levels share a bucket). IPv4 addresses have none: one is a
/// source already.
fn block(ip: IpAddr, bits: u32) -> Option<IpAddr> {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let host_bits = 128u32.checked_sub(bits)?;
            let prefix = u128::from(v6) & !(1u128.checked_shl(host_bits)?.checked_sub(1)?);
            Some(IpAddr::V6(std::net::Ipv6Addr::from(
                prefix | u128::from(bits),
            )))
        }
        IpAddr::V4(_) => None,
    }
}

/// Takes one token from `bucket`, if it holds one.
fn take(bucket: &mut Bucket) -> bool {
    match bucket.milli_tokens.checked_sub(SCALE) {
        Some(rest) => {
            bucket.milli_tokens = rest;
            true
        }
        None => false,
    }
}

/// Credits `bucket` with the tokens earned since it was last topped up.
/// Time not yet worth a milli-token carries over to the next packet, so
/// packets closer together than that still earn their share.
fn refill(bucket: &mut Bucket, now: Instant, per_second: u64, full: u64) {
    let Some(last) = bucket.last else {
        bucket.last = Some(now);
        return;
    };
    let elapsed_us =
        u64::try_from(now.saturating_duration_since(last).as_micros()).unwrap_or(u64::MAX);
    // `per_second` tokens a second are `per_second` milli-tokens a millisecond.
    let earned = elapsed_us.saturating_mul(per_second) / 1000;
    let topped = bucket.milli_tokens.saturating_add(earned);
    if topped >= full || per_second == 0 {
        bucket.milli_tokens = topped.min(full);
        bucket.last = Some(now);
        return;
    }
    bucket.milli_tokens = topped;
    let credited_us = earned
        .saturating_mul(1000)
        .checked_div(per_second)
        .unwrap_or(0);
    bucket.last = Some(
        last.checked_add(Duration::from_micros(credited_us))
            .unwrap_or(now),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_then_refills() {
        let limit = HandshakeRateLimit {
            per_second: 10,
            burst: 5,
            table_entries: 16,
            spare_per_second: 0,
        };
        let mut rl = RateLimiter::new(limit, [1, 2]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| rl.allow(ip, t0).is_some()).count(), 5);
        assert!(rl.allow(ip, t0 + Duration::from_millis(50)).is_none());
        assert!(rl.allow(ip, t0 + Duration::from_millis(150)).is_some());
    }

    #[test]
    fn packets_closer_than_a_millisecond_still_earn_tokens() {
        let limit = HandshakeRateLimit {
            per_second: 1000,
            burst: 1,
            table_entries: 16,
            spare_per_second: 0,
        };
        let mut rl = RateLimiter::new(limit, [1, 2]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        // One second of packets every 500 µs: a thousand tokens earned.
        let allowed = (0..2000u64)
            .filter(|i| rl.allow(ip, t0 + Duration::from_micros(i * 500)).is_some())
            .count();
        assert!((999..=1001).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_refund_gives_back_one_token_and_never_more_than_the_burst() {
        let limit = HandshakeRateLimit {
            per_second: 1,
            burst: 2,
            table_entries: 16,
            spare_per_second: 0,
        };
        let mut rl = RateLimiter::new(limit, [1, 2]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        rl.refund(ip, Paid::Source);
        assert!(rl.allow(ip, t0).is_some());
        rl.refund(ip, Paid::Source);
        rl.refund(ip, Paid::Source);
        assert!(rl.allow(ip, t0).is_some());
        assert!(rl.allow(ip, t0).is_some());
        assert!(rl.allow(ip, t0).is_none());
        rl.refund(ip, Paid::Source);
        assert!(rl.allow(ip, t0).is_some());
        assert!(rl.allow(ip, t0).is_none());
    }

    /// Past their sources' limits, packets from any source draw on the
    /// one spare budget: a burst of it at once, then its rate.
    #[test]
    fn the_spare_budget_is_shared_by_every_source_past_its_limit() {
        let limit = HandshakeRateLimit {
            per_second: 1,
            burst: 2,
            table_entries: 16,
            spare_per_second: 10,
        };
        let mut rl = RateLimiter::new(limit, [1, 2]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        // Each source's own burst, then the spare's ten between them.
        assert_eq!(
            (0..20).filter(|_| rl.allow(a, t0).is_some()).count(),
            2 + 10
        );
        assert_eq!((0..20).filter(|_| rl.allow(b, t0).is_some()).count(), 2);
        // A second later: each source's one token, and ten spare ones.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            (0..20).filter(|_| rl.allow(b, t1).is_some()).count(),
            1 + 10
        );
        assert_eq!((0..20).filter(|_| rl.allow(a, t1).is_some()).count(), 1);
    }

    /// A packet the spare paid for gives its token back to the spare, not
    /// to its source, whose bucket one forging the address keeps empty.
    #[test]
    fn a_refund_goes_back_to_the_budget_that_paid() {
        let limit = HandshakeRateLimit {
            per_second: 1,
            burst: 1,
            table_entries: 16,
            spare_per_second: 1,
        };
        let mut rl = RateLimiter::new(limit, [1, 2]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(rl.allow(a, t0), Some(Paid::Source));
        assert_eq!(rl.allow(a, t0), Some(Paid::Spare));
        rl.refund(a, Paid::Spare);
        assert_eq!(rl.allow(b, t0), Some(Paid::Source));
        assert_eq!(
            rl.allow(b, t0),
            Some(Paid::Spare),
            "the spare got its token back"
        );
        assert_eq!(rl.allow(a, t0), None, "and the source none");
    }

    /// A host given a /56 (256 /64s) draws a fresh bucket from each of its
    /// /64s only up to its /56's limit: 16 sources' worth, not one for
    /// each /64. Another /56 has its own.
    #[test]
    fn the_64s_of_one_56_share_its_limit() {
        let limit = HandshakeRateLimit {
            spare_per_second: 0,
            ..HandshakeRateLimit::default()
        };
        let burst = u64::from(limit.burst);
        let mut rl = RateLimiter::new(limit, [5, 6]);
        let t0 = Instant::now();
        let mut allowed = 0u64;
        for net in 0..256u32 {
            for _ in 0..limit.burst {
                let ip: IpAddr = format!("2001:db8:0:{:x}::1", net).parse().unwrap();
                allowed += u64::from(rl.allow(ip, t0).is_some());
            }
        }
        assert_eq!(allowed, 16 * burst);
        let elsewhere: IpAddr = "2001:db8:0:100::1".parse().unwrap();
        assert!(rl.allow(elsewhere, t0).is_some(), "another /56");
        // A refund gives back to all three: the /64, its /56 and its /48.
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        rl.refund(ip, Paid::Source);
        assert!(rl.allow(ip, t0).is_some());
        assert!(rl.allow(ip, t0).is_none());
    }

    /// The /56s of one /48 share 256 sources' worth: a host given a whole
    /// /48 draws no more than that, whatever /56s it spreads over.
    #[test]
    fn the_56s_of_one_48_share_its_limit() {
        let limit = HandshakeRateLimit {
            spare_per_second: 0,
            table_entries: 1 << 16,
            ..HandshakeRateLimit::default()
        };
        let burst = u64::from(limit.burst);
        let mut rl = RateLimiter::new(limit, [5, 6]);
        let t0 = Instant::now();
        let mut allowed = 0u64;
        for net in 0..256u32 {
            for host in 0..16u32 {
                let ip: IpAddr = format!("2001:db8:0:{:x}::1", net << 8 | host)
                    .parse()
                    .unwrap();
                for _ in 0..limit.burst {
                    allowed += u64::from(rl.allow(ip, t0).is_some());
                }
            }
        }
        assert_eq!(allowed, 256 * burst);
        assert!(rl.allow("2001:db8:1::1".parse().unwrap(), t0).is_some());
    }

    /// A packet its /48 refuses costs its /64 and its /56 nothing: both
    /// tokens taken before are given back.
    #[test]
    fn a_packet_its_48_refuses_costs_its_56_nothing() {
        let limit = HandshakeRateLimit {
            spare_per_second: 0,
            table_entries: 1 << 16,
            ..HandshakeRateLimit::default()
        };
        let burst = u64::from(limit.burst);
        let mut rl = RateLimiter::new(limit, [5, 6]);
        let t0 = Instant::now();
        // 16 /56s, 16 /64s each, a burst each: the /48's 256 bursts.
        for net in 0..16u32 {
            for host in 0..16u32 {
                let ip: IpAddr = format!("2001:db8:0:{:x}::1", net << 8 | host)
                    .parse()
                    .unwrap();
                for _ in 0..burst {
                    assert!(rl.allow(ip, t0).is_some());
                }
            }
        }
        let fresh: IpAddr = "2001:db8:0:ff00::1".parse().unwrap();
        assert!(rl.allow(fresh, t0).is_none(), "the /48 is spent");
        let tokens = |rl: &RateLimiter, key: IpAddr| {
            rl.buckets
                .iter()
                .find(|b| b.ip == Some(key))
                .map(|b| b.milli_tokens)
        };
        assert_eq!(tokens(&rl, source(fresh)), Some(burst * SCALE));
        let block56 = block(fresh, 56).unwrap();
        assert_eq!(tokens(&rl, block56), Some(16 * burst * SCALE));
    }

    /// A customer of an ISP that hands /56s out of one /48, sending as
    /// fast as it likes from 64 /64s of its /56 (no forged address),
    /// leaves another customer of that /48 its own limit: with the /48
    /// at 16 sources' worth, it held back every other customer of the
    /// pool, down to the spare budget.
    #[test]
    fn one_customer_of_a_48_holds_back_none_of_the_others() {
        let limit = HandshakeRateLimit {
            spare_per_second: 0,
            ..HandshakeRateLimit::default()
        };
        let mut rl = RateLimiter::new(limit, [5, 6]);
        let t0 = Instant::now();
        let mut honest_allowed = 0;
        for ms in 0..3_000u64 {
            let now = t0 + Duration::from_millis(ms);
            // 40 a second from each of 64 /64s of 2001:db8:0:a00::/56.
            if ms % 25 == 0 {
                for net in 0..64u32 {
                    let ip: IpAddr = format!("2001:db8:0:a{net:02x}::1").parse().unwrap();
                    let _ = rl.allow(ip, now);
                }
            }
            // 10 a second from another customer's /64.
            if ms % 100 == 0 {
                let honest: IpAddr = "2001:db8:0:ff00::1".parse().unwrap();
                honest_allowed += u32::from(rl.allow(honest, now).is_some());
            }
        }
        assert_eq!(honest_allowed, 30);
    }

    #[test]
    fn table_never_grows() {
        let mut rl = RateLimiter::new(HandshakeRateLimit::default(), [3, 4]);
        let cap = rl.capacity();
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            rl.allow(ip, t0);
        }
        assert_eq!(rl.capacity(), cap);
        assert!(rl.tracked() <= cap);
    }
}
