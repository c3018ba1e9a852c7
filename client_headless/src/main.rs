//! The headless client: `play` is one interactive player in the terminal;
//! `load` is a bot swarm that load-tests a server and reports what it saw;
//! `chaos` sends adversarial traffic at a server you own.
//!
//! Exit codes: 0 success, 1 error (bad flags, cannot run, a player
//! disconnected by the server, a refused chaos target), 2 a load-test SLO
//! failed.

mod bot;
mod chart;
mod inventory;
mod load;
mod play;
mod prom;
mod report;
mod scenario;
mod swarm;
mod token;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use client_headless::chaos;
use shared::sim::LinkConfig;

use crate::report::Slos;
use crate::scenario::Scenario;
use crate::swarm::SourceIps;
use crate::token::TokenMinter;

#[derive(Parser)]
#[command(
    version,
    about = "Headless game client: play by hand, or load-test a server with a bot swarm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One interactive player in the terminal.
    Play(PlayArgs),
    /// Load-test a server with many bots and report.
    Load(Box<LoadArgs>),
    /// Send adversarial traffic (as the adversarial tests do) at a server you own.
    Chaos(ChaosArgs),
}

#[derive(Args)]
struct ChaosArgs {
    /// The server's UDP address (loopback unless --i-own-this-server).
    #[arg(long, value_name = "ADDR")]
    server: SocketAddr,
    /// What to send.
    #[arg(long, value_enum)]
    attack: chaos::Attack,
    /// Datagrams per second (slot-hold: connection attempts per second).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Seconds to send for (at most 3600).
    #[arg(long, value_name = "SECS")]
    duration: f64,
    /// Allow a non-loopback target: you state that you own this server.
    #[arg(long)]
    i_own_this_server: bool,
    /// Seed of the random choices.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Account id of the attack's first token; consecutive ids follow
    /// [default: from the clock].
    #[arg(long, value_name = "ID")]
    first_client_id: Option<u64>,
}

fn chaos_plan(args: &ChaosArgs) -> Result<chaos::ChaosPlan, String> {
    chaos::check_target(args.server, args.i_own_this_server, "attack")?;
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 3_600.0) {
        return Err("--duration must be above 0 and at most 3600 seconds".into());
    }
    let first_account = args
        .first_client_id
        .unwrap_or_else(|| (shared::io::unix_secs() % 1_000_000) * 100_000 + 50_001);
    Ok(chaos::ChaosPlan {
        server: args.server,
        attack: args.attack,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        seed: args.seed,
        first_account: consecutive_accounts(first_account, chaos::MAX_ACCOUNTS)?,
    })
}

/// `first`, when `count` consecutive account ids starting there fit in
/// 64 bits (the accounts after it are `first + 1`, `first + 2`, ...).
fn consecutive_accounts(first: u64, count: u64) -> Result<u64, String> {
    match first.checked_add(count) {
        Some(_) => Ok(first),
        None => Err(format!(
            "--first-client-id {first} leaves no room for {count} consecutive ids: \
             at most {}",
            u64::MAX - count
        )),
    }
}

#[derive(Args)]
struct PlayArgs {
    /// The server's UDP address.
    #[arg(long, value_name = "ADDR")]
    server: SocketAddr,
    /// A base64 connect token, as printed by `server token`. A token is a
    /// credential (its session keys in it) until it expires, and a command
    /// line is seen by every user of the host (`ps`) and kept in shell
    /// history: on a shared host use --token-file.
    #[arg(
        long,
        value_name = "TOKEN",
        conflicts_with_all = ["dev", "token_file"],
        required_unless_present_any = ["dev", "token_file"]
    )]
    token: Option<String>,
    /// Read the connect token from FILE (`server token ... > FILE`).
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    token_file: Option<PathBuf>,
    /// Mint a token with the public dev key (servers in dev mode only).
    #[arg(long)]
    dev: bool,
    /// Account id for --dev [default: random].
    #[arg(long, value_name = "ID", requires = "dev")]
    client_id: Option<u64>,
}

#[derive(Args)]
struct LoadArgs {
    /// The server's UDP address.
    #[arg(long, value_name = "ADDR")]
    server: SocketAddr,
    /// Allow a non-loopback target: you state that you own this server.
    #[arg(long)]
    i_own_this_server: bool,
    /// Bots to run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    bots: u64,
    /// Seconds from the first bot's start until the bots stop (includes the ramp).
    #[arg(long, value_name = "SECS")]
    duration: f64,
    /// Start the bots evenly over this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    ramp: f64,
    /// Scenario file [default: the built-in copy of assets/scenarios/default.toml].
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write an SVG chart here.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Link conditioner: probability a datagram is lost, each direction.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    loss: f64,
    /// Link conditioner: probability a datagram is duplicated.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    duplicate: f64,
    /// Link conditioner: probability a datagram is held back (reordered) by
    /// twice the latency plus jitter (at least 20 ms).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    reorder: f64,
    /// Link conditioner: one-way latency added in each direction.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency_ms: u64,
    /// Link conditioner: uniform jitter (±) around the latency, at most the
    /// latency. Datagrams delayed by different amounts may arrive out of
    /// order, as on a real path.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    jitter_ms: u64,
    /// The server's Prometheus metrics page.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:9100/metrics"
    )]
    metrics_url: String,
    /// Mint tokens with this private key file (a production server you own)
    /// [default: the public dev key].
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// SLO: fail (exit 2) if the RTT p99 exceeds this (after the ramp,
    /// when there is one: the connect storm is not the steady state);
    /// needs a run of at least 2 s past the ramp.
    #[arg(long, value_name = "MS")]
    max_rtt_p99_ms: Option<f64>,
    /// SLO: fail (exit 2) if fewer than this fraction (0 to 1) of the bots
    /// connected and were not dropped by the server.
    #[arg(long, value_name = "RATIO")]
    min_connected_ratio: Option<f64>,
    /// SLO: fail (exit 2) on any duplicated, reordered or lost chat line, an
    /// own line answered with another line's text, an inventory request
    /// without exactly one reply, two inventories with one version, an
    /// inventory older than one an earlier session of the bot was sent, or
    /// nothing verified that the scenario should have exchanged (no chat
    /// line came back to its speaker, no inventory request was sent; a run
    /// where no bot connected fails with exit 1, SLOs or not).
    #[arg(long)]
    require_exactly_once: bool,
    /// Worker threads multiplexing the bots' sockets, 1 to 64 [default:
    /// min(cores, 4)].
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=load::MAX_THREADS)
    )]
    threads: Option<usize>,
    /// Distinct source addresses (127.1.x.y) for a loopback server, so its
    /// per-IP handshake rate limit is not the bottleneck; 1 binds 0.0.0.0
    /// [default: min(bots, 1024) for loopback servers on Linux, else 1].
    #[arg(long, value_name = "N")]
    source_ips: Option<u32>,
    /// Account id of the first bot; bots use consecutive ids [default: from the clock].
    #[arg(long, value_name = "ID")]
    first_client_id: Option<u64>,
    /// Longest wait at the end for chat lines and inventory requests still
    /// in flight.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    drain_timeout: f64,
    /// Seed of the conditioners and behaviours.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
}

fn secs(name: &str, value: f64) -> Result<Duration, String> {
    if value.is_finite() && (0.0..=86_400.0 * 7.0).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("--{name} must be between 0 and 604800 seconds"))
    }
}

fn probability(name: &str, value: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("--{name} must be between 0 and 1"))
    }
}

/// The least time between the ramp's end and the run's: a handshake takes a
/// few round trips and the server's tick, well under a second on the
/// networks a load test runs on.
const RAMP_END_MARGIN: Duration = Duration::from_secs(1);

/// The sockets `bots` bots open at once: one each, or, with shared
/// sockets, one per group of bots sharing the source addresses in each
/// worker the group's bots are dealt to (every `threads`-th bot goes to
/// the same worker, so a group spans up to `threads` of them).
fn sockets_needed(bots: u64, sources: SourceIps, threads: usize) -> u64 {
    match sources {
        SourceIps::Any => bots,
        SourceIps::Loopback { count } => {
            let groups = bots.div_ceil(u64::from(count.max(1)));
            let workers_per_group = u64::from(count).min(threads as u64).max(1);
            groups.saturating_mul(workers_per_group).min(bots)
        }
    }
}

/// Files a run opens besides its bots' sockets and its workers' polls:
/// stdio, the metrics connection, the report, the libraries'.
#[cfg(target_os = "linux")]
const SPARE_FILES: u64 = 64;

/// The least run after the ramp that `--max-rtt-p99-ms` can judge: a bot
/// samples its RTT a second after it connects, and connecting takes a
/// moment (a run shorter than this has no sample, and fails the SLO).
const RTT_SLO_LEAST_RUN: Duration = Duration::from_secs(2);

/// Longest one-way delay (`--latency-ms` plus `--jitter-ms`) the link
/// conditioner takes: a round trip of twice it is half the bots' connection
/// timeout ([`token::TIMEOUT_SECONDS`]). Past that every handshake timed
/// out, and the run blamed the server ("no bot connected").
const MAX_ONE_WAY_DELAY: Duration =
    Duration::from_millis(token::TIMEOUT_SECONDS as u64 * 1_000 / 4);

/// Whether `path` can be written, leaving what is there as it was: a new
/// file is created and removed again (only one this check created); a
/// file or link already there is opened for writing, not truncated (a
/// link to a file not made yet gets an empty one, which the report fills).
fn check_writable(path: &std::path::Path) -> std::io::Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if std::fs::symlink_metadata(path).is_ok() {
        open.create(true).truncate(false).open(path)?;
        return Ok(());
    }
    match open.create_new(true).open(path) {
        Ok(_) => std::fs::remove_file(path),
        // Made meanwhile by someone else: theirs, left alone.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

fn load_plan(args: LoadArgs) -> Result<load::LoadPlan, String> {
    chaos::check_target(args.server, args.i_own_this_server, "load-test")?;
    let duration = secs("duration", args.duration)?;
    let ramp = secs("ramp", args.ramp)?;
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if ramp > duration {
        return Err("--ramp must not be longer than --duration".into());
    }
    if !ramp.is_zero() && duration - ramp < RAMP_END_MARGIN {
        return Err(format!(
            "--ramp must end at least {} s before --duration: the bots started last \
             need time to connect, and a bot still connecting at the end counts as \
             not connected",
            RAMP_END_MARGIN.as_secs()
        ));
    }
    let scenario = match &args.scenario {
        Some(path) => Scenario::load(path),
        None => Scenario::parse(scenario::DEFAULT_TOML, "built-in default.toml"),
    }
    .map_err(|e| e.to_string())?;
    let minter = match &args.key_file {
        Some(path) => TokenMinter::from_key_file(args.server, path)?,
        None => TokenMinter::dev(args.server),
    };
    let (expects_chat, expects_inventory) = (scenario.chat.is_some(), scenario.inventory.is_some());
    if args.key_file.is_some() && minter.is_dev() {
        eprintln!("warning: --key-file holds the public dev key");
    }
    let loss = probability("loss", args.loss)?;
    let duplicate = probability("duplicate", args.duplicate)?;
    let reorder = probability("reorder", args.reorder)?;
    let latency = Duration::from_millis(args.latency_ms);
    let jitter = Duration::from_millis(args.jitter_ms);
    if jitter > latency {
        // Delays below zero would be cut to zero: a third of the datagrams
        // at 10 ± 30 ms, the mean above the latency asked for.
        return Err(format!(
            "--jitter-ms {} is more than --latency-ms {}: the delay (latency ± jitter) \
             cannot go below zero",
            args.jitter_ms, args.latency_ms
        ));
    }
    if latency + jitter > MAX_ONE_WAY_DELAY {
        return Err(format!(
            "--latency-ms {} plus --jitter-ms {} is more than {} ms one way: round trips of \
             twice that leave the bots' {} s connection timeout no room (handshakes and \
             keep-alives would time out)",
            args.latency_ms,
            args.jitter_ms,
            MAX_ONE_WAY_DELAY.as_millis(),
            token::TIMEOUT_SECONDS
        ));
    }
    prom::MetricsTarget::new(&args.metrics_url).map_err(|e| format!("--metrics-url {e}"))?;
    let conditioned =
        loss > 0.0 || duplicate > 0.0 || reorder > 0.0 || !latency.is_zero() || !jitter.is_zero();
    let link = conditioned.then(|| {
        let hold = (latency * 2 + jitter).max(Duration::from_millis(20));
        LinkConfig::lossy(loss, latency, jitter)
            .with_duplicate(duplicate)
            .with_reorder(reorder, hold)
    });
    let loopback = args.server.ip().is_loopback() && args.server.is_ipv4();
    let sources = match args.source_ips {
        Some(0 | 1) => SourceIps::Any,
        Some(count) if loopback => SourceIps::Loopback { count },
        Some(_) => return Err("--source-ips above 1 needs a loopback IPv4 server".into()),
        // Only Linux answers on all of 127.0.0.0/8 out of the box: elsewhere
        // (macOS, the BSDs) 127.1.x.y cannot be bound unless configured.
        None if loopback && cfg!(target_os = "linux") => SourceIps::Loopback {
            count: u32::try_from(args.bots.min(1024)).unwrap_or(1024),
        },
        None => SourceIps::Any,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));
    #[cfg(target_os = "linux")]
    {
        let needed = sockets_needed(args.bots, sources, threads)
            .saturating_add(2 * threads as u64)
            .saturating_add(SPARE_FILES);
        client_headless::open_files::make_room(needed).map_err(|limit| {
            format!(
                "{} bots need about {needed} open files, and this process may open {limit}: \
                 raise the limit (ulimit -n {needed}) or run fewer bots",
                args.bots
            )
        })?;
    }
    let first_account = consecutive_accounts(
        args.first_client_id
            .unwrap_or_else(|| (shared::io::unix_secs() % 1_000_000) * 100_000 + 1),
        args.bots,
    )?;
    let max_rtt_p99_ms = args
        .max_rtt_p99_ms
        .map(|ms| {
            if ms.is_finite() && ms > 0.0 {
                Ok(ms)
            } else {
                Err(format!(
                    "--max-rtt-p99-ms must be a positive number, not {ms}"
                ))
            }
        })
        .transpose()?;
    if max_rtt_p99_ms.is_some() && duration - ramp < RTT_SLO_LEAST_RUN {
        return Err(format!(
            "--max-rtt-p99-ms needs --duration at least {} s past --ramp: a bot's first \
             RTT sample is taken a second after it connects",
            RTT_SLO_LEAST_RUN.as_secs()
        ));
    }
    // A path that cannot be written fails now, not after the run.
    for (flag, path) in [("--report", &args.report), ("--chart", &args.chart)] {
        if let Some(path) = path {
            check_writable(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        }
    }
    Ok(load::LoadPlan {
        server: args.server,
        bots: args.bots,
        duration,
        ramp,
        scenario,
        minter,
        link,
        metrics_url: args.metrics_url,
        threads,
        sources,
        first_account,
        drain_timeout: secs("drain-timeout", args.drain_timeout)?,
        report: args.report,
        chart: args.chart,
        slos: Slos {
            max_rtt_p99_ms,
            min_connected_ratio: args
                .min_connected_ratio
                .map(|ratio| probability("min-connected-ratio", ratio))
                .transpose()?,
            require_exactly_once: args.require_exactly_once,
            expects_chat,
            expects_inventory,
        },
        seed: args.seed,
    })
}

fn play(args: PlayArgs) -> Result<i32, String> {
    let token = match (&args.token, &args.token_file) {
        (Some(text), _) => token::parse_token(text)?,
        (None, Some(path)) => token::read_token_file(path)?,
        (None, None) => {
            let id = args.client_id.unwrap_or_else(|| {
                let mut bytes = [0u8; 4];
                rand_id(&mut bytes);
                u64::from(u32::from_le_bytes(bytes)) + 1
            });
            TokenMinter::dev(args.server).mint(id)?
        }
    };
    if !token.server_addresses.contains(&args.server) {
        eprintln!(
            "warning: the token names {:?}, not {}; the client connects to the token's addresses",
            token.server_addresses, args.server
        );
    }
    play::run(args.server, &token)
}

fn rand_id(bytes: &mut [u8; 4]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    *bytes = (nanos ^ std::process::id().rotate_left(16)).to_le_bytes();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_exit(&error),
    };
    let result = match cli.command {
        Command::Play(args) => play(args),
        Command::Load(args) => load_plan(*args)
            .and_then(load::run)
            .map(|ok| if ok { 0 } else { 2 }),
        Command::Chaos(args) => chaos_plan(&args).and_then(|plan| chaos::run(&plan)),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Prints what clap says and gives its exit code: 0 for `--help` and
/// `--version`, 1 for a bad command line (clap's own 2 is the code of a
/// failed SLO here, which a CI job must be able to tell from a typo).
fn usage_exit(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    ExitCode::from(usage_code(error))
}

fn usage_code(error: &clap::Error) -> u8 {
    if error.use_stderr() { 1 } else { 0 }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// The plan of `load --server 127.0.0.1:7777 EXTRA...`.
    fn plan_of(extra: &[&str]) -> Result<load::LoadPlan, String> {
        let mut argv = vec!["client_headless", "load", "--server", "127.0.0.1:7777"];
        argv.extend_from_slice(extra);
        let Ok(Cli {
            command: Command::Load(args),
        }) = Cli::try_parse_from(argv)
        else {
            panic!("parses: {extra:?}");
        };
        load_plan(*args)
    }

    fn load(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec![
            "client_headless",
            "load",
            "--server",
            "127.0.0.1:7777",
            "--bots",
            "1",
            "--duration",
            "1",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    }

    fn threads(cli: &Cli) -> Option<usize> {
        match &cli.command {
            Command::Load(args) => args.threads,
            _ => None,
        }
    }

    #[test]
    fn a_link_or_metrics_url_the_run_cannot_honour_is_refused() {
        let plan_of =
            |extra: &[&str]| plan_of(&[&["--bots", "1", "--duration", "5"], extra].concat());
        assert!(plan_of(&["--latency-ms", "30", "--jitter-ms", "30"]).is_ok());
        assert!(plan_of(&["--latency-ms", "2000", "--jitter-ms", "500"]).is_ok());
        let refused = [
            (
                &["--latency-ms", "10", "--jitter-ms", "30"][..],
                "--jitter-ms 30",
            ),
            (&["--jitter-ms", "5"], "--jitter-ms 5"),
            (&["--latency-ms", "2501"], "--latency-ms 2501"),
            (
                &["--latency-ms", "2000", "--jitter-ms", "600"],
                "--latency-ms 2000 plus --jitter-ms 600",
            ),
            (&["--latency-ms", "4000000"], "--latency-ms 4000000"),
            (
                &["--metrics-url", "https://127.0.0.1/metrics"],
                "--metrics-url",
            ),
            (&["--metrics-url", "127.0.0.1:9100"], "--metrics-url"),
        ];
        for (extra, named) in refused {
            let error = plan_of(extra).err().unwrap_or_else(|| panic!("{extra:?}"));
            assert!(error.contains(named), "{extra:?}: {error}");
        }
    }

    #[test]
    fn play_takes_its_token_from_one_place() {
        let play = |extra: &[&str]| {
            let mut argv = vec!["client_headless", "play", "--server", "127.0.0.1:7777"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        let Ok(Cli {
            command: Command::Play(args),
        }) = play(&["--token-file", "/run/user/1000/token"])
        else {
            panic!("--token-file alone parses");
        };
        assert_eq!(
            args.token_file.as_deref(),
            Some(std::path::Path::new("/run/user/1000/token"))
        );
        assert!(play(&["--dev"]).is_ok());
        for refused in [
            &[][..],
            &["--token", "x", "--token-file", "f"],
            &["--dev", "--token-file", "f"],
        ] {
            assert!(play(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn a_bad_command_line_exits_1_not_the_slo_code() {
        let error = load(&["--bots", "0"]).err().expect("--bots 0 is refused");
        assert_eq!(usage_code(&error), 1);
        let help = Cli::try_parse_from(["client_headless", "--help"])
            .err()
            .expect("help");
        assert_eq!(usage_code(&help), 0);
        for ratio in ["95", "1.01"] {
            let Ok(Cli {
                command: Command::Load(args),
            }) = load(&["--min-connected-ratio", ratio])
            else {
                panic!("parses");
            };
            let error = load_plan(*args).err().expect(ratio);
            assert!(error.contains("--min-connected-ratio"), "{error}");
        }
        // A bound no run can meet is a mistake in the command, not a failed
        // SLO.
        for ms in ["nan", "-1", "0", "inf"] {
            let Ok(Cli {
                command: Command::Load(args),
            }) = load(&[&format!("--max-rtt-p99-ms={ms}")])
            else {
                panic!("parses");
            };
            let error = load_plan(*args).err().expect(ms);
            assert!(error.contains("--max-rtt-p99-ms"), "{error}");
        }
    }

    /// A ramp that ends with the run leaves the bots started last no time
    /// to connect: they would fail --min-connected-ratio for no fault of
    /// the server's.
    #[test]
    fn a_ramp_must_end_a_second_before_the_run() {
        let plan = |duration: &str, ramp: &str| {
            plan_of(&["--bots", "10", "--duration", duration, "--ramp", ramp])
        };
        for (duration, ramp) in [("10", "10"), ("10", "9.5")] {
            let error = plan(duration, ramp).err().expect(ramp);
            assert!(
                error.contains("--ramp must end at least 1 s before --duration"),
                "{error}"
            );
        }
        for (duration, ramp) in [("10", "9"), ("1", "0"), ("0.5", "0")] {
            assert!(plan(duration, ramp).is_ok(), "{duration} {ramp}");
        }
    }

    /// An RTT bound on a run too short to sample the RTT, or a report
    /// path that cannot be written, is refused before the run: the first
    /// failed the SLO for no fault of the server's, the second failed
    /// after the whole run.
    #[test]
    fn a_plan_the_run_could_not_honour_is_refused_up_front() {
        let plan = |extra: &[&str]| plan_of(&[&["--bots", "1"], extra].concat());
        let error = (plan(&["--max-rtt-p99-ms", "100", "--duration", "1"]))
            .err()
            .expect("1 s run");
        assert!(
            error.contains("--max-rtt-p99-ms") && error.contains("--duration"),
            "{error}"
        );
        assert!(plan(&["--max-rtt-p99-ms", "100", "--duration", "2"]).is_ok());
        let error = (plan(&["--max-rtt-p99-ms", "100", "--duration", "5", "--ramp", "4"]))
            .err()
            .expect("1 s past the ramp");
        assert!(error.contains("--max-rtt-p99-ms"), "{error}");
        let missing = "/nonexistent-dir-for-a-test/run.json";
        for flag in ["--report", "--chart"] {
            let error = plan(&["--duration", "1", flag, missing]).err().expect(flag);
            assert!(error.contains(flag) && error.contains(missing), "{error}");
        }
        let dir = std::env::temp_dir().join(format!("load-plan-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fresh = dir.join("run.json");
        assert!(plan(&["--duration", "1", "--report", fresh.to_str().unwrap()]).is_ok());
        assert!(!fresh.exists(), "the check left a file behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_sockets_of_a_run_are_counted_per_worker_and_group() {
        assert_eq!(sockets_needed(3_000, SourceIps::Any, 4), 3_000);
        // Two addresses: a group of two bots spans two workers, a socket
        // in each (the count was 1,504 for 3,000).
        let two = SourceIps::Loopback { count: 2 };
        assert_eq!(sockets_needed(3_000, two, 4), 3_000);
        let many = SourceIps::Loopback { count: 1_024 };
        assert_eq!(sockets_needed(3_000, many, 4), 12);
        assert_eq!(sockets_needed(3_000, many, 1), 3);
    }

    /// The writability check leaves a user's link a link, and a file there
    /// as it was.
    #[cfg(unix)]
    #[test]
    fn checking_a_report_path_leaves_what_is_there_alone() {
        let dir = std::env::temp_dir().join(format!("load-writable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("latest.json");
        std::os::unix::fs::symlink(dir.join("today.json"), &link).unwrap();
        check_writable(&link).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let kept = dir.join("kept.json");
        std::fs::write(&kept, "{}").unwrap();
        check_writable(&kept).unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "{}");
        let fresh = dir.join("fresh.json");
        check_writable(&fresh).unwrap();
        assert!(!fresh.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A load test sends a handshake storm, then the game's traffic: off
    /// this host only to a server its user says is theirs.
    #[test]
    fn a_load_test_off_this_host_needs_the_ownership_flag() {
        let plan = |server: &str, owned: bool| {
            let mut args = vec![
                "client_headless".to_owned(),
                "load".into(),
                "--server".into(),
                server.into(),
                "--bots".into(),
                "1".into(),
                "--duration".into(),
                "1".into(),
            ];
            if owned {
                args.push("--i-own-this-server".into());
            }
            let Ok(Cli {
                command: Command::Load(args),
            }) = Cli::try_parse_from(args)
            else {
                panic!("parses");
            };
            load_plan(*args)
        };
        let refused = plan("192.0.2.1:7777", false).err().expect("refused");
        assert!(refused.contains("--i-own-this-server"), "{refused}");
        assert!(plan("192.0.2.1:7777", true).is_ok());
        assert!(plan("[::1]:7777", false).is_ok());
        let refused = plan("239.255.255.250:1900", true).err().expect("refused");
        assert!(
            refused.contains("not the address of one server"),
            "{refused}"
        );
    }

    #[test]
    fn threads_out_of_range_are_refused_not_clamped() {
        for n in ["1", "64"] {
            let cli = load(&["--threads", n]).expect(n);
            assert_eq!(threads(&cli), n.parse().ok());
        }
        for n in ["0", "65", "1000"] {
            let error = load(&["--threads", n]).err().expect(n).to_string();
            assert!(error.contains("--threads"), "{error}");
            assert!(error.contains("1..=64"), "{error}");
        }
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("load")
            .expect("a load command")
            .render_long_help()
            .to_string();
        assert!(help.contains("1 to 64"), "{help}");
    }
}
