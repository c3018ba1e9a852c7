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
//!
//! A lower priority is a smaller share, not a shorter turn: once the
//! scheduler hands the core to `net-io` in the middle of a tick, Linux
//! takes it back at its next timer tick (every 4 ms with the common
//! `CONFIG_HZ=250`), not as soon as `net-io`'s share is used. A
//! [`TickSignal`] tells `net-io` that the tick is running on its core, so
//! that it hands the core back itself between batches of work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the game's tick is running, and on which CPU. The game loop
/// marks each tick's start and end; the `net-io` thread calls
/// [`give_way`](Self::give_way) between batches of work. Clones share the
/// state.
#[derive(Debug, Clone, Default)]
pub struct TickSignal(Arc<AtomicU32>);

/// No tick is running.
const IDLE: u32 = 0;
/// A tick is running on a CPU the platform does not tell.
const UNKNOWN_CPU: u32 = u32::MAX;

impl TickSignal {
    /// A signal with no tick running.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tick starts, on the calling thread.
    pub fn tick_started(&self) {
        let running = current_cpu().map_or(UNKNOWN_CPU, |cpu| cpu.saturating_add(1));
        self.0.store(running, Ordering::Relaxed);
    }

    /// The tick is done.
    pub fn tick_finished(&self) {
        self.0.store(IDLE, Ordering::Relaxed);
    }

    /// Whether a tick is running.
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::Relaxed) != IDLE
    }

    /// While a tick runs on the calling thread's CPU (or on a CPU the
    /// platform does not tell), offers the CPU to it (`sched_yield(2)`,
    /// which returns at once when nothing else waits for the CPU); returns
    /// whether it offered. A tick running on another CPU is left alone,
    /// and so is the CPU.
    pub fn give_way(&self) -> bool {
        let running = self.0.load(Ordering::Relaxed);
        if running == IDLE {
            return false;
        }
        if running != UNKNOWN_CPU
            && current_cpu().is_some_and(|cpu| cpu.saturating_add(1) != running)
        {
            return false;
        }
        std::thread::yield_now();
        true
    }
}

/// The CPU the calling thread runs on (Linux; `None` elsewhere or when
/// the call fails).
fn current_cpu() -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        linux::current_cpu()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

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
    reason = "getpriority/setpriority/gettid/sched_getcpu are only reachable through libc; each block says why it is sound"
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

    pub(super) fn current_cpu() -> Option<u32> {
        // SAFETY: sched_getcpu takes no arguments and touches no memory of
        // ours; it returns -1 on failure.
        u32::try_from(unsafe { libc::sched_getcpu() }).ok()
    }

    pub(super) fn lower(steps: u8) -> io::Result<i32> {
        let target = (nice()? + i32::from(steps)).min(LOWEST);
        // SAFETY: plain integer arguments; no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id(), target) } != 0 {
            return Err(io::Error::last_os_error());
        }
        nice()
    }

    /// Pins the calling thread to `cpu`.
    #[cfg(test)]
    pub(super) fn pin_to(cpu: u32) -> io::Result<()> {
        // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes one
        // bit inside it (cpu is below CPU_SETSIZE, or CPU_SET ignores it);
        // sched_setaffinity reads size_of::<cpu_set_t>() bytes of it.
        let result = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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

    #[test]
    fn net_io_gives_way_only_to_a_tick_running_on_its_cpu() {
        std::thread::spawn(|| {
            // Pinned, so that the CPU cannot change between two calls.
            let cpu = current_cpu().expect("sched_getcpu");
            linux::pin_to(cpu).unwrap();
            let game = TickSignal::new();
            let net_io = game.clone();
            assert!(!net_io.give_way(), "no tick is running");
            game.tick_started();
            assert!(net_io.is_running());
            assert!(net_io.give_way(), "the tick runs on this CPU");
            game.0.store(cpu + 2, Ordering::Relaxed);
            assert!(!net_io.give_way(), "the tick runs on another CPU");
            game.0.store(UNKNOWN_CPU, Ordering::Relaxed);
            assert!(net_io.give_way(), "the tick's CPU is not known");
            game.tick_finished();
            assert!(!net_io.is_running());
            assert!(!net_io.give_way(), "the tick is done");
        })
        .join()
        .unwrap();
    }
}
