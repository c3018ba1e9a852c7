//! Software prefetch: asking the CPU to start loading memory a few steps
//! before it is read.
//!
//! A server walks thousands of clients' state every tick, each client's a
//! few cache lines that every other client's traffic has pushed out of the
//! cache since its last turn. Read in turn, each line is a stall of a
//! memory round trip. Asked for a few clients ahead, those round trips run
//! side by side while the current client is served.
//!
//! A prefetch is a hint: it never faults, never changes memory and never
//! changes what a program computes, only how long its loads wait. On
//! targets without one these functions do nothing.

/// The cache line size of the CPUs this is tuned for.
const LINE: usize = 64;

/// Asks for every cache line of `value`.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    prefetch_bytes(value, size_of_val(value));
}

/// Asks for the cache lines of the first `bytes` bytes of `value` (at most
/// all of it).
#[inline(always)]
pub fn prefetch_bytes<T: ?Sized>(value: &T, bytes: usize) {
    hint_range(
        std::ptr::from_ref(value).cast(),
        bytes.min(size_of_val(value)),
    );
}

/// Asks for the cache lines of the first `count` elements of `vec`'s
/// buffer, written yet or not: where its next pushes go.
#[inline(always)]
pub fn prefetch_buffer<T>(vec: &Vec<T>, count: usize) {
    hint_range(
        vec.as_ptr().cast(),
        count.min(vec.capacity()).saturating_mul(size_of::<T>()),
    );
}

/// Hints every line of `bytes` bytes at `start`.
#[inline(always)]
fn hint_range(start: *const u8, bytes: usize) {
    let (first, lines) = line_span(start.addr(), bytes);
    let first = start.wrapping_sub(start.addr() - first);
    for line in 0..lines {
        line_hint(first.wrapping_add(line * LINE));
    }
}

/// The first cache line (its address) of `len` bytes at `addr`, and how
/// many lines they span.
#[inline(always)]
fn line_span(addr: usize, len: usize) -> (usize, usize) {
    let first = addr & !(LINE - 1);
    if len == 0 {
        return (first, 0);
    }
    let last = (addr + len - 1) & !(LINE - 1);
    (first, (last - first) / LINE + 1)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn line_hint(at: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: SSE is part of the x86_64 baseline, so the instruction
    // exists; a prefetch never dereferences in the language's sense (no
    // fault, no read the program observes), whatever the address.
    #[expect(
        unsafe_code,
        reason = "the prefetch intrinsic is an unsafe target-feature function"
    )]
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn line_hint(_at: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_the_bytes_touch_is_asked_for_once() {
        assert_eq!(line_span(128, 0), (128, 0));
        assert_eq!(line_span(128, 1), (128, 1));
        assert_eq!(line_span(128, 64), (128, 1));
        assert_eq!(line_span(128, 65), (128, 2));
        // Two bytes straddling a line boundary are two lines.
        assert_eq!(line_span(191, 2), (128, 2));
        assert_eq!(line_span(130, 512), (128, 9));
    }

    #[test]
    fn prefetching_changes_nothing_and_accepts_any_size() {
        let values = vec![7u64; 1000];
        prefetch(&values[..]);
        prefetch_bytes(&values[..], 10);
        prefetch_bytes(&values[..], usize::MAX);
        prefetch(&values[..0]);
        prefetch(&());
        prefetch(&values[3]);
        assert!(values.iter().all(|&v| v == 7));
    }
}
