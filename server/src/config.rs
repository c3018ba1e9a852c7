//! Configuration: built-in defaults, then a TOML file, then environment
//! variables, then command-line flags, each overriding the one before.
//!
//! The defaults live in `assets/server.toml`, which is also compiled into
//! the binary, so the server runs on its defaults from any directory.
//! `--config FILE` picks another file; without it `assets/server.toml` in
//! the working directory is used if present. Keys missing from a file keep
//! their built-in default; unknown keys are an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use bevy_ecs::resource::Resource;
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::chat::ChatConfig;
use crate::interest::InterestConfig;
use crate::inventory::CoreConfig;
use crate::logging::LogFormat;
use crate::movement::MovementConfig;
use crate::tick::{MAX_TICK_HZ, MIN_TICK_HZ, TickConfig, TickRate, TickRateError};
use shared::movement::CLIENT_SNAPSHOT_HISTORY;

/// The config file used when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "assets/server.toml";

/// `assets/server.toml` as compiled into the binary.
pub const EMBEDDED_CONFIG: &str = include_str!("../../assets/server.toml");

/// Longest accepted graceful-shutdown grace period, in milliseconds, so
/// that a shutdown fits in the ten seconds container runtimes give before
/// SIGKILL; a commit still under way at the exit, waited for up to 6 s
/// (the store's busy timeout is 5 s), can take it past them.
pub const MAX_SHUTDOWN_GRACE_MS: u32 = 8_000;

/// Most clients one server takes: its per-client tables are allocated up
/// front, so a mistyped huge value would fail at start for want of memory
/// instead of with a message.
pub const MAX_CLIENTS: u32 = 65_536;

/// Most nice steps `net_io_nice` may lower the `net-io` thread by (the
/// range of nice values is 40 steps; 19 takes a thread at 0 to the lowest).
pub const MAX_NET_IO_NICE: u8 = 19;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "server",
    version,
    about = "The dedicated game server.",
    long_about = "The dedicated game server.\n\n\
        Settings come from built-in defaults, then the config file, then \
        GAMESERVER_* environment variables, then flags, each overriding the \
        one before. Without a subcommand, `run` is assumed."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses a command line (`argv[0]` the program), with `run` when the
    /// first argument names no subcommand: `server --tick-hz 60` is
    /// `server run --tick-hz 60`, and `server --help` lists `run`'s flags.
    /// (The flags of `run` are not also declared at the top level: clap
    /// checks a top-level flag's environment variable even when a
    /// subcommand is given, so `GAMESERVER_TICK_HZ=500 server run
    /// --tick-hz 60` failed on the variable the flag overrides, and a bad
    /// `GAMESERVER_BIND` stopped `server audit`.)
    ///
    /// # Errors
    /// What clap says of the arguments, `--help` and `--version` included.
    pub fn parse_argv<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        let mut argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
        let first = argv.get(1).and_then(|a| a.to_str());
        let names_subcommand = matches!(
            first,
            Some("run" | "token" | "audit" | "help" | "-V" | "--version")
        );
        if !names_subcommand {
            argv.insert(argv.len().min(1), "run".into());
        }
        Self::try_parse_from(argv)
    }

    /// The subcommand to execute.
    pub fn into_command(self) -> Command {
        self.command
    }
}

/// For a command-line error about a flag that was not on the command line
/// (`argv`) but came from its environment variable (read with `env`):
/// which variable, so that an operator configuring a container by
/// environment alone is not sent looking for a flag they never passed.
pub fn env_note(
    error: &clap::Error,
    argv: &[std::ffi::OsString],
    env: impl Fn(&std::ffi::OsStr) -> Option<std::ffi::OsString>,
) -> Option<String> {
    use clap::CommandFactory as _;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split([' ', '=']).next()?;
    let long = flag.strip_prefix("--")?;
    let on_command_line = argv.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    if on_command_line {
        return None;
    }
    let command = Cli::command();
    let variable = std::iter::once(&command)
        .chain(command.get_subcommands())
        .flat_map(clap::Command::get_arguments)
        .find(|a| a.get_long() == Some(long))
        .and_then(clap::Arg::get_env)?;
    let value = env(variable)?;
    Some(format!(
        "{flag} was not given: the value {:?} came from the environment variable {}",
        value.to_string_lossy(),
        variable.to_string_lossy()
    ))
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    #[command(after_help = "Other commands: `server token --help`, `server audit --help`.")]
    Run(RunArgs),
    /// Mint a connect token (base64) for one player, as a login backend would.
    Token(TokenArgs),
    /// Check the stored data: SQLite integrity, the item ledger and the
    /// slots; list the items held that the catalogue does not define.
    /// Prints JSON; exits 1 when a check fails, 2 when the store cannot be
    /// read.
    Audit(AuditArgs),
}

/// Flags of `server audit`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct AuditArgs {
    /// Config file (TOML), read for `data_dir` as the server reads it [default: assets/server.toml if it exists, else built-in defaults]
    #[arg(long, env = "GAMESERVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory to check [default: the config file's data_dir, else ./data]
    #[arg(long, env = "GAMESERVER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl AuditArgs {
    /// The settings as `server run` would resolve them with these flags.
    pub fn run_args(&self) -> RunArgs {
        RunArgs {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            ..RunArgs::default()
        }
    }
}

/// Flags of `server token`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TokenArgs {
    /// The player's account id, carried in the token.
    #[arg(long, value_name = "N")]
    pub client_id: u64,
    /// A server address the token is valid for (repeat for fallbacks, at
    /// most 32): one players can send to, as `public_addr` must be.
    #[arg(long = "server", value_name = "ADDR", required = true, value_parser = reachable_addr)]
    pub servers: Vec<SocketAddr>,
    /// Seconds until the token expires.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub expires: u64,
    /// Seconds of silence after which the secure connection times out (0
    /// or less: never, for debugging; the transport's 10 s idle timeout
    /// still ends a session silent that long).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        allow_negative_numbers = true
    )]
    pub timeout: i32,
    /// Config file (TOML), read for `key_file` as the server reads it [default: assets/server.toml if it exists, else built-in defaults]
    #[arg(long, env = "GAMESERVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The private key file [default: the config file's key_file, else the public development key]
    #[arg(long, env = "GAMESERVER_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The settings as `server run` would resolve them with these flags.
    pub fn run_args(&self) -> RunArgs {
        RunArgs {
            config: self.config.clone(),
            key_file: self.key_file.clone(),
            ..RunArgs::default()
        }
    }
}

/// Flags of `server run`. Every field is optional so that an absent flag
/// (and absent environment variable) falls through to the config file.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct RunArgs {
    /// Config file (TOML) [default: assets/server.toml if it exists, else built-in defaults]
    #[arg(long, env = "GAMESERVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// UDP address for game traffic [default: 127.0.0.1:7777 in dev mode (no key file), 0.0.0.0:7777 with a key file]
    #[arg(long, env = "GAMESERVER_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,

    /// TCP address of the HTTP endpoint serving /metrics and /healthz [default: 127.0.0.1:9100]
    #[arg(long, env = "GAMESERVER_METRICS_BIND", value_name = "ADDR")]
    pub metrics_bind: Option<SocketAddr>,

    /// Folder for persistent data [default: ./data]
    #[arg(long, env = "GAMESERVER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Simulation ticks per second, 1 to 128 [default: 30]
    #[arg(long, env = "GAMESERVER_TICK_HZ", value_name = "HZ",
          value_parser = clap::value_parser!(u32).range(i64::from(MIN_TICK_HZ)..=i64::from(MAX_TICK_HZ)))]
    pub tick_hz: Option<u32>,

    /// Most clients connected at once, 1 to 65536 [default: 1024]
    #[arg(long, env = "GAMESERVER_MAX_CLIENTS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CLIENTS)))]
    pub max_clients: Option<u32>,

    /// File holding the private key shared with the connect-token backend; without it the server runs in dev mode on the public dev key [default: none]
    #[arg(long, env = "GAMESERVER_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Address clients reach this server at, as written in connect tokens [default: --bind, with 127.0.0.1 for an unspecified IP]
    #[arg(long, env = "GAMESERVER_PUBLIC_ADDR", value_name = "ADDR")]
    pub public_addr: Option<SocketAddr>,

    /// Log line format [default: text]
    #[arg(long, env = "GAMESERVER_LOG_FORMAT", value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter in RUST_LOG syntax, e.g. `info,server::tick=debug` [default: info]
    #[arg(long, env = "RUST_LOG", value_name = "FILTER")]
    pub log_filter: Option<String>,

    /// Ticks keep running this long after a shutdown starts, so plugins can
    /// save and say goodbye; 0 to 8000 ms [default: 1000]
    #[arg(long, env = "GAMESERVER_SHUTDOWN_GRACE_MS", value_name = "MS",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_SHUTDOWN_GRACE_MS)))]
    pub shutdown_grace_ms: Option<u32>,

    /// Nice steps the network I/O thread runs below the tick, so it yields a
    /// shared core to the tick; 0 to 19 [default: 10]
    #[arg(long, env = "GAMESERVER_NET_IO_NICE", value_name = "STEPS",
          value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_NET_IO_NICE)))]
    pub net_io_nice: Option<u8>,

    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,
}

/// A config file's contents: every key optional.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServerConfig::bind`].
    pub bind: Option<SocketAddr>,
    /// See [`ServerConfig::metrics_bind`].
    pub metrics_bind: Option<SocketAddr>,
    /// See [`ServerConfig::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServerConfig::tick_rate`].
    pub tick_hz: Option<u32>,
    /// See [`ServerConfig::max_clients`].
    pub max_clients: Option<u32>,
    /// See [`ServerConfig::key_file`].
    pub key_file: Option<PathBuf>,
    /// See [`ServerConfig::public_addr`].
    pub public_addr: Option<SocketAddr>,
    /// See [`ServerConfig::log_format`].
    pub log_format: Option<LogFormat>,
    /// See [`ServerConfig::log_filter`].
    pub log_filter: Option<String>,
    /// See [`ServerConfig::shutdown_grace_ms`].
    pub shutdown_grace_ms: Option<u32>,
    /// See [`ServerConfig::net_io_nice`].
    pub net_io_nice: Option<u8>,
    /// The `[movement]` table; missing keys keep their defaults.
    pub movement: Option<MovementConfig>,
    /// The `[interest]` table.
    pub interest: Option<InterestConfig>,
    /// The `[chat]` table.
    pub chat: Option<ChatConfig>,
    /// The `[inventory]` table.
    pub inventory: Option<CoreConfig>,
    /// The `[memory]` table.
    pub memory: Option<MemoryConfig>,
    /// The `[handshake]` table.
    pub handshake: Option<HandshakeConfig>,
}

impl FileConfig {
    /// Parses TOML; `origin` names the source in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] on bad TOML, unknown keys or wrong types.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            origin: origin.to_owned(),
            message: error.to_string(),
        })
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// What the parser said, with line and column.
        message: String,
    },
    /// `tick_hz` is out of range.
    #[error("tick_hz in {origin}: {source}")]
    TickRate {
        /// Where the value came from.
        origin: String,
        /// The range error.
        source: TickRateError,
    },
    /// `max_clients` is zero or above [`MAX_CLIENTS`].
    #[error("max_clients = {value} in {origin} must be within 1..={MAX_CLIENTS}")]
    MaxClients {
        /// Where the value came from.
        origin: String,
        /// The value given.
        value: u32,
    },
    /// `shutdown_grace_ms` is too long.
    #[error(
        "shutdown_grace_ms = {value} in {origin} is too long: at most {MAX_SHUTDOWN_GRACE_MS} ms"
    )]
    ShutdownGrace {
        /// Where the value came from.
        origin: String,
        /// The value given.
        value: u32,
    },
    /// `net_io_nice` is out of range.
    #[error("net_io_nice = {value} in {origin} is out of range: 0 to {MAX_NET_IO_NICE}")]
    NetIoNice {
        /// Where the value came from.
        origin: String,
        /// The value given.
        value: u8,
    },
    /// A `[movement]` value cannot run a game.
    #[error("[movement] in {origin}: {message}")]
    Movement {
        /// Where the value came from.
        origin: String,
        /// What is wrong (see [`MovementConfig::check`]).
        message: String,
    },
    /// An `[interest]` value is out of its range.
    #[error("[interest] in {origin}: {message}")]
    Interest {
        /// Where the value came from.
        origin: String,
        /// What is wrong (see [`InterestConfig::check`]).
        message: String,
    },
    /// A `[chat]` value cannot run a chat.
    #[error("[chat] in {origin}: {message}")]
    Chat {
        /// Where the value came from.
        origin: String,
        /// What is wrong (see [`ChatConfig::check`]).
        message: String,
    },
    /// An `[inventory]` value cannot run a game.
    #[error("[inventory] in {origin}: {message}")]
    Inventory {
        /// Where the value came from.
        origin: String,
        /// What is wrong (see [`CoreConfig::check`]).
        message: String,
    },
    /// `[inventory] world_extent` lets the spawner place items outside the
    /// `[movement]` world, where no player can go to pick them up.
    #[error(
        "inventory.world_extent = {world_extent} in {origin} spawns items anywhere within \
         {world_extent} m of the world's centre on both axes, which reaches outside the world \
         players move in (movement.world_min = {world_min}, movement.world_max = \
         {world_max}): an item there could never be picked up, and once spawner_target such \
         items lay in the world the spawner would stop for good. The spawn square must lie \
         inside the world, edges included (pickup_radius is not counted as reach beyond \
         it): lower world_extent to at most half the world's narrower side, widen the world, \
         or set spawner_target = 0 to spawn nothing"
    )]
    SpawnOutsideWorld {
        /// Where the values came from.
        origin: String,
        /// `[inventory] world_extent`.
        world_extent: f32,
        /// `[movement] world_min`.
        world_min: glam::Vec2,
        /// `[movement] world_max`.
        world_max: glam::Vec2,
    },
    /// A `[memory]` bound is out of its range.
    #[error("[memory] in {origin}: {message}")]
    Memory {
        /// Where the value came from.
        origin: String,
        /// What is wrong (see [`MemoryConfig::check`]).
        message: String,
    },
    /// A `[handshake]` value is out of its range.
    #[error("[handshake] in {origin}: {message}")]
    Handshake {
        /// Where the value came from.
        origin: String,
        /// What is wrong (see [`HandshakeConfig::check`]).
        message: String,
    },
    /// `public_addr` names no address a client can send to.
    #[error(
        "public_addr = {value} in {origin} is not an address clients can reach: connect \
         tokens must name this server's own address (0.0.0.0 and :: mean any interface, \
         for bind only)"
    )]
    PublicAddr {
        /// Where the value came from.
        origin: String,
        /// The value given.
        value: SocketAddr,
    },
    /// `log_filter` (or `RUST_LOG`) is not a filter.
    #[error("log_filter in {origin}: {source}")]
    LogFilter {
        /// Where the value came from.
        origin: String,
        /// What is wrong with it.
        source: crate::logging::LoggingError,
    },
}

/// Connection handshakes: how many the server holds at once, and how fast
/// one source address may send the packets of those that yield nothing
/// (`[handshake]`). All of it is allocated at start.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HandshakeConfig {
    /// Sustained handshake packets a second from one source (an IPv4
    /// address or an IPv6 /64, whose /56 has 16 times the limit and whose
    /// /48 256 times, for all their /64s together) that yield nothing: junk, repeated requests,
    /// failed responses. A request with a token the server has not seen
    /// and a response that connects do not count, so players behind one
    /// address connect at once (on the public development key, whose
    /// tokens anyone can mint, nothing is then limited). Default 32.
    pub per_second: u32,
    /// How many of those may come at once. Default 64.
    pub burst: u32,
    /// Buckets of the rate limit held at once (a fixed table, rounded up
    /// to a power of two; an IPv4 source takes one, an IPv6 source three,
    /// its /64, its /56 and its /48; a source pushed out comes back with a full
    /// burst). Default 4,096.
    pub tracked_sources: u32,
    /// Half-open handshakes (a valid token, no response yet) held at once;
    /// past it new ones are dropped. Default 1,024.
    pub max_pending: u32,
    /// Used tokens remembered (a token is good from one address only);
    /// past it, once expired ones are purged, new tokens are dropped.
    /// One account holds 8 at most: its ninth takes the place of the one
    /// expiring first, and its tokens expiring no later than one so lost
    /// are refused as expired (mint an account's tokens with one lifetime).
    /// About 500 bytes each, allocated at start. Default 16,384.
    pub max_token_entries: u32,
    /// Handshake packets a second, all sources together, let through past
    /// their source's limit, first come, first served (0: none). One
    /// forging a player's address as its source spends that address's
    /// limit; the player's own packets then still get their share of
    /// these, so the forgery slows the handshake down instead of stopping
    /// it. Default 512.
    pub spare_per_second: u32,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            per_second: 32,
            burst: 64,
            tracked_sources: 4096,
            max_pending: 1024,
            max_token_entries: 16 * 1024,
            spare_per_second: 512,
        }
    }
}

impl HandshakeConfig {
    /// Smallest and largest value of each setting, so that a mistyped
    /// huge one is an error, not gigabytes allocated at start or a limit
    /// that never bites.
    pub const LIMITS: [(&'static str, u32, u32); 6] = [
        ("per_second", 1, 1_000_000),
        ("burst", 1, 1_000_000),
        ("tracked_sources", 1, 1 << 20),
        ("max_pending", 1, 1 << 16),
        ("max_token_entries", 1, 1 << 20),
        ("spare_per_second", 0, 1_000_000),
    ];

    /// Checks every setting is within its range in [`Self::LIMITS`].
    ///
    /// # Errors
    /// The first setting out of range, named as in the file.
    pub fn check(&self) -> Result<(), String> {
        let values = [
            self.per_second,
            self.burst,
            self.tracked_sources,
            self.max_pending,
            self.max_token_entries,
            self.spare_per_second,
        ];
        for ((key, min, max), value) in Self::LIMITS.into_iter().zip(values) {
            if !(min..=max).contains(&value) {
                return Err(format!("{key} must be {min} to {max}, got {value}"));
            }
        }
        Ok(())
    }

    /// Sets `netcode`'s handshake tables and rate limit to these.
    pub fn apply(&self, netcode: &mut shared::netcode::ServerConfig) {
        netcode.max_pending = self.max_pending as usize;
        netcode.max_token_entries = self.max_token_entries as usize;
        netcode.rate_limit = shared::netcode::HandshakeRateLimit {
            per_second: self.per_second,
            burst: self.burst,
            table_entries: self.tracked_sources as usize,
            spare_per_second: self.spare_per_second,
        };
    }
}

/// The memory network input can make the server hold, all clients
/// together (`[memory]`, in MiB). Past a bound, input is dropped or its
/// sender disconnected with a reason (see the server README's "Memory under
/// load and attack"). The defaults suit the default 1,024 clients and hold
/// for a few thousand; a server sized for many more raises them with
/// `max_clients`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Out-of-order and reassembly memory of all connections together;
    /// a datagram that pushes it past this disconnects (`Flooding`) its
    /// sender if that holds more than its even share (this divided by
    /// `max_clients`), else the client holding the most. Default 512.
    pub max_receive_mib: u32,
    /// Reliable send memory (queued or unacknowledged) of all connections
    /// together; while over it, a reliable send to a client holding more
    /// than its share (this / `max_clients`) disconnects that client
    /// (`SendQueueFull`). Also bounds the payloads of the tick's messages
    /// carried over while `net-io` is behind: past it they are shed,
    /// unreliable ones first, and a client missing a reliable one is
    /// disconnected (`SendQueueFull`). Default 256.
    pub max_send_mib: u32,
    /// Message bytes waiting for the tick (a stalled tick holds at most
    /// this); past it movement is dropped, then a reliable message's sender
    /// is disconnected (`Flooding`) if it holds more than its even share of
    /// the backlog (this divided by the clients connected) or as much as
    /// anyone, else the client holding the most. Default 64.
    pub max_inbound_mib: u32,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_receive_mib: 512,
            max_send_mib: 256,
            max_inbound_mib: 64,
        }
    }
}

impl MemoryConfig {
    /// Largest value of a bound, MiB (1 TiB): a mistyped huge one is an
    /// error, not a bound that never bites.
    pub const MAX_MIB: u32 = 1 << 20;

    /// Checks every bound is within 1 to [`Self::MAX_MIB`].
    ///
    /// # Errors
    /// The first bound out of range, named as in the file.
    pub fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_receive_mib", self.max_receive_mib),
            ("max_send_mib", self.max_send_mib),
            ("max_inbound_mib", self.max_inbound_mib),
        ] {
            if !(1..=Self::MAX_MIB).contains(&value) {
                return Err(format!("{key} must be 1 to {}, got {value}", Self::MAX_MIB));
            }
        }
        Ok(())
    }

    /// Receive memory of all connections, bytes.
    pub fn max_receive_bytes(&self) -> usize {
        mib(self.max_receive_mib)
    }

    /// Reliable send memory of all connections, bytes.
    pub fn max_send_bytes(&self) -> usize {
        mib(self.max_send_mib)
    }

    /// Message bytes waiting for the tick.
    pub fn max_inbound_bytes(&self) -> usize {
        mib(self.max_inbound_mib)
    }
}

fn mib(value: u32) -> usize {
    usize::try_from(u64::from(value) << 20).unwrap_or(usize::MAX)
}

/// The effective configuration, available to plugins as a resource.
#[derive(Resource, Serialize, Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The UDP address for game traffic, when set; else the default for
    /// the key (see [`ServerConfig::bind`]). Kept as given, so that
    /// `--print-config` does not pin a default that a key file added or
    /// taken away later would change.
    #[serde(rename = "bind", skip_serializing_if = "Option::is_none")]
    pub bind_set: Option<SocketAddr>,
    /// TCP address of the metrics and health endpoint.
    pub metrics_bind: SocketAddr,
    /// Folder for persistent data.
    pub data_dir: PathBuf,
    /// Ticks per second.
    #[serde(rename = "tick_hz", serialize_with = "serialize_tick_rate")]
    pub tick_rate: TickRate,
    /// Most clients connected at once.
    pub max_clients: u32,
    /// Private key file for connect tokens, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The address connect tokens name for this server, when set; else
    /// derived from `bind` (see [`ServerConfig::public_addr`]). Kept as
    /// given, so that `--print-config` does not pin a derived address
    /// that a later `--bind` would no longer match.
    #[serde(rename = "public_addr", skip_serializing_if = "Option::is_none")]
    pub public_addr_set: Option<SocketAddr>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax.
    pub log_filter: String,
    /// Grace period between the start of a shutdown and exit.
    pub shutdown_grace_ms: u32,
    /// Nice steps the `net-io` thread lowers its priority by (see
    /// [`shared::io::priority`]): when it shares a core with the tick, the
    /// tick runs through instead of being preempted by every datagram that
    /// arrives, and `net-io` catches up from the socket buffers while the
    /// tick sleeps. 0 keeps both at one priority.
    pub net_io_nice: u8,
    /// Movement rules and anti-cheat limits (`[movement]`).
    pub movement: MovementConfig,
    /// Area of interest and snapshot budget (`[interest]`).
    pub interest: InterestConfig,
    /// Chat rules (`[chat]`); its nearby scope uses the interest radius.
    pub chat: ChatConfig,
    /// Inventory rules and the world spawner (`[inventory]`).
    pub inventory: CoreConfig,
    /// Memory bounds under load and attack (`[memory]`).
    pub memory: MemoryConfig,
    /// Handshake tables and rate limit (`[handshake]`).
    pub handshake: HandshakeConfig,
}

fn serialize_tick_rate<S: serde::Serializer>(rate: &TickRate, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(rate.hz())
}

/// Where the game listens unless told: every interface with a key file;
/// in dev mode, whose key is public (anyone who reaches the server can
/// mint a token for any account), this machine only.
pub fn default_bind(has_key_file: bool) -> SocketAddr {
    let ip = if has_key_file {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::LOCALHOST
    };
    SocketAddr::from((ip, 7777))
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind_set: None,
            metrics_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 9100)),
            data_dir: PathBuf::from("./data"),
            tick_rate: TickRate::default(),
            max_clients: 1024,
            key_file: None,
            public_addr_set: None,
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            shutdown_grace_ms: 1000,
            net_io_nice: 10,
            movement: MovementConfig::default(),
            interest: InterestConfig::default(),
            chat: ChatConfig::default(),
            inventory: CoreConfig::default(),
            memory: MemoryConfig::default(),
            handshake: HandshakeConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Loads the configuration for `args`: reads the config file (see the
    /// module docs), then applies `args` over it.
    ///
    /// # Errors
    /// See [`ConfigError`].
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let default_path = Path::new(DEFAULT_CONFIG_PATH);
        let (text, origin) = match &args.config {
            Some(path) => (read(path)?, path.display().to_string()),
            None if default_path.is_file() => (read(default_path)?, DEFAULT_CONFIG_PATH.to_owned()),
            None => (EMBEDDED_CONFIG.to_owned(), "(built-in defaults)".to_owned()),
        };
        let file = FileConfig::parse(&text, &origin)?;
        Self::resolve(args, &file, &origin)
    }

    /// Applies `file` over the built-in defaults, then `args` (flags and
    /// environment, already merged by clap) over that, and validates.
    ///
    /// # Errors
    /// See [`ConfigError`].
    pub fn resolve(args: &RunArgs, file: &FileConfig, origin: &str) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        // Flags and environment are range-checked by clap; the file is not.
        let tick_hz = match (args.tick_hz, file.tick_hz) {
            (Some(hz), _) => ("the command line or environment", hz),
            (None, Some(hz)) => (origin, hz),
            (None, None) => ("defaults", defaults.tick_rate.hz()),
        };
        let tick_rate = TickRate::new(tick_hz.1).map_err(|source| ConfigError::TickRate {
            origin: tick_hz.0.to_owned(),
            source,
        })?;
        let max_clients = args
            .max_clients
            .or(file.max_clients)
            .unwrap_or(defaults.max_clients);
        if !(1..=MAX_CLIENTS).contains(&max_clients) {
            return Err(ConfigError::MaxClients {
                origin: origin.to_owned(),
                value: max_clients,
            });
        }
        let shutdown_grace_ms = at_most(
            pick(
                &args.shutdown_grace_ms,
                &file.shutdown_grace_ms,
                defaults.shutdown_grace_ms,
            ),
            MAX_SHUTDOWN_GRACE_MS,
            |value| ConfigError::ShutdownGrace {
                origin: origin.to_owned(),
                value,
            },
        )?;
        let net_io_nice = at_most(
            pick(&args.net_io_nice, &file.net_io_nice, defaults.net_io_nice),
            MAX_NET_IO_NICE,
            |value| ConfigError::NetIoNice {
                origin: origin.to_owned(),
                value,
            },
        )?;
        let movement = file.movement.clone().unwrap_or_default();
        movement.check().map_err(|message| ConfigError::Movement {
            origin: origin.to_owned(),
            message,
        })?;
        let mut inventory = file.inventory.clone().unwrap_or_default();
        inventory.world_center = (movement.world_min + movement.world_max) * 0.5;
        inventory
            .check()
            .map_err(|message| ConfigError::Inventory {
                origin: origin.to_owned(),
                message,
            })?;
        if !spawns_inside_world(&inventory, &movement) {
            return Err(ConfigError::SpawnOutsideWorld {
                origin: origin.to_owned(),
                world_extent: inventory.world_extent,
                world_min: movement.world_min,
                world_max: movement.world_max,
            });
        }
        let interest = file.interest.clone().unwrap_or_default();
        interest.check().map_err(|message| ConfigError::Interest {
            origin: origin.to_owned(),
            message,
        })?;
        let chat = file.chat.clone().unwrap_or_default();
        chat.check().map_err(|message| ConfigError::Chat {
            origin: origin.to_owned(),
            message,
        })?;
        let memory = file.memory.clone().unwrap_or_default();
        memory.check().map_err(|message| ConfigError::Memory {
            origin: origin.to_owned(),
            message,
        })?;
        let handshake = file.handshake.clone().unwrap_or_default();
        handshake
            .check()
            .map_err(|message| ConfigError::Handshake {
                origin: origin.to_owned(),
                message,
            })?;
        let key_file = args.key_file.clone().or_else(|| file.key_file.clone());
        let public_addr_set = match (args.public_addr, file.public_addr) {
            (Some(addr), _) => Some(("the command line or environment", addr)),
            (None, Some(addr)) => Some((origin, addr)),
            (None, None) => None,
        };
        if let Some((from, value)) = public_addr_set
            && !is_reachable(value)
        {
            return Err(ConfigError::PublicAddr {
                origin: from.to_owned(),
                value,
            });
        }
        // An empty filter (`RUST_LOG=` from a template with nothing set)
        // would turn every log line off, startup errors included: it
        // counts as not given.
        let log_filter = match (non_blank(&args.log_filter), non_blank(&file.log_filter)) {
            (Some(filter), _) => ("the command line or RUST_LOG", filter),
            (None, Some(filter)) => (origin, filter),
            (None, None) => ("defaults", defaults.log_filter),
        };
        crate::logging::parse_filter(&log_filter.1).map_err(|source| ConfigError::LogFilter {
            origin: log_filter.0.to_owned(),
            source,
        })?;
        Ok(Self {
            bind_set: args.bind.or(file.bind),
            public_addr_set: public_addr_set.map(|(_, addr)| addr),
            metrics_bind: args
                .metrics_bind
                .or(file.metrics_bind)
                .unwrap_or(defaults.metrics_bind),
            data_dir: pick(&args.data_dir, &file.data_dir, defaults.data_dir),
            tick_rate,
            max_clients,
            key_file,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            log_filter: log_filter.1,
            shutdown_grace_ms,
            net_io_nice,
            movement,
            interest,
            chat,
            inventory,
            memory,
            handshake,
        })
    }

    /// The tick runner's configuration.
    pub fn tick_config(&self) -> TickConfig {
        TickConfig {
            rate: self.tick_rate,
            ..TickConfig::default()
        }
    }

    /// The UDP address for game traffic: `bind` if set, else
    /// [`default_bind`] for whether there is a key file.
    pub fn bind(&self) -> SocketAddr {
        self.bind_set
            .unwrap_or_else(|| default_bind(self.key_file.is_some()))
    }

    /// Every address a connect token may name for this server, the first
    /// [`public_addr`](Self::public_addr) (its port `port` if that is 0:
    /// the one the OS picked): with no `public_addr` and a bind to the
    /// IPv6 wildcard, IPv4 loopback too (a dual-stack socket, Linux's
    /// default, hears it; elsewhere no datagram to it arrives).
    pub fn public_addrs(&self, port: u16) -> Vec<SocketAddr> {
        let mut public = self.public_addr();
        if public.port() == 0 {
            public.set_port(port);
        }
        let mut addrs = vec![public];
        if self.public_addr_set.is_none() && self.bind().ip() == Ipv6Addr::UNSPECIFIED {
            addrs.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), public.port()));
        }
        addrs
    }

    /// The address connect tokens name for this server: `public_addr` if
    /// set, else the bind address (loopback of its family for an
    /// unspecified one: an IPv6 socket receives IPv4 only where the host
    /// maps it, which Windows, the BSDs and `bindv6only` hosts do not).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr_set.unwrap_or_else(|| {
            let bind = self.bind();
            let ip = match bind.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            SocketAddr::new(ip, bind.port())
        })
    }

    /// Why the address connect tokens must name looks like a mistake, if
    /// it does: a server listening on every interface, with no
    /// `public_addr`, names loopback, so it refuses every token minted for
    /// its real address (a backend's, or `play --dev --server` from
    /// another machine); one listening on loopback (dev mode's default)
    /// with a `public_addr` elsewhere hands out tokens for an address
    /// whose datagrams never reach it.
    pub fn public_addr_warning(&self) -> Option<String> {
        let bind = self.bind();
        match self.public_addr_set {
            None if bind.ip().is_unspecified() => Some(format!(
                "no public_addr: connect tokens must name {}, derived from bind {bind}; remote \
                 players' tokens name the address they reach, and are refused (set public_addr)",
                self.public_addrs(bind.port())
                    .iter()
                    .map(SocketAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" or "),
            )),
            Some(public)
                if bind.ip().is_loopback()
                    && (!public.ip().is_loopback() || public.is_ipv4() != bind.is_ipv4()) =>
            {
                Some(format!(
                    "public_addr {public} is not reachable: the game socket is bound to {bind}, \
                 which takes datagrams from this machine, of its own IP family, only (set \
                 bind{})",
                    if self.key_file.is_none() {
                        "; without a key file it defaults to loopback"
                    } else {
                        ""
                    }
                ))
            }
            _ => None,
        }
    }

    /// `[movement] burst_ticks` beyond what keeps a player's displacement
    /// over any second within 1.1 x `max_speed` at this tick rate (the
    /// credit banks up to `burst_ticks` ticks: a second can move
    /// `tick_hz + burst_ticks - 1` ticks' worth), if it is.
    pub fn burst_warning(&self) -> Option<String> {
        let hz = self.tick_rate.hz();
        let keep = hz / 10 + 1;
        let burst = self.movement.burst_ticks;
        (burst > keep).then(|| {
            let factor = f64::from(hz + burst - 1) / f64::from(hz);
            format!(
                "[movement] burst_ticks = {burst} at tick_hz {hz} lets a player cover up to \
                 {factor:.2} x max_speed in a second; keep it at most {keep} for 1.1 x"
            )
        })
    }

    /// Milliseconds of snapshot baselines below which a client's ack
    /// comes too late for a delta on ordinary paths (its round trip plus
    /// a tick or two).
    const MIN_BASELINE_MS: u32 = 300;

    /// `[interest] baseline_history` keeping less than 300 ms of
    /// baselines at this tick rate, if it does: a snapshot's ack older than the history
    /// gets a full snapshot, so a client whose acks take longer gets only
    /// full ones (about twice the bytes, outside the byte budget).
    pub fn baseline_warning(&self) -> Option<String> {
        let hz = self.tick_rate.hz();
        let kept = self.interest.baseline_history;
        let window_ms = |ticks: usize| u32::try_from(ticks).unwrap_or(u32::MAX) * 1000 / hz;
        (window_ms(kept) < Self::MIN_BASELINE_MS).then(|| {
            let most = CLIENT_SNAPSHOT_HISTORY;
            let advice = match window_ms(most) {
                _ if kept >= most => "a lower tick_hz keeps more".to_owned(),
                enough if enough >= Self::MIN_BASELINE_MS => {
                    format!("raise it (at most {most}: {enough} ms)")
                }
                short => format!("raise it to {most} ({short} ms) or lower tick_hz"),
            };
            format!(
                "[interest] baseline_history = {kept} at tick_hz {hz} keeps {} ms of snapshot \
                 baselines: a client whose acks take longer (round trip plus a tick) gets only \
                 full snapshots; {advice}",
                window_ms(kept)
            )
        })
    }

    /// Settings that run but look like mistakes, each said once at start.
    pub fn warnings(&self) -> Vec<String> {
        [
            self.public_addr_warning(),
            self.burst_warning(),
            self.baseline_warning(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The ticks a shutdown runs: the one it starts in, then the grace
    /// period's worth after it (rounded up to whole ticks), so that ticks
    /// go on for the whole grace period (its wall-clock bound ends it no
    /// later).
    pub fn shutdown_grace_ticks(&self) -> u32 {
        let after =
            (u64::from(self.shutdown_grace_ms) * u64::from(self.tick_rate.hz())).div_ceil(1000);
        u32::try_from(after.saturating_add(1)).unwrap_or(u32::MAX)
    }

    /// The configuration as TOML, in the config file's format. `bind`
    /// and `public_addr` not set are left to their defaults where the
    /// file is used; comments on top say what they are now.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if self.bind_set.is_none() {
            let key = if self.key_file.is_some() {
                "with a key file"
            } else {
                "without a key file"
            };
            out += &format!(
                "# bind = \"{}\" (not set: the default {key})\n",
                self.bind()
            );
        }
        if self.public_addr_set.is_none() {
            out += &format!(
                "# public_addr = \"{}\" (not set: derived from bind)\n",
                self.public_addr()
            );
        }
        match toml::to_string(self) {
            Ok(toml) => out + &toml,
            Err(error) => format!("# cannot serialise: {error}\n"),
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pick<T: Clone>(arg: &Option<T>, file: &Option<T>, default: T) -> T {
    arg.clone().or_else(|| file.clone()).unwrap_or(default)
}

/// Whether every item the spawner can place, anywhere within
/// `world_extent` of the world's centre on both axes, lies where a player
/// can stand: inside the movement world, edges included (positions are
/// clamped to them). A spawner that places nothing (`spawner_target` or
/// `max_world_items` 0) passes whatever its extent.
fn spawns_inside_world(inventory: &CoreConfig, movement: &MovementConfig) -> bool {
    let extent = glam::Vec2::splat(inventory.world_extent);
    let spawns = inventory.spawner_target.min(inventory.max_world_items) > 0;
    let center = inventory.world_center;
    !spawns
        || (movement.world_min.cmple(center - extent).all()
            && movement.world_max.cmpge(center + extent).all())
}

/// Whether clients can send datagrams to `addr`: not "any interface", not
/// a multicast or broadcast group, not port 0.
fn is_reachable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// `text` as an address players can send to: a token for any other
/// could never connect (every handshake dropped as `AddressNotInToken`).
fn reachable_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|e| format!("{e}"))?;
    if is_reachable(addr) {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is no address players can send to (0.0.0.0 and :: mean any interface, \
             for bind only; port 0, multicast and broadcast reach no server): give the \
             server's public address"
        ))
    }
}

/// `value` unless it is empty or only whitespace.
fn non_blank(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.trim().is_empty())
}

/// `value`, or the error `too_big` makes of it when it exceeds `max`.
fn at_most<T: PartialOrd + Copy>(
    value: T,
    max: T,
    too_big: impl FnOnce(T) -> ConfigError,
) -> Result<T, ConfigError> {
    if value > max {
        Err(too_big(value))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(argv: &[&str]) -> RunArgs {
        match Cli::parse_argv(argv).unwrap().into_command() {
            Command::Run(args) => args,
            Command::Token(_) => panic!("expected run, got token"),
            Command::Audit(_) => panic!("expected run, got audit"),
        }
    }

    #[test]
    fn an_invalid_environment_value_is_named_by_its_variable() {
        use std::ffi::{OsStr, OsString};
        let env = |name: &OsStr| (name == "GAMESERVER_TICK_HZ").then(|| OsString::from("500"));
        let argv: Vec<OsString> = vec!["server".into()];
        let error = Cli::parse_argv(["server", "--tick-hz", "500"]).unwrap_err();
        let note = env_note(&error, &argv, env).expect("a note");
        assert!(note.contains("GAMESERVER_TICK_HZ"), "{note}");
        assert!(note.contains("\"500\""), "{note}");
        // Given on the command line: the flag is the right name.
        let argv: Vec<OsString> = vec!["server".into(), "--tick-hz".into(), "500".into()];
        assert_eq!(env_note(&error, &argv, env), None);
        let argv: Vec<OsString> = vec!["server".into(), "--tick-hz=500".into()];
        assert_eq!(env_note(&error, &argv, env), None);
    }

    #[test]
    fn audit_takes_a_data_dir() {
        let cli = Cli::parse_argv(["server", "audit", "--data-dir", "/srv/game"]).unwrap();
        match cli.into_command() {
            Command::Audit(args) => assert_eq!(args.data_dir, Some(PathBuf::from("/srv/game"))),
            other => panic!("expected audit, got {other:?}"),
        }
    }

    #[test]
    fn gameplay_tables_override_single_keys_and_reject_unknown_ones() {
        let file = FileConfig::parse(
            "[movement]\nmax_speed = 5.0\n[interest]\nradius = 90.0\n[chat]\nburst = 3\n",
            "test",
        )
        .unwrap();
        let config = ServerConfig::resolve(&RunArgs::default(), &file, "test").unwrap();
        assert_eq!(config.movement.max_speed, 5.0);
        assert_eq!(
            config.movement.max_inputs_per_tick,
            MovementConfig::default().max_inputs_per_tick
        );
        assert_eq!(config.interest.radius, 90.0);
        assert_eq!(config.chat.burst, 3);
        let error = FileConfig::parse("[movement]\nmax_sped = 5.0\n", "test.toml").unwrap_err();
        assert!(error.to_string().contains("max_sped"), "{error}");
    }

    #[test]
    fn token_takes_client_id_servers_and_expiry() {
        let cli = Cli::parse_argv([
            "server",
            "token",
            "--client-id",
            "7",
            "--server",
            "127.0.0.1:7777",
            "--server",
            "[::1]:7777",
            "--expires",
            "60",
        ])
        .unwrap();
        let Command::Token(args) = cli.into_command() else {
            panic!("expected token");
        };
        assert_eq!(args.client_id, 7);
        assert_eq!(args.servers.len(), 2);
        assert_eq!(args.expires, 60);
        assert!(
            Cli::parse_argv(["server", "token", "--client-id", "7"]).is_err(),
            "--server is required"
        );
    }

    #[test]
    fn public_address_defaults_to_loopback_for_an_unspecified_bind() {
        let config =
            ServerConfig::resolve(&RunArgs::default(), &FileConfig::default(), "test").unwrap();
        assert_eq!(config.public_addr(), "127.0.0.1:7777".parse().unwrap());
        let args = run_args(&["server", "--bind", "10.0.0.5:4000"]);
        let config = ServerConfig::resolve(&args, &FileConfig::default(), "test").unwrap();
        assert_eq!(config.public_addr(), "10.0.0.5:4000".parse().unwrap());
        let args = run_args(&["server", "--bind", "[::]:4000"]);
        let config = ServerConfig::resolve(&args, &FileConfig::default(), "test").unwrap();
        assert_eq!(config.public_addr(), "[::1]:4000".parse().unwrap());
    }

    /// Tokens naming either loopback address reach a server on the IPv6
    /// wildcard (dual-stack where the host allows); a port of 0 is the
    /// one the OS picked.
    #[test]
    fn a_server_on_the_ipv6_wildcard_takes_tokens_for_either_loopback() {
        let addrs = |argv: &[&str]| {
            ServerConfig::resolve(&run_args(argv), &FileConfig::default(), "test")
                .unwrap()
                .public_addrs(4321)
        };
        let parsed = |list: &[&str]| {
            list.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<SocketAddr>>()
        };
        assert_eq!(
            addrs(&["server", "--bind", "[::]:0"]),
            parsed(&["[::1]:4321", "127.0.0.1:4321"])
        );
        assert_eq!(
            addrs(&["server", "--bind", "0.0.0.0:7777"]),
            parsed(&["127.0.0.1:7777"])
        );
        assert_eq!(
            addrs(&[
                "server",
                "--bind",
                "[::]:7777",
                "--public-addr",
                "[2001:db8::7]:7777"
            ]),
            parsed(&["[2001:db8::7]:7777"])
        );
    }

    #[test]
    fn a_server_on_every_interface_without_a_public_address_is_warned_about() {
        let production = run_args(&["server", "--key-file", "server.key"]);
        let dev = run_args(&["server", "--bind", "0.0.0.0:7777"]);
        for args in [production, dev] {
            let config = ServerConfig::resolve(&args, &FileConfig::default(), "test").unwrap();
            let warning = config.public_addr_warning().expect("a warning");
            assert!(warning.contains("127.0.0.1:7777"), "{warning}");
        }
        // A public address a loopback socket never hears from.
        for argv in [
            &["server", "--public-addr", "203.0.113.7:7777"][..],
            &[
                "server",
                "--key-file",
                "k",
                "--bind",
                "127.0.0.1:7777",
                "--public-addr",
                "203.0.113.7:7777",
            ],
        ] {
            let config =
                ServerConfig::resolve(&run_args(argv), &FileConfig::default(), "test").unwrap();
            let warning = config.public_addr_warning().expect("a warning");
            assert!(
                warning.contains("203.0.113.7:7777") && warning.contains("127.0.0.1:7777"),
                "{warning}"
            );
        }
        // Loopback of the other family: no datagram to it reaches the
        // socket either.
        let other_family = run_args(&[
            "server",
            "--bind",
            "127.0.0.1:7777",
            "--public-addr",
            "[::1]:7777",
        ]);
        let config = ServerConfig::resolve(&other_family, &FileConfig::default(), "test").unwrap();
        assert!(config.public_addr_warning().is_some());
        for argv in [
            // Dev mode: loopback is what it is for.
            &["server"][..],
            &[
                "server",
                "--key-file",
                "k",
                "--public-addr",
                "203.0.113.7:7777",
            ],
            &["server", "--key-file", "k", "--bind", "10.0.0.5:7777"],
        ] {
            let config =
                ServerConfig::resolve(&run_args(argv), &FileConfig::default(), "test").unwrap();
            assert_eq!(config.public_addr_warning(), None, "{argv:?}");
        }
    }

    #[test]
    fn a_public_address_clients_cannot_reach_stops_the_start() {
        for bad in [
            "0.0.0.0:7777",
            "[::]:7777",
            "239.1.2.3:7777",
            "255.255.255.255:7777",
            "203.0.113.7:0",
        ] {
            let args = run_args(&["server", "--public-addr", bad]);
            let error = ServerConfig::resolve(&args, &FileConfig::default(), "test").unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(bad) && message.contains("the command line or environment"),
                "{message}"
            );
            let file = FileConfig::parse(&format!("public_addr = \"{bad}\"\n"), "game.toml");
            let error = ServerConfig::resolve(&RunArgs::default(), &file.unwrap(), "game.toml")
                .unwrap_err()
                .to_string();
            assert!(error.contains("in game.toml"), "{error}");
        }
        for good in ["203.0.113.7:7777", "[2001:db8::1]:7777", "127.0.0.1:7777"] {
            let args = run_args(&["server", "--public-addr", good]);
            let config = ServerConfig::resolve(&args, &FileConfig::default(), "test").unwrap();
            assert_eq!(config.public_addr(), good.parse().unwrap());
        }
    }

    #[test]
    fn a_log_filter_that_is_not_one_stops_the_start_naming_its_origin() {
        let file = FileConfig::parse("log_filter = \"warning\"\n", "game.toml").unwrap();
        let error = ServerConfig::resolve(&RunArgs::default(), &file, "game.toml")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("log_filter in game.toml"), "{error}");
        let args = RunArgs {
            log_filter: Some("info,server=loud".to_owned()),
            ..RunArgs::default()
        };
        let error = ServerConfig::resolve(&args, &file, "game.toml")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("log_filter in the command line or RUST_LOG"),
            "{error}"
        );
        let args = RunArgs {
            log_filter: Some("info,server::tick=debug".to_owned()),
            ..RunArgs::default()
        };
        let config = ServerConfig::resolve(&args, &file, "game.toml").unwrap();
        assert_eq!(config.log_filter, "info,server::tick=debug");
    }

    #[test]
    fn baselines_too_short_for_a_delta_at_the_tick_rate_are_warned_about() {
        let at = |hz: &str, history: &str| {
            let file = FileConfig::parse(
                &format!("[interest]\nbaseline_history = {history}\n"),
                "test.toml",
            )
            .unwrap();
            ServerConfig::resolve(&run_args(&["server", "--tick-hz", hz]), &file, "test")
                .unwrap()
                .baseline_warning()
        };
        assert_eq!(at("30", "16"), None, "533 ms");
        assert_eq!(at("64", "32"), None, "500 ms");
        let warning = at("64", "16").expect("250 ms at 64 Hz");
        assert!(warning.contains("keeps 250 ms"), "{warning}");
        assert!(warning.contains("at most 32: 500 ms"), "{warning}");
        let warning = at("128", "16").expect("125 ms at 128 Hz");
        assert!(warning.contains("keeps 125 ms"), "{warning}");
        assert!(
            warning.contains("raise it to 32 (250 ms) or lower tick_hz"),
            "{warning}"
        );
        let warning = at("128", "32").expect("250 ms at 128 Hz");
        assert!(warning.contains("a lower tick_hz"), "{warning}");
        assert_eq!(ServerConfig::default().baseline_warning(), None);
    }

    #[test]
    fn a_burst_that_lets_players_outrun_the_speed_limit_is_warned_about() {
        let defaults = ServerConfig::default();
        assert_eq!(defaults.warnings(), Vec::<String>::new());
        let slow = ServerConfig::resolve(
            &run_args(&["server", "--tick-hz", "10"]),
            &FileConfig::default(),
            "test",
        )
        .unwrap();
        let warning = slow.burst_warning().expect("3 ticks of burst at 10 Hz");
        assert!(warning.contains("1.20 x max_speed"), "{warning}");
        assert!(warning.contains("at most 2"), "{warning}");
        assert_eq!(slow.warnings(), vec![warning]);
    }

    #[test]
    fn a_printed_config_does_not_pin_a_derived_public_address() {
        let printed = ServerConfig::resolve(&RunArgs::default(), &FileConfig::default(), "test")
            .unwrap()
            .to_toml();
        let file = FileConfig::parse(&printed, "printed.toml").unwrap();
        let args = run_args(&["server", "--bind", "0.0.0.0:8000"]);
        let config = ServerConfig::resolve(&args, &file, "printed.toml").unwrap();
        assert_eq!(config.public_addr(), "127.0.0.1:8000".parse().unwrap());
        // One that was set stays set.
        let args = run_args(&["server", "--public-addr", "203.0.113.9:7777"]);
        let printed = ServerConfig::resolve(&args, &FileConfig::default(), "test")
            .unwrap()
            .to_toml();
        let file = FileConfig::parse(&printed, "printed.toml").unwrap();
        let config = ServerConfig::resolve(&RunArgs::default(), &file, "printed.toml").unwrap();
        assert_eq!(config.public_addr(), "203.0.113.9:7777".parse().unwrap());
    }

    /// A printed configuration whose `bind` was the default leaves it to
    /// the default where it is used: one printed in dev mode and given a
    /// key file listens on every interface, one printed with a key file
    /// and run without one on this machine only.
    #[test]
    fn a_printed_config_does_not_pin_a_derived_bind() {
        let print = |argv: &[&str]| {
            let printed = ServerConfig::resolve(&run_args(argv), &FileConfig::default(), "test")
                .unwrap()
                .to_toml();
            FileConfig::parse(&printed, "printed.toml").unwrap()
        };
        let dev = print(&["server"]);
        let production = ServerConfig::resolve(
            &run_args(&["server", "--key-file", "k"]),
            &dev,
            "printed.toml",
        )
        .unwrap();
        assert_eq!(production.bind(), default_bind(true));
        let keyed = print(&["server", "--key-file", "k"]);
        let keyed = FileConfig {
            key_file: None,
            ..keyed
        };
        let dev = ServerConfig::resolve(&RunArgs::default(), &keyed, "printed.toml").unwrap();
        assert_eq!(dev.bind(), default_bind(false));
        // One that was set stays set.
        let set = print(&["server", "--bind", "0.0.0.0:8000"]);
        let config = ServerConfig::resolve(&RunArgs::default(), &set, "printed.toml").unwrap();
        assert_eq!(config.bind(), "0.0.0.0:8000".parse().unwrap());
    }

    #[test]
    fn an_empty_log_filter_counts_as_not_given() {
        for blank in ["", "  "] {
            let args = RunArgs {
                log_filter: Some(blank.to_owned()),
                ..RunArgs::default()
            };
            let file = FileConfig::parse("log_filter = \"warn\"\n", "test.toml").unwrap();
            let config = ServerConfig::resolve(&args, &file, "test.toml").unwrap();
            assert_eq!(config.log_filter, "warn", "{blank:?}: the file's");
            let file = FileConfig::parse("log_filter = \"\"\n", "test.toml").unwrap();
            let config = ServerConfig::resolve(&args, &file, "test.toml").unwrap();
            assert_eq!(config.log_filter, "info", "{blank:?}: the default");
        }
    }

    #[test]
    fn inventory_values_out_of_range_stop_the_start() {
        for (value, message) in [
            ("slots = 100", "slots must be 1 to 64, got 100"),
            ("slots = 0", "slots must be 1 to 64, got 0"),
            (
                "spawn_every_ticks = 0",
                "spawn_every_ticks must be at least 1",
            ),
            (
                "max_queued_per_account = 129",
                "max_queued_per_account must be at most 128 (half the request ids \
                 remembered per player), got 129",
            ),
        ] {
            let file = FileConfig::parse(&format!("[inventory]\n{value}\n"), "bad.toml").unwrap();
            let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("[inventory] in bad.toml: {message}")
            );
        }
    }

    #[test]
    fn items_spawned_where_no_player_can_go_stop_the_start() {
        let resolve = |text: &str| {
            let file = FileConfig::parse(text, "test.toml").unwrap();
            ServerConfig::resolve(&RunArgs::default(), &file, "test.toml")
        };
        let error = resolve("[movement]\nworld_min = [-50.0, -50.0]\nworld_max = [50.0, 50.0]\n")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "inventory.world_extent = 100 in test.toml spawns items anywhere within 100 m of \
             the world's centre on both axes, which reaches outside the world players move in \
             (movement.world_min = [-50, -50], movement.world_max = [50, 50]): an item there \
             could never be picked up, and once spawner_target such items lay in the world the \
             spawner would stop for good. The spawn square must lie inside the world, edges \
             included (pickup_radius is not counted as reach beyond it): lower world_extent to \
             at most half the world's narrower side, widen the world, or set spawner_target = 0 \
             to spawn nothing"
        );
        for text in [
            "[inventory]\nworld_extent = 1000000.0\n",
            "[movement]\nworld_min = [-1000.0, -99.0]\nworld_max = [1000.0, 99.0]\n",
            "[movement]\nworld_min = [-99.0, -1000.0]\nworld_max = [99.0, 1000.0]\n",
            "[movement]\nworld_min = [10.0, 10.0]\nworld_max = [100.0, 1000.0]\n",
        ] {
            let error = resolve(text).unwrap_err();
            assert!(
                matches!(error, ConfigError::SpawnOutsideWorld { .. }),
                "{text}: {error}"
            );
        }
        // A square reaching the world's edge, one around the centre of a
        // world off the origin, and a spawner that spawns nothing, are
        // fine; so are the defaults.
        for text in [
            "[inventory]\nworld_extent = 1000.0\n",
            "[movement]\nworld_min = [-100.0, -100.0]\nworld_max = [100.0, 100.0]\n",
            "[movement]\nworld_min = [0.0, 0.0]\nworld_max = [2000.0, 2000.0]\n",
            "[movement]\nworld_min = [10.0, 10.0]\nworld_max = [100.0, 100.0]\n\
             [inventory]\nspawner_target = 0\n",
            "[movement]\nworld_min = [10.0, 10.0]\nworld_max = [100.0, 100.0]\n\
             [inventory]\nmax_world_items = 0\n",
            "",
            EMBEDDED_CONFIG,
        ] {
            resolve(text).unwrap();
        }
        let off_origin =
            resolve("[movement]\nworld_min = [0.0, 0.0]\nworld_max = [2000.0, 2000.0]\n").unwrap();
        assert_eq!(
            off_origin.inventory.world_center,
            glam::Vec2::new(1_000.0, 1_000.0)
        );
    }

    #[test]
    fn memory_bounds_are_read_in_mib_and_checked() {
        let file = FileConfig::parse("[memory]\nmax_send_mib = 1024\n", "test.toml").unwrap();
        let config = ServerConfig::resolve(&RunArgs::default(), &file, "test.toml").unwrap();
        assert_eq!(config.memory.max_send_bytes(), 1 << 30);
        assert_eq!(
            config.memory.max_receive_mib, 512,
            "other keys keep defaults"
        );
        for (key, value) in [
            ("max_receive_mib", 0),
            ("max_send_mib", 0),
            ("max_inbound_mib", MemoryConfig::MAX_MIB + 1),
        ] {
            let file =
                FileConfig::parse(&format!("[memory]\n{key} = {value}\n"), "bad.toml").unwrap();
            let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
            assert!(matches!(error, ConfigError::Memory { .. }), "{key}");
            assert_eq!(
                error.to_string(),
                format!(
                    "[memory] in bad.toml: {key} must be 1 to {}, got {value}",
                    MemoryConfig::MAX_MIB
                )
            );
        }
        let error = FileConfig::parse("[memory]\nmax_send = 1\n", "test.toml").unwrap_err();
        assert!(error.to_string().contains("max_send"), "{error}");
    }

    #[test]
    fn an_interest_value_out_of_range_stops_the_start() {
        for interest in [
            "radius = nan",
            "snapshot_budget_bytes = 1",
            "max_entities = 0",
        ] {
            let file = FileConfig::parse(&format!("[interest]\n{interest}\n"), "bad.toml").unwrap();
            let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
            assert!(matches!(error, ConfigError::Interest { .. }), "{interest}");
            assert!(
                error.to_string().starts_with("[interest] in bad.toml: "),
                "{error}"
            );
        }
    }

    #[test]
    fn embedded_file_matches_the_built_in_defaults() {
        let file = FileConfig::parse(EMBEDDED_CONFIG, "embedded").unwrap();
        let config = ServerConfig::resolve(&RunArgs::default(), &file, "embedded").unwrap();
        assert_eq!(config, ServerConfig::default());
        // And every key is spelled out in it, so the file documents them all
        // (those whose default depends on others, commented out).
        assert!(file.metrics_bind.is_some() && file.data_dir.is_some());
        assert!(file.bind.is_none() && EMBEDDED_CONFIG.contains("\n# bind = "));
        assert!(file.tick_hz.is_some() && file.max_clients.is_some());
        assert!(file.log_format.is_some() && file.log_filter.is_some());
        assert!(file.shutdown_grace_ms.is_some());
        assert!(file.memory.is_some() && file.handshake.is_some());
    }

    #[test]
    fn handshake_settings_are_read_and_checked() {
        let file = FileConfig::parse(
            "[handshake]\nper_second = 500\nmax_pending = 8192\n",
            "test.toml",
        )
        .unwrap();
        let config = ServerConfig::resolve(&RunArgs::default(), &file, "test.toml").unwrap();
        assert_eq!(config.handshake.per_second, 500);
        assert_eq!(config.handshake.max_pending, 8192);
        assert_eq!(config.handshake.burst, HandshakeConfig::default().burst);
        for (key, min, max) in HandshakeConfig::LIMITS {
            for value in [u64::from(min).checked_sub(1), Some(u64::from(max) + 1)]
                .into_iter()
                .flatten()
            {
                let file =
                    FileConfig::parse(&format!("[handshake]\n{key} = {value}\n"), "bad.toml")
                        .unwrap();
                let error =
                    ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
                assert_eq!(
                    error.to_string(),
                    format!("[handshake] in bad.toml: {key} must be {min} to {max}, got {value}"),
                );
            }
        }
        let error = FileConfig::parse("[handshake]\nrate = 1\n", "test.toml").unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    /// A dev-mode server (its key public: anyone who reaches it can mint a
    /// token for any account) listens on this machine only unless told
    /// otherwise; one with a key file on every interface.
    #[test]
    fn dev_mode_listens_on_loopback_unless_bind_says_otherwise() {
        let resolve = |argv: &[&str], file: &str| {
            let file = FileConfig::parse(file, "test.toml").unwrap();
            ServerConfig::resolve(&run_args(argv), &file, "test.toml")
                .unwrap()
                .bind()
        };
        let loopback: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:7777".parse().unwrap();
        assert_eq!(resolve(&["server"], ""), loopback);
        assert_eq!(ServerConfig::default().bind(), loopback);
        assert_eq!(resolve(&["server", "--key-file", "k"], ""), everywhere);
        assert_eq!(resolve(&["server"], "key_file = \"k\"\n"), everywhere);
        assert_eq!(
            resolve(&["server", "--bind", "0.0.0.0:7777"], ""),
            everywhere
        );
        assert_eq!(
            resolve(&["server"], "bind = \"0.0.0.0:7777\"\n"),
            everywhere
        );
        assert_eq!(
            resolve(&["server", "--key-file", "k", "--bind", "127.0.0.1:9"], ""),
            "127.0.0.1:9".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_the_file() {
        let file = FileConfig::parse(
            "tick_hz = 60\nmax_clients = 10\ndata_dir = \"/srv/game\"\n",
            "test.toml",
        )
        .unwrap();
        let from_file = ServerConfig::resolve(&RunArgs::default(), &file, "test.toml").unwrap();
        assert_eq!(from_file.tick_rate.hz(), 60);
        assert_eq!(from_file.max_clients, 10);
        assert_eq!(from_file.data_dir, PathBuf::from("/srv/game"));
        assert_eq!(from_file.bind(), ServerConfig::default().bind());

        let args = run_args(&["server", "--tick-hz", "20", "--bind", "127.0.0.1:4000"]);
        let config = ServerConfig::resolve(&args, &file, "test.toml").unwrap();
        assert_eq!(config.tick_rate.hz(), 20);
        assert_eq!(config.bind(), "127.0.0.1:4000".parse().unwrap());
        assert_eq!(config.max_clients, 10);
    }

    #[test]
    fn run_is_the_default_subcommand_and_takes_the_same_flags() {
        let implicit = run_args(&["server", "--max-clients", "5"]);
        let explicit = run_args(&["server", "run", "--max-clients", "5"]);
        assert_eq!(implicit, explicit);
        assert_eq!(explicit.max_clients, Some(5));
    }

    #[test]
    fn out_of_range_values_are_clear_errors() {
        for bad in ["0", "129"] {
            let error = Cli::parse_argv(["server", "--tick-hz", bad]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(error.to_string().contains("1..=128"), "{error}");
        }
        let file = FileConfig::parse("tick_hz = 0", "bad.toml").unwrap();
        let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
        assert!(matches!(error, ConfigError::TickRate { .. }));
        assert_eq!(
            error.to_string(),
            "tick_hz in bad.toml: tick rate 0 Hz is out of range: it must be between 1 and 128 Hz"
        );
        for bad in ["0", "4000000000"] {
            let file = FileConfig::parse(&format!("max_clients = {bad}"), "bad.toml").unwrap();
            let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
            assert!(matches!(error, ConfigError::MaxClients { .. }), "{bad}");
            assert!(error.to_string().contains("1..=65536"), "{error}");
        }
        let error = Cli::parse_argv(["server", "--max-clients", "65537"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        for (inventory, message) in [
            (
                "world_extent = nan",
                "world_extent must be a positive number of metres, got NaN",
            ),
            ("world_extent = inf", "world_extent must be a positive"),
            ("world_extent = 0.0", "world_extent must be a positive"),
            ("pickup_radius = nan", "pickup_radius must be zero or more"),
            ("pickup_radius = -1.0", "pickup_radius must be zero or more"),
            ("max_queued = 0", "max_queued must be at least 1"),
            (
                "max_queued_per_account = 0",
                "max_queued_per_account must be at least 1",
            ),
        ] {
            let file =
                FileConfig::parse(&format!("[inventory]\n{inventory}\n"), "bad.toml").unwrap();
            let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("[inventory] in bad.toml: "), "{text}");
            assert!(text.contains(message), "{inventory}: {text}");
        }
        let file = FileConfig::parse("shutdown_grace_ms = 9000", "bad.toml").unwrap();
        assert!(matches!(
            ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml"),
            Err(ConfigError::ShutdownGrace { value: 9000, .. })
        ));
        for (movement, message) in [
            (
                "max_speed = nan",
                "max_speed must be a positive number of m/s, got NaN",
            ),
            ("max_speed = 0.0", "max_speed must be a positive number"),
            (
                "world_min = [0.0, 0.0]\nworld_max = [10.0, -5.0]",
                "world_min [0, 0] must be below",
            ),
            ("world_max = [inf, 10.0]", "must be below world_max"),
            (
                "max_inputs_per_tick = 0",
                "max_inputs_per_tick must be at least burst_ticks + input_buffer (7)",
            ),
            (
                "max_inputs_per_tick = 6",
                "max_inputs_per_tick must be at least burst_ticks + input_buffer (7), got 6",
            ),
            ("burst_ticks = 0", "burst_ticks must be 1 to 64, got 0"),
            ("burst_ticks = 4294967295", "burst_ticks must be 1 to 64"),
            ("input_buffer = 65", "input_buffer must be 0 to 64, got 65"),
            ("spawn_spacing = -1.0", "spawn_spacing must be zero or more"),
        ] {
            let file = FileConfig::parse(&format!("[movement]\n{movement}\n"), "bad.toml").unwrap();
            let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
            assert!(matches!(error, ConfigError::Movement { .. }), "{movement}");
            let text = error.to_string();
            assert!(text.starts_with("[movement] in bad.toml: "), "{text}");
            assert!(text.contains(message), "{movement}: {text}");
        }
        let file = FileConfig::parse("net_io_nice = 20", "bad.toml").unwrap();
        let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
        assert_eq!(
            error.to_string(),
            "net_io_nice = 20 in bad.toml is out of range: 0 to 19"
        );
        assert!(FileConfig::parse("net_io_nice = -1", "bad.toml").is_err());
    }

    #[test]
    fn chat_values_that_cannot_run_a_chat_are_errors() {
        for (chat, message) in [
            ("burst = 0", "burst must be 1 to 1000000, got 0"),
            ("rate_per_sec = inf", "rate_per_sec must be above 0"),
            ("rate_per_sec = nan", "rate_per_sec must be above 0"),
            ("rate_per_sec = -1.0", "rate_per_sec must be above 0"),
            ("rate_per_sec = 0.0", "rate_per_sec must be above 0"),
            ("max_chars = 0", "max_chars must be 1 to 4096"),
            (
                "mute_after_offences = 0",
                "mute_after_offences must be at least 1",
            ),
            (
                "max_fanout_bytes_per_tick = 1000",
                "max_fanout_bytes_per_tick must be at least 65536",
            ),
            (
                "recipient_burst_bytes = 1000",
                "recipient_burst_bytes must be 65536 to 524288",
            ),
            (
                "recipient_burst_bytes = 524289",
                "recipient_burst_bytes must be 65536 to 524288",
            ),
            (
                "recipient_bytes_per_sec = 0",
                "recipient_bytes_per_sec must be 1024 to 1073741824",
            ),
        ] {
            let file = FileConfig::parse(&format!("[chat]\n{chat}\n"), "bad.toml").unwrap();
            let error = ServerConfig::resolve(&RunArgs::default(), &file, "bad.toml").unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("[chat] in bad.toml: "), "{text}");
            assert!(text.contains(message), "{chat}: {text}");
        }
        let file = FileConfig::parse("[chat]\nburst = 3\nrate_per_sec = 0.5\n", "ok.toml").unwrap();
        assert!(ServerConfig::resolve(&RunArgs::default(), &file, "ok.toml").is_ok());
    }

    #[test]
    fn the_net_io_thread_yields_ten_steps_unless_told_otherwise() {
        let defaults = ServerConfig::resolve(&RunArgs::default(), &FileConfig::default(), "none");
        assert_eq!(defaults.unwrap().net_io_nice, 10);
        let file = FileConfig::parse("net_io_nice = 0", "test.toml").unwrap();
        let config = ServerConfig::resolve(&RunArgs::default(), &file, "test.toml").unwrap();
        assert_eq!(config.net_io_nice, 0);
        let args = run_args(&["server", "--net-io-nice", "12"]);
        let config = ServerConfig::resolve(&args, &file, "test.toml").unwrap();
        assert_eq!(config.net_io_nice, 12);
        assert!(Cli::parse_argv(["server", "--net-io-nice", "20"]).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_in_the_file_are_errors() {
        let error = FileConfig::parse("tick_rate = 30", "typo.toml").unwrap_err();
        assert!(error.to_string().contains("tick_rate"), "{error}");
        let error = FileConfig::parse("bind = \"nowhere\"", "bad.toml").unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }));
        let error = FileConfig::parse("log_format = \"xml\"", "bad.toml").unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }));
    }

    #[test]
    fn missing_explicit_config_file_is_an_error() {
        let args = RunArgs {
            config: Some(PathBuf::from("/nonexistent/server.toml")),
            ..RunArgs::default()
        };
        assert!(matches!(
            ServerConfig::load(&args),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn grace_period_is_rounded_up_to_whole_ticks_after_the_first() {
        // The tick the shutdown starts in, then a second of ticks.
        let mut config = ServerConfig::default();
        assert_eq!(config.shutdown_grace_ticks(), 31);
        config.shutdown_grace_ms = 0;
        assert_eq!(config.shutdown_grace_ticks(), 1);
        config.shutdown_grace_ms = 40;
        assert_eq!(config.shutdown_grace_ticks(), 3);
        // At 1 Hz, a second of grace is one tick after the first (it was
        // none: the app exited in the tick the shutdown started in).
        config.shutdown_grace_ms = 1000;
        config.tick_rate = crate::tick::TickRate::new(1).unwrap();
        assert_eq!(config.shutdown_grace_ticks(), 2);
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let config = ServerConfig {
            key_file: Some(PathBuf::from("keys/server.key")),
            ..ServerConfig::default()
        };
        let file = FileConfig::parse(&config.to_toml(), "printed").unwrap();
        assert_eq!(
            ServerConfig::resolve(&RunArgs::default(), &file, "printed").unwrap(),
            config
        );
    }

    #[test]
    fn help_documents_every_flag_default_and_variable() {
        let help = Cli::parse_argv(["server", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("server token --help"), "{help}");
        for needle in [
            "--bind",
            "127.0.0.1:7777 in dev mode",
            "GAMESERVER_BIND",
            "--metrics-bind",
            "127.0.0.1:9100",
            "GAMESERVER_METRICS_BIND",
            "--data-dir",
            "./data",
            "GAMESERVER_DATA_DIR",
            "--tick-hz",
            "[default: 30]",
            "GAMESERVER_TICK_HZ",
            "--max-clients",
            "1024",
            "GAMESERVER_MAX_CLIENTS",
            "--key-file",
            "GAMESERVER_KEY_FILE",
            "--config",
            "GAMESERVER_CONFIG",
            "--log-format",
            "GAMESERVER_LOG_FORMAT",
            "--log-filter",
            "RUST_LOG",
            "--shutdown-grace-ms",
            "GAMESERVER_SHUTDOWN_GRACE_MS",
            "--net-io-nice",
            "GAMESERVER_NET_IO_NICE",
            "--print-config",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
        }
    }
}
