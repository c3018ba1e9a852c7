//! Graceful shutdown on SIGINT, SIGTERM, the console's `shutdown`, or a
//! plugin's request.
//!
//! 1. Anyone asks: a signal handler or another thread flips the
//!    [`ShutdownSwitch`]; a system writes a [`ShutdownRequested`] message.
//! 2. At the start of the next tick ([`ShutdownSystems::Detect`] in
//!    `PreUpdate`) the server enters [`ShutdownState::Draining`] and writes one
//!    [`ShutdownStarted`] message. Plugins react to it in the same tick (in
//!    `FixedUpdate`): save state, tell clients goodbye. The network plugin
//!    puts the shutdown (every client disconnected, no new ones) at the end
//!    of that tick's batch in `FixedPostUpdate`, so goodbyes written before
//!    then reach the clients first. The [`shutting_down`] run condition is
//!    true from then on.
//! 3. The server keeps ticking for `grace_ticks` ticks (counting the first)
//!    so that goodbyes are flushed, or until `grace_time` has passed since the
//!    shutdown started if that comes first (an overloaded server's ticks run
//!    late: counted in ticks alone, its grace period could outlast the
//!    runner's backstop), then [`ShutdownSystems::Exit`] (in `Last`)
//!    writes `AppExit::Success` and the process exits with code 0; after a
//!    [`ShutdownReason::Failure`], `AppExit::error()` (code 1), so that a
//!    supervisor sees the fault.
//!
//! A second SIGINT or SIGTERM while shutting down exits at once with code
//! 128 + signal number; a SIGHUP never does (a closed terminal hangs its
//! jobs up more than once). If the graceful path hangs, the tick runner
//! gives up after [`crate::tick::TickConfig::shutdown_timeout`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bevy_app::{App, AppExit, Last, Plugin, PreUpdate};
use bevy_ecs::prelude::*;
use tracing::{error, info};

/// A thread-safe "please shut down" flag, shared with signal handlers and
/// other threads (e.g. a network thread that hit a fatal error). The tick
/// runner reads it too, to bound how long a graceful shutdown may take.
#[derive(Resource, Clone, Debug, Default)]
pub struct ShutdownSwitch {
    requested: Arc<AtomicBool>,
    /// SIGINT or SIGTERM came: the next one exits at once.
    signalled: Arc<AtomicBool>,
    /// SIGHUP came: a shutdown by signal too, but one that more hangups do
    /// not cut short. A terminal that closes hangs its jobs up more than
    /// once (the shell passes the hangup on, then the kernel sends its
    /// own), and a second signal ending the process at once would cost
    /// the players their goodbye and the store its last commit.
    hung_up: Arc<AtomicBool>,
}

impl ShutdownSwitch {
    /// Asks the server to shut down gracefully. Callable from any thread.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn was_signalled(&self) -> bool {
        self.signalled.load(Ordering::SeqCst) || self.hung_up.load(Ordering::SeqCst)
    }
}

/// Bounds a shutdown that hangs where the tick runner's own timeout
/// cannot see it (an update that never returns, a join after the runner
/// returned): once `switch` is requested, a thread waits `limit` and then
/// calls `expire`, which for the binary logs and exits the process with
/// code 1. The thread polls the switch ten times a second until then.
pub fn spawn_watchdog(
    switch: ShutdownSwitch,
    limit: Duration,
    expire: impl FnOnce() + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            while !switch.is_requested() {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(limit);
            expire();
        })
}

/// Makes SIGINT and SIGTERM (and on Unix SIGHUP) flip `switch`; a second
/// SIGINT or SIGTERM exits the process at once with code 128 + signal
/// number. SIGHUP (the terminal the server runs in closed: an SSH session
/// dropped) would otherwise end it on the spot, without goodbyes or the
/// last commit; it never exits at once, however often it comes (see
/// `ShutdownSwitch::hung_up`); inherited ignored (`nohup`), it stays
/// ignored.
///
/// # Errors
/// The operating system refused to install a handler.
pub fn install_signal_handlers(switch: &ShutdownSwitch) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    for signal in [SIGINT, SIGTERM] {
        // Order matters: the exit check must see the flag from the previous
        // signal, before this signal sets it.
        flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&switch.signalled))?;
        flag::register(signal, Arc::clone(&switch.signalled))?;
        flag::register(signal, Arc::clone(&switch.requested))?;
    }
    #[cfg(unix)]
    if !hangups_ignored() {
        let hangup = signal_hook::consts::SIGHUP;
        flag::register(hangup, Arc::clone(&switch.hung_up))?;
        flag::register(hangup, Arc::clone(&switch.requested))?;
    }
    Ok(())
}

/// Whether this process was started with SIGHUP ignored, as `nohup` starts
/// it: its operator asked for it to outlive the terminal.
#[cfg(unix)]
#[expect(
    unsafe_code,
    reason = "sigaction(2) reads the disposition; nothing safe does"
)]
fn hangups_ignored() -> bool {
    // SAFETY: sigaction is plain data; all zeroes is a valid value of it.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `current`,
    // a valid, writable sigaction.
    let read = unsafe { libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) };
    read == 0 && current.sa_sigaction == libc::SIG_IGN
}

/// Why the server is shutting down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// The admin console's `shutdown` command.
    Console,
    /// [`ShutdownSwitch::request`] from outside the ECS.
    External,
    /// A plugin's own reason.
    Other(String),
    /// A fault the server cannot serve on (its network thread or a
    /// database thread stopped): the process exits with code 1.
    Failure(String),
}

impl std::fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signal => f.write_str("signal"),
            Self::Console => f.write_str("console"),
            Self::External => f.write_str("external request"),
            Self::Other(reason) => f.write_str(reason),
            Self::Failure(fault) => write!(f, "failure: {fault}"),
        }
    }
}

/// Write this to ask for a graceful shutdown. Requests after the first do
/// not start another, but a [`ShutdownReason::Failure`] during the drain
/// still makes the exit an error.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct ShutdownRequested {
    /// Why.
    pub reason: ShutdownReason,
}

/// Written exactly once, in the first tick of the shutdown. Plugins save and
/// say goodbye when they read it.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct ShutdownStarted {
    /// Why.
    pub reason: ShutdownReason,
    /// Ticks that will run, this one included, before the app exits, at
    /// most: fewer when the grace period's wall-clock bound
    /// ([`ShutdownPlugin::grace_time`]) ends it first.
    pub grace_ticks: u32,
}

/// Where the server is in its shutdown.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShutdownState {
    /// Serving normally.
    #[default]
    Running,
    /// Shutting down; the app exits at the end of the tick in which
    /// `ticks_left` reaches zero.
    Draining {
        /// Ticks still to run, this one included.
        ticks_left: u32,
        /// Started by a [`ShutdownReason::Failure`]: the exit is an error.
        failed: bool,
    },
}

/// Run condition: true once the shutdown has started.
pub fn shutting_down(state: Res<ShutdownState>) -> bool {
    *state != ShutdownState::Running
}

/// The shutdown systems, for ordering.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownSystems {
    /// `PreUpdate`: turns requests into [`ShutdownStarted`].
    Detect,
    /// `Last`: counts down the grace ticks and writes `AppExit`.
    Exit,
}

/// Installs the shutdown sequence described in the module docs. Signal
/// handlers are installed separately ([`install_signal_handlers`]) because
/// they are process-wide.
#[derive(Clone, Debug)]
pub struct ShutdownPlugin {
    /// Ticks to keep running after [`ShutdownStarted`], that tick included;
    /// zero is treated as one.
    pub grace_ticks: u32,
    /// Wall-clock bound on the grace period: the app exits at the end of the
    /// first tick that ends this long after the shutdown started, even if
    /// fewer than `grace_ticks` ticks ran. `None`: ticks only.
    pub grace_time: Option<Duration>,
}

impl Default for ShutdownPlugin {
    fn default() -> Self {
        Self {
            grace_ticks: 30,
            grace_time: Some(Duration::from_secs(1)),
        }
    }
}

#[derive(Resource, Clone, Copy, Debug)]
struct Grace {
    ticks: u32,
    time: Option<Duration>,
    /// When the grace time runs out, once the shutdown has started.
    deadline: Option<Instant>,
}

impl Plugin for ShutdownPlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<ShutdownRequested>()
            .add_message::<ShutdownStarted>()
            .init_resource::<ShutdownSwitch>()
            .init_resource::<ShutdownState>()
            .insert_resource(Grace {
                ticks: self.grace_ticks.max(1),
                time: self.grace_time,
                deadline: None,
            })
            .add_systems(PreUpdate, detect_shutdown.in_set(ShutdownSystems::Detect))
            .add_systems(Last, count_down_and_exit.in_set(ShutdownSystems::Exit));
    }
}

fn detect_shutdown(
    mut requests: MessageReader<ShutdownRequested>,
    switch: Res<ShutdownSwitch>,
    mut grace: ResMut<Grace>,
    mut state: ResMut<ShutdownState>,
    mut started: MessageWriter<ShutdownStarted>,
    metrics: Option<Res<crate::metrics::Metrics>>,
) {
    let mut requested = None;
    let mut failure = false;
    for request in requests.read() {
        failure |= matches!(request.reason, ShutdownReason::Failure(_));
        requested.get_or_insert_with(|| request.reason.clone());
    }
    requests.clear();
    if let ShutdownState::Draining { failed, .. } = &mut *state {
        // A fault while draining (state left unsaved) is still a fault.
        if failure && !*failed {
            error!("a failure during the shutdown: the exit will be an error");
            *failed = true;
        }
        return;
    }
    let reason = match requested {
        Some(reason) => reason,
        None if switch.was_signalled() => ShutdownReason::Signal,
        None if switch.is_requested() => ShutdownReason::External,
        None => return,
    };
    switch.request();
    if let Some(metrics) = metrics {
        metrics.mark_shutting_down();
    }
    info!(%reason, grace_ticks = grace.ticks, grace_time = ?grace.time, "shutdown started");
    grace.deadline = grace.time.map(|time| Instant::now() + time);
    *state = ShutdownState::Draining {
        ticks_left: grace.ticks,
        // A failure among this tick's requests, whichever came first.
        failed: failure,
    };
    started.write(ShutdownStarted {
        reason,
        grace_ticks: grace.ticks,
    });
}

fn count_down_and_exit(
    mut requests: MessageReader<ShutdownRequested>,
    mut state: ResMut<ShutdownState>,
    grace: Res<Grace>,
    mut exit: MessageWriter<AppExit>,
) {
    // A failure written during this tick (after `detect_shutdown` ran) is
    // seen here too: the last tick of the drain must not exit 0 past it.
    let failure = requests
        .read()
        .any(|r| matches!(r.reason, ShutdownReason::Failure(_)));
    if let ShutdownState::Draining { ticks_left, failed } = *state {
        let failed = failed || failure;
        let out_of_time = grace.deadline.is_some_and(|at| Instant::now() >= at);
        let ticks_left = if out_of_time {
            0
        } else {
            ticks_left.saturating_sub(1)
        };
        *state = ShutdownState::Draining { ticks_left, failed };
        if ticks_left == 0 {
            info!("shutdown complete");
            exit.write(if failed {
                AppExit::error()
            } else {
                AppExit::Success
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(grace_ticks: u32) -> App {
        let mut app = App::new();
        app.add_plugins(ShutdownPlugin {
            grace_ticks,
            grace_time: None,
        });
        app
    }

    fn started(app: &App) -> Vec<ShutdownStarted> {
        let messages = app.world().resource::<Messages<ShutdownStarted>>();
        messages.iter_current_update_messages().cloned().collect()
    }

    #[test]
    fn the_drain_marks_the_metrics_shutting_down() {
        let mut app = app(3);
        let metrics = crate::metrics::Metrics::default();
        app.insert_resource(metrics.clone());
        app.update();
        assert!(!metrics.is_shutting_down());
        app.world().resource::<ShutdownSwitch>().request();
        app.update();
        assert!(metrics.is_shutting_down());
    }

    #[test]
    fn switch_starts_shutdown_once_and_exits_after_the_grace_ticks() {
        let mut app = app(3);
        app.update();
        assert_eq!(app.should_exit(), None);
        assert_eq!(
            *app.world().resource::<ShutdownState>(),
            ShutdownState::Running
        );

        app.world().resource::<ShutdownSwitch>().request();
        app.update();
        assert_eq!(
            started(&app),
            vec![ShutdownStarted {
                reason: ShutdownReason::External,
                grace_ticks: 3
            }]
        );
        assert_eq!(app.should_exit(), None);
        app.update();
        assert!(started(&app).is_empty());
        assert_eq!(app.should_exit(), None);
        app.update();
        assert_eq!(app.should_exit(), Some(AppExit::Success));
    }

    #[test]
    fn late_ticks_end_the_grace_period_at_its_time() {
        let mut app = App::new();
        app.add_plugins(ShutdownPlugin {
            grace_ticks: 1_000,
            grace_time: Some(Duration::from_millis(200)),
        });
        app.world().resource::<ShutdownSwitch>().request();
        app.update();
        assert_eq!(app.should_exit(), None, "the time has not run out yet");
        // One overloaded tick: the time runs out long before 1,000 ticks.
        std::thread::sleep(Duration::from_millis(250));
        app.update();
        assert_eq!(app.should_exit(), Some(AppExit::Success));
    }

    #[test]
    fn a_failure_during_the_drain_makes_the_exit_an_error() {
        let mut app = app(3);
        app.world_mut().write_message(ShutdownRequested {
            reason: ShutdownReason::Console,
        });
        app.update();
        app.world_mut().write_message(ShutdownRequested {
            reason: ShutdownReason::Failure("the database writer thread stopped".into()),
        });
        app.update();
        assert!(started(&app).is_empty(), "one shutdown");
        app.update();
        assert_eq!(app.should_exit(), Some(AppExit::error()));
    }

    #[test]
    fn the_watchdog_fires_only_after_a_shutdown_is_requested_and_its_limit() {
        let switch = ShutdownSwitch::default();
        let limit = Duration::from_millis(50);
        let (fired, expired) = std::sync::mpsc::channel();
        spawn_watchdog(switch.clone(), limit, move || {
            let _ = fired.send(Instant::now());
        })
        .unwrap();
        assert!(
            expired.recv_timeout(Duration::from_millis(300)).is_err(),
            "no shutdown was requested"
        );
        let requested = Instant::now();
        switch.request();
        let fired_at = expired
            .recv_timeout(Duration::from_secs(30))
            .expect("the watchdog fired");
        let after = fired_at.duration_since(requested);
        assert!(after >= limit, "fired {after:?} after the request");
    }

    #[test]
    fn message_request_carries_its_reason_and_sets_the_switch() {
        let mut app = app(1);
        app.world_mut().write_message(ShutdownRequested {
            reason: ShutdownReason::Console,
        });
        app.update();
        assert_eq!(started(&app)[0].reason, ShutdownReason::Console);
        assert!(app.world().resource::<ShutdownSwitch>().is_requested());
        assert_eq!(app.should_exit(), Some(AppExit::Success));
    }

    /// A failure in the drain's last tick, written after the shutdown
    /// systems read their requests (the database thread watcher runs in
    /// `Update`), still makes the exit an error.
    #[test]
    fn a_failure_in_the_last_tick_of_the_drain_makes_the_exit_an_error() {
        let mut app = app(1);
        app.add_systems(
            bevy_app::Update,
            |mut requests: MessageWriter<ShutdownRequested>| {
                requests.write(ShutdownRequested {
                    reason: ShutdownReason::Failure("the database writer thread stopped".into()),
                });
            },
        );
        app.world_mut().write_message(ShutdownRequested {
            reason: ShutdownReason::Console,
        });
        app.update();
        assert_eq!(app.should_exit(), Some(AppExit::error()));
    }

    /// A failure read in the same tick as another request, after it.
    #[test]
    fn a_failure_behind_another_request_makes_the_exit_an_error() {
        let mut app = app(1);
        for reason in [
            ShutdownReason::Console,
            ShutdownReason::Failure("the database reader thread stopped".into()),
        ] {
            app.world_mut().write_message(ShutdownRequested { reason });
        }
        app.update();
        assert_eq!(app.should_exit(), Some(AppExit::error()));
    }
}
