//! Wrap-around arithmetic for 16-bit sequence numbers.
//!
//! Packet sequences and per-channel message ids are `u16` on the wire and
//! wrap every 65,536 values. Comparisons treat the half of the number circle
//! ahead of `b` as "newer", which stays correct as long as the two values
//! are within 32,767 of each other — the reliable window guarantees this.

/// `a` is newer than `b` on the wrapping number circle.
#[inline]
pub(crate) fn seq_newer(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000
}

/// How far `a` is ahead of `b` (0 when equal); only meaningful when `a` is
/// not older than `b`.
#[inline]
pub(crate) fn seq_distance(a: u16, b: u16) -> u16 {
    a.wrapping_sub(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_handles_wrap_around() {
        assert!(seq_newer(1, 0));
        assert!(!seq_newer(0, 1));
        assert!(!seq_newer(5, 5));
        assert!(seq_newer(0, 65_535));
        assert!(seq_newer(10, 65_530));
        assert!(!seq_newer(65_530, 10));
        assert!(seq_newer(32_767, 0));
        assert!(!seq_newer(32_768, 0));
    }

    #[test]
    fn distance_wraps() {
        assert_eq!(seq_distance(3, 65_534), 5);
        assert_eq!(seq_distance(7, 7), 0);
    }
}
