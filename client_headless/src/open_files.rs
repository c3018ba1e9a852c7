//! Room under the process's open-file limit: many systems start processes
//! at a soft limit of 1,024, far below their hard limit, and a process
//! past it fails one socket at a time ("Too many open files").

/// What to do about a soft limit `soft` (hard limit `hard`) for `needed`
/// files.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// The soft limit is high enough.
    Enough,
    /// Raise the soft limit to this (within the hard one).
    Raise(u64),
    /// Not even the hard limit is.
    TooFew,
}

fn room(needed: u64, soft: u64, hard: u64) -> Room {
    if soft >= needed {
        Room::Enough
    } else if hard >= needed {
        Room::Raise(needed)
    } else {
        Room::TooFew
    }
}

/// Raises the soft open-file limit to `needed` when the hard limit
/// allows it; leaves it as it is otherwise.
///
/// # Errors
/// The limit this process cannot go past, when it is below `needed`. A
/// limit that cannot be read is no error: what fails then reports itself.
#[expect(
    unsafe_code,
    reason = "getrlimit(2) and setrlimit(2) on a plain C struct; nothing safe does"
)]
pub fn make_room(needed: u64) -> Result<(), u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(());
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    match room(needed, soft, hard) {
        Room::Enough => Ok(()),
        Room::Raise(to) => {
            let raised = libc::rlimit {
                rlim_cur: to,
                rlim_max: hard,
            };
            // SAFETY: `raised` is a valid rlimit, read only.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                Ok(())
            } else {
                Err(soft)
            }
        }
        Room::TooFew => Err(hard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_as_far_as_needed_within_the_hard_one() {
        assert_eq!(room(5_064, 20_000, 20_000), Room::Enough);
        assert_eq!(room(5_064, 1_024, 524_288), Room::Raise(5_064));
        assert_eq!(room(5_064, 1_024, 4_096), Room::TooFew);
    }
}
