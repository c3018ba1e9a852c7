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
//! | [`readiness`] | the addresses a started server announces, for supervisors and tests |
//! | [`net`] | the `net-io` thread bridged into the ECS, typed messages |
//! | [`emote`] | the example gameplay plugin (see "Make it your game") |
//! | [`chat`] | chat scopes, validation, rate limits, sequence numbers |
//! | [`inventory`] | items, trades, the world spawner; atomic and persisted |
//! | [`persistence`] | the storage trait, SQLite, the reader and writer threads, the audit |
//! | [`movement`] | validated, server-authoritative movement input |
//! | [`interest`] | area of interest: budgeted, delta-encoded snapshots |

pub mod chat;
pub mod config;
pub mod console;
pub mod emote;
pub mod interest;
pub mod inventory;
pub mod logging;
pub mod metrics;
pub mod movement;
pub mod net;
mod outlet;
pub mod persistence;
pub mod players;
pub mod readiness;
pub mod shutdown;
pub mod tick;
pub mod world;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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
                    grace_time: Some(Duration::from_millis(u64::from(
                        self.config.shutdown_grace_ms,
                    ))),
                },
                ConsolePlugin {
                    stdin: self.stdin_console,
                },
            ));
    }
}

/// The network and the gameplay plugins. Needs a [`net::NetServer`]
/// resource (see [`start_network`]).
pub struct GamePlugins;

impl Plugin for GamePlugins {
    fn build(&self, app: &mut App) {
        // Gameplay settings from the configuration file, when there is one;
        // each plugin falls back to its defaults otherwise.
        let mut chat = None;
        if let Some(config) = app.world().get_resource::<ServerConfig>().cloned() {
            // Chat's nearby radius is the view's, once corrected.
            let interest = config.interest.validated();
            chat = Some(chat::ChatConfig {
                nearby_radius: interest.radius,
                tick_hz: config.tick_rate.hz(),
                ..config.chat.clone()
            });
            app.insert_resource(config.movement)
                .insert_resource(interest);
        }
        app.add_plugins((
            net::NetPlugin,
            emote::EmotePlugin,
            chat::ChatPlugin { config: chat },
            inventory::InventoryPlugin,
            movement::MovementPlugin,
            interest::InterestPlugin,
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
    /// A shutdown was asked for (SIGINT, SIGTERM, SIGHUP) while the server was
    /// starting: it stops before serving, which is no failure.
    #[error("a shutdown was requested while the server was starting")]
    Interrupted,
    /// The shutdown watchdog thread could not be started.
    #[error("cannot start the shutdown watchdog thread: {0}")]
    Watchdog(std::io::Error),
    /// The key file could not be used.
    #[error(transparent)]
    Key(#[from] shared::keys::KeyError),
    /// A production key file holds the public development key.
    #[error("{} holds the public development key; generate a real key for production", .0.display())]
    DevKeyInProduction(std::path::PathBuf),
    /// The game socket could not be opened.
    #[error(transparent)]
    Net(#[from] shared::io::SpawnError),
    /// The inventory (catalogue, storage, reader and writer threads) could
    /// not start.
    #[error("inventory: {0}")]
    Inventory(#[from] inventory::InventoryStartError),
    /// The connection layer rejected its configuration.
    #[error("invalid network configuration: {0}")]
    NetConfig(#[from] shared::endpoint::EndpointConfigError),
}

/// The key in the key file at `path`.
///
/// # Errors
/// An unreadable key file, or one holding the development key.
pub fn load_production_key(path: &Path) -> Result<shared::netcode::Key, StartupError> {
    let key = shared::keys::load_key_file(path)?;
    if shared::keys::is_dev_key(&key) {
        return Err(StartupError::DevKeyInProduction(path.to_path_buf()));
    }
    Ok(key)
}

/// The connect-token key the server uses: its key file in production, the
/// public development key otherwise (with a loud warning).
///
/// # Errors
/// An unreadable key file, or one holding the development key.
pub fn load_key(config: &ServerConfig) -> Result<shared::netcode::Key, StartupError> {
    match &config.key_file {
        Some(path) => load_production_key(path),
        None if config.bind().ip().is_loopback() => {
            tracing::warn!(
                "DEV MODE: no --key-file given, using the public development key from \
                 assets/dev.key. Anyone can mint connect tokens for this server. \
                 Never run a dev-mode server where untrusted players can reach it."
            );
            Ok(shared::keys::dev_key())
        }
        None => {
            tracing::error!(
                bind = %config.bind(),
                "DEV MODE ON THE NETWORK: no --key-file given, using the public development \
                 key from assets/dev.key, and listening beyond this machine. Anyone who \
                 reaches this address can mint connect tokens and play as any account. Give \
                 --key-file for anything but a trusted network."
            );
            Ok(shared::keys::dev_key())
        }
    }
}

/// Binds the game socket and starts the `net-io` thread for `config`.
///
/// # Errors
/// See [`StartupError`].
pub fn start_network(config: &ServerConfig) -> Result<net::NetServer, StartupError> {
    start_network_unless(config, || false)
}

/// [`start_network`], unless `stop` says so once the socket is bound and
/// the connection tables are made (which takes a while for many clients):
/// then [`StartupError::Interrupted`], before anything serves or the game
/// socket is announced.
fn start_network_unless(
    config: &ServerConfig,
    stop: impl Fn() -> bool,
) -> Result<net::NetServer, StartupError> {
    use shared::endpoint::ServerEndpoint;
    let key = load_key(config)?;
    let socket = shared::io::socket::bind_game_socket(config.bind()).map_err(|source| {
        shared::io::SpawnError::Bind {
            addr: config.bind(),
            source,
        }
    })?;
    let local = socket
        .local_addr()
        .map_err(shared::io::SpawnError::Thread)?;
    // With `--bind ...:0` the OS picks the port; tokens must name that one.
    let public_addrs = config.public_addrs(local.port());
    let public_addr = public_addrs[0];
    let endpoint = ServerEndpoint::new(
        endpoint_config(config, netcode_config(config, key, public_addrs)),
        &mut shared::io::system_rng(),
    )?;
    if stop() {
        return Err(StartupError::Interrupted);
    }
    let io = shared::io::ServerIo::spawn_on(socket, endpoint, io_config(config))?;
    tracing::info!(
        bind = %io.local_addr(),
        public = %public_addr,
        "{}",
        readiness::GAME_ANNOUNCEMENT
    );
    Ok(net::NetServer::io(io))
}

/// The secure layer's settings for `config`, signing with `key`, reached
/// at `public_addrs`.
fn netcode_config(
    config: &ServerConfig,
    key: shared::netcode::Key,
    public_addrs: Vec<SocketAddr>,
) -> shared::netcode::ServerConfig {
    let mut netcode =
        shared::netcode::ServerConfig::new(shared::protocol::PROTOCOL_ID, key, public_addrs);
    netcode.max_clients = config.max_clients as usize;
    config.handshake.apply(&mut netcode);
    netcode
}

/// The endpoint's settings for `config`, around its secure layer's.
fn endpoint_config(
    config: &ServerConfig,
    netcode: shared::netcode::ServerConfig,
) -> shared::endpoint::ServerEndpointConfig {
    shared::endpoint::ServerEndpointConfig {
        max_total_receive_buffer: config.memory.max_receive_bytes(),
        max_total_send_buffer: config.memory.max_send_bytes(),
        ..shared::endpoint::ServerEndpointConfig::new(
            netcode,
            shared::protocol::channels::transport_config(),
        )
    }
}

/// The `net-io` thread's settings for `config`.
fn io_config(config: &ServerConfig) -> shared::io::ServerIoConfig {
    shared::io::ServerIoConfig {
        droppable_channels: vec![
            shared::protocol::channels::MOVEMENT,
            shared::protocol::channels::EVENTS,
        ],
        nice_steps: config.net_io_nice,
        max_inbound_bytes: config.memory.max_inbound_bytes(),
        ..shared::io::ServerIoConfig::default()
    }
}

/// How long after the tick runner's shutdown timeout and the exit's wait
/// for the last inventory batch the watchdog ends a shutdown that still
/// hangs (the runner's own timeout, checked between ticks, and the joins
/// after it come first).
pub const SHUTDOWN_WATCHDOG_MARGIN: Duration = Duration::from_secs(5);

/// How long after a shutdown is requested the watchdog ends the process
/// (exit code 1): the runner's timeout (which covers the grace period),
/// then the exit tick's wait for the last inventory batch
/// ([`inventory::FINAL_SAVE_TIMEOUT`], which the runner cannot see), then
/// [`SHUTDOWN_WATCHDOG_MARGIN`].
pub fn shutdown_watchdog_limit(tick: &tick::TickConfig) -> Duration {
    tick.shutdown_timeout + inventory::FINAL_SAVE_TIMEOUT + SHUTDOWN_WATCHDOG_MARGIN
}

/// Builds the server as the binary runs it: starts the metrics endpoint,
/// installs the SIGINT/SIGTERM handlers and adds [`ServerPlugin`] with the
/// stdin console. Call `run()` on the result.
///
/// # Errors
/// See [`StartupError`].
pub fn build_app(config: &ServerConfig) -> Result<App, StartupError> {
    // First, so that a signal from here on is a graceful stop (below: before
    // the game socket opens, `StartupError::Interrupted`), never the
    // default action's sudden end.
    let switch = ShutdownSwitch::default();
    shutdown::install_signal_handlers(&switch).map_err(StartupError::Signals)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let metrics = Metrics::default();
    for (name, help, counter) in [
        (
            "log_lines_dropped_total",
            "Log lines dropped because stderr was not being read.",
            &*logging::LINES_DROPPED,
        ),
        (
            "console_answers_dropped_total",
            "Console answers dropped because stdout was not being read.",
            &*console::ANSWERS_DROPPED,
        ),
    ] {
        if let Err(error) = metrics.registry().adopt_counter(name, help, counter) {
            tracing::warn!(%error, "metric not exported");
        }
    }
    let endpoint = MetricsEndpoint::start(
        config.metrics_bind,
        metrics.clone(),
        EndpointOptions::default(),
    )
    .map_err(|source| StartupError::MetricsBind {
        addr: config.metrics_bind,
        source,
    })?;
    tracing::info!(addr = %endpoint.local_addr(), "{}", readiness::METRICS_ANNOUNCEMENT);

    let limit = shutdown_watchdog_limit(&config.tick_config());
    shutdown::spawn_watchdog(switch.clone(), limit, move || {
        tracing::error!(?limit, "the shutdown hangs; exiting with an error");
        logging::flush(logging::EXIT_FLUSH_LIMIT);
        std::process::exit(1);
    })
    .map_err(StartupError::Watchdog)?;
    let inventory = inventory::InventoryService::open(
        &config.data_dir,
        std::sync::Arc::new(
            inventory::Catalogue::embedded().map_err(inventory::InventoryStartError::from)?,
        ),
        config.inventory.clone(),
    )?;
    tracing::info!(data_dir = %config.data_dir.display(), "inventory storage open");
    // A signal while the store opened (it waits up to seconds for a busy
    // database): stop here, before the game socket is announced.
    if switch.is_requested() {
        return Err(StartupError::Interrupted);
    }
    let network = start_network_unless(config, || switch.is_requested())?;

    let mut app = App::new();
    app.insert_resource(metrics)
        .insert_resource(endpoint)
        .insert_resource(switch)
        .insert_resource(network)
        .insert_resource(inventory)
        .add_plugins(ServerPlugin {
            config: config.clone(),
            stdin_console: true,
        })
        .add_plugins(GamePlugins);
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest graceful shutdown (the longest grace period, the exit
    /// tick's wait for a slow last commit, `net-io`'s goodbyes) ends well
    /// before the watchdog calls it hung: a slow disk that stores the
    /// last batch in time does not turn a clean exit into exit code 1.
    #[test]
    fn the_longest_graceful_shutdown_ends_before_the_watchdog() {
        let tick = ServerConfig::default().tick_config();
        let grace = Duration::from_millis(config::MAX_SHUTDOWN_GRACE_MS.into());
        let goodbyes = shared::io::ServerIoConfig::default().shutdown_linger;
        let longest = grace + tick.rate.period() + inventory::FINAL_SAVE_TIMEOUT + goodbyes;
        let limit = shutdown_watchdog_limit(&tick);
        assert!(
            longest + Duration::from_secs(2) <= limit,
            "{longest:?} of {limit:?}"
        );
        assert!(
            grace < tick.shutdown_timeout,
            "the runner outwaits the grace"
        );
    }

    /// A signal while the socket is bound and the connection tables are
    /// made stops the server there: it was announced and served, then
    /// drained for its grace period, where the README promises a server
    /// signalled while it starts never serves.
    #[test]
    fn a_signal_while_the_network_starts_stops_it_before_it_serves() {
        let config = ServerConfig {
            bind_set: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        };
        assert!(matches!(
            start_network_unless(&config, || true),
            Err(StartupError::Interrupted)
        ));
        assert!(start_network_unless(&config, || false).is_ok());
    }

    /// A view radius the interest plugin corrects is corrected for chat's
    /// nearby scope too, which uses it.
    #[test]
    fn chat_hears_as_far_as_the_corrected_view() {
        let mut config = ServerConfig::default();
        config.interest.radius = f32::NAN;
        let (server, _net) = net::NetServer::loopback();
        let mut app = App::new();
        app.add_message::<console::AdminKick>()
            .add_message::<shutdown::ShutdownStarted>()
            .insert_resource(server)
            .insert_resource(config)
            .add_plugins(GamePlugins);
        let radius = app.world().resource::<chat::ChatConfig>().nearby_radius;
        assert_eq!(radius, interest::InterestConfig::default().radius);
        assert_eq!(
            app.world().resource::<interest::InterestConfig>().radius,
            radius
        );
    }
    /// The `[handshake]` defaults are the secure layer's (what the README
    /// and server.toml give), and a setting reaches it.
    #[test]
    fn handshake_defaults_are_the_libraries_and_settings_reach_it() {
        let library = shared::netcode::ServerConfig::new(
            shared::protocol::PROTOCOL_ID,
            shared::keys::dev_key(),
            vec!["127.0.0.1:7777".parse().unwrap()],
        );
        let public = library.public_addresses[0];
        let mut config = ServerConfig::default();
        let netcode = netcode_config(&config, shared::keys::dev_key(), vec![public]);
        assert_eq!(netcode.rate_limit, library.rate_limit);
        assert_eq!(netcode.max_pending, library.max_pending);
        assert_eq!(netcode.max_token_entries, library.max_token_entries);

        config.handshake = config::HandshakeConfig {
            per_second: 1000,
            burst: 2000,
            tracked_sources: 65536,
            max_pending: 4096,
            max_token_entries: 100_000,
            spare_per_second: 2048,
        };
        let netcode = netcode_config(&config, shared::keys::dev_key(), vec![public]);
        assert_eq!(
            netcode.rate_limit,
            shared::netcode::HandshakeRateLimit {
                per_second: 1000,
                burst: 2000,
                table_entries: 65536,
                spare_per_second: 2048,
            }
        );
        assert_eq!(
            (netcode.max_pending, netcode.max_token_entries),
            (4096, 100_000)
        );
        assert_eq!(netcode.max_clients, config.max_clients as usize);
    }

    /// The `[memory]` bounds reach the endpoint and `net-io`, and their
    /// defaults are the library's (what the README's table gives).
    #[test]
    fn memory_bounds_reach_the_endpoint_and_the_io_thread() {
        let netcode = || {
            shared::netcode::ServerConfig::new(
                shared::protocol::PROTOCOL_ID,
                shared::keys::dev_key(),
                vec!["127.0.0.1:7777".parse().unwrap()],
            )
        };
        let defaults = ServerConfig::default();
        let library = shared::endpoint::ServerEndpointConfig::new(
            netcode(),
            shared::protocol::channels::transport_config(),
        );
        let endpoint = endpoint_config(&defaults, netcode());
        assert_eq!(
            endpoint.max_total_receive_buffer,
            library.max_total_receive_buffer
        );
        assert_eq!(
            endpoint.max_total_send_buffer,
            library.max_total_send_buffer
        );
        assert_eq!(
            io_config(&defaults).max_inbound_bytes,
            shared::io::ServerIoConfig::default().max_inbound_bytes
        );

        let mut config = ServerConfig::default();
        config.memory = config::MemoryConfig {
            max_receive_mib: 2048,
            max_send_mib: 1024,
            max_inbound_mib: 200,
        };
        let endpoint = endpoint_config(&config, netcode());
        assert_eq!(endpoint.max_total_receive_buffer, 2048 << 20);
        assert_eq!(endpoint.max_total_send_buffer, 1024 << 20);
        assert_eq!(io_config(&config).max_inbound_bytes, 200 << 20);
    }
}
