//! Scheduling priority of the current thread, so that the `net-io` thread
//! can yield its core to the game tick when both want it.
//!
//! The tick has a deadline every period; `net-io`'s work waits in socket
//! buffers without harm for the few milliseconds a tick takes. When the two
//! threads share a core (a server pinned to one, a small VM) and `net-io`
//! runs at the tick's priority, every datagram that arrives mid-tick
//! preempts the tick, which then runs late. A few nice steps lower,
//! `net-io` still gets the core whenever the tick sleeps. On a machine
//! with a core for each thread it changes nothing.

/// Lowers the calling thread's priority by `steps` nice steps (at most to
/// 19, the lowest) and returns its nice value afterwards. Lowering needs
/// no privilege. On Linux the nice value is per thread, so the rest of the
/// process keeps its priority; elsewhere nothing is changed and `Ok(None)`
/// is returned.
///
/// # Errors
/// What `getpriority(2)` or `setpriority(2)` reported.
pub fn lower_current_thread_priority(steps: u8) -> std::io::Result<Option<i32>> {
    #[cfg(target_os = "linux")]
    {
        linux::lower(steps).map(Some)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = steps;
        Ok(None)
    }
}

/// The calling thread's nice value (Linux; `None` elsewhere).
///
/// # Errors
/// What `getpriority(2)` reported.
pub fn current_thread_nice() -> std::io::Result<Option<i32>> {
    #[cfg(target_os = "linux")]
    {
        linux::nice().map(Some)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(None)
    }
}

/// `getpriority(2)` / `setpriority(2)` on the calling thread's id.
#[cfg(target_os = "linux")]
#[expect(
    unsafe_code,
    reason = "getpriority/setpriority/gettid are only reachable through libc; each block says why it is sound"
)]
mod linux {
    use std::io;

    /// The lowest priority (highest nice value) Linux has.
    const LOWEST: i32 = 19;

    fn thread_id() -> libc::id_t {
        // SAFETY: gettid takes no arguments, touches no memory and cannot fail.
        let tid = unsafe { libc::gettid() };
        libc::id_t::try_from(tid).unwrap_or(0)
    }

    pub(super) fn nice() -> io::Result<i32> {
        // getpriority may return -1 as a value: errno tells an error apart.
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for the thread's lifetime; writing an int to it is its purpose.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: plain integer arguments; no memory is passed.
        let value = unsafe { libc::getpriority(libc::PRIO_PROCESS, thread_id()) };
        let error = io::Error::last_os_error();
        if value == -1 && error.raw_os_error().is_some_and(|e| e != 0) {
            return Err(error);
        }
        Ok(value)
    }

    pub(super) fn lower(steps: u8) -> io::Result<i32> {
        let target = (nice()? + i32::from(steps)).min(LOWEST);
        // SAFETY: plain integer arguments; no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id(), target) } != 0 {
            return Err(io::Error::last_os_error());
        }
        nice()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        let before = current_thread_nice().unwrap().unwrap();
        let (lowered, after) = std::thread::spawn(move || {
            let lowered = lower_current_thread_priority(3).unwrap().unwrap();
            (lowered, current_thread_nice().unwrap().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 3).min(19));
        assert_eq!(after, lowered);
        assert_eq!(current_thread_nice().unwrap().unwrap(), before);
        // Never past the lowest priority.
        let floor = std::thread::spawn(|| lower_current_thread_priority(u8::MAX).unwrap())
            .join()
            .unwrap();
        assert_eq!(floor, Some(19));
    }
}
