//! The dedicated game server, as a library so that tests (and forks) can
//! build the same [`App`] the binary runs.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | CLI, environment and config file, merged into [`ServerConfig`] |
//! | [`logging`] | `tracing` subscriber, text or JSON |
//! | [`tick`] | the fixed-tick runner and [`tick::TickStats`] |
//! | [`metrics`] | metric registry and the `/metrics` + `/healthz` endpoint |
//! | [`console`] | admin commands on the terminal |
//! | [`shutdown`] | graceful shutdown on signals and commands |
//! | [`players`] | the roster of connected players for admin tools |
//!
//! The network plugin (UDP transport on the `net-io` thread) is not here
//! yet. It will be added in [`build_app`] next to [`ServerPlugin`]; it
//! reads `bind`, `max_clients` and `key_file` from [`ServerConfig`], keeps
//! [`players::PlayerRoster`] current, acts on [`console::AdminKick`], says
//! goodbye on [`shutdown::ShutdownStarted`], and registers its counters in
//! [`metrics::Metrics`].

pub mod config;
pub mod console;
pub mod logging;
pub mod metrics;
pub mod players;
pub mod shutdown;
pub mod tick;

use std::net::SocketAddr;

use bevy_app::{App, Plugin};

use crate::config::ServerConfig;
use crate::console::ConsolePlugin;
use crate::metrics::{EndpointOptions, Metrics, MetricsEndpoint};
use crate::shutdown::{ShutdownPlugin, ShutdownSwitch};
use crate::tick::{SystemClock, TickPlugin};

/// The server's engine plugins, configured from a [`ServerConfig`]: the
/// fixed tick (real clock), graceful shutdown, the admin console and the
/// player roster. It has no process-wide side effects (no sockets, no
/// signal handlers; see [`build_app`] for those) except the console's stdin
/// reader when `stdin_console` is set.
#[derive(Clone, Debug)]
pub struct ServerPlugin {
    /// The effective configuration, inserted as a resource.
    pub config: ServerConfig,
    /// Read admin commands from stdin when it is a terminal.
    pub stdin_console: bool,
}

impl Plugin for ServerPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.config.clone())
            .init_resource::<Metrics>()
            .add_plugins((
                TickPlugin {
                    config: self.config.tick_config(),
                    clock: SystemClock,
                },
                ShutdownPlugin {
                    grace_ticks: self.config.shutdown_grace_ticks(),
                },
                ConsolePlugin {
                    stdin: self.stdin_console,
                },
            ));
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The metrics endpoint could not bind its address.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsBind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Builds the server as the binary runs it: starts the metrics endpoint,
/// installs the SIGINT/SIGTERM handlers and adds [`ServerPlugin`] with the
/// stdin console. Call `run()` on the result.
///
/// # Errors
/// See [`StartupError`].
pub fn build_app(config: &ServerConfig) -> Result<App, StartupError> {
    let metrics = Metrics::default();
    let endpoint = MetricsEndpoint::start(
        config.metrics_bind,
        metrics.clone(),
        EndpointOptions::default(),
    )
    .map_err(|source| StartupError::MetricsBind {
        addr: config.metrics_bind,
        source,
    })?;
    tracing::info!(addr = %endpoint.local_addr(), "serving /metrics and /healthz");

    let switch = ShutdownSwitch::default();
    shutdown::install_signal_handlers(&switch).map_err(StartupError::Signals)?;

    let mut app = App::new();
    app.insert_resource(metrics)
        .insert_resource(endpoint)
        .insert_resource(switch)
        .add_plugins(ServerPlugin {
            config: config.clone(),
            stdin_console: true,
        });
    Ok(app)
}
