//! The admin console: commands typed on the server's terminal.
//!
//! A reader thread (`admin-console`) parses stdin lines and sends the
//! commands over a bounded channel; [`ConsoleSystems::Receive`] drains it
//! each tick into [`AdminCommand`] messages, which
//! [`ConsoleSystems::Execute`] carries out. Any other admin front end (a
//! future remote console, a test) can write [`AdminCommand`]s too.
//!
//! The console only turns commands into messages: [`AdminKick`] and
//! [`AdminSay`] are for the network and chat plugins to act on. Replies are
//! printed on stdout by a thread of their own (`console-out`, an outlet
//! like the logs' on stderr): a stdout nobody reads (a pipe into a pager
//! left on its first page) holds them, up to [`MAX_QUEUED_ANSWER_BYTES`],
//! then drops them, but never stops the tick.
//!
//! The console starts only when stdin is a terminal. A process put in the
//! background of an interactive shell (`server &`) still has the terminal
//! as stdin and would be stopped by SIGTTIN on its first read: start it
//! with `< /dev/null` instead, which disables the console.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bevy_app::{App, Plugin, PreUpdate};
use bevy_ecs::prelude::*;
use crossbeam_channel::{Receiver, Sender};
use tracing::{info, warn};

use crate::metrics::Counter;
use crate::outlet::Outlet;
use crate::players::{ClientId, PlayerRoster};
use crate::shutdown::{ShutdownReason, ShutdownRequested, ShutdownSystems};
use crate::tick::TickStats;

/// Most commands queued between two ticks; the reader thread waits when it
/// is full (a human typing never gets there).
pub const CONSOLE_QUEUE: usize = 16;

/// Most bytes of answers waiting for stdout; an answer that would go
/// beyond is dropped (and the next one written says how many were).
pub const MAX_QUEUED_ANSWER_BYTES: usize = 4 << 20;

/// An administrator's command.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Print tick rate, tick duration percentiles, overruns and uptime.
    Status,
    /// List connected players, a page of [`PLAYERS_PAGE`] at a time.
    Players {
        /// How many to pass over (`players 1000` lists the second page).
        skip: usize,
    },
    /// Disconnect a player.
    Kick {
        /// Who.
        client: ClientId,
        /// Shown to the player; `None` for the default.
        reason: Option<String>,
    },
    /// Broadcast a server message to every player.
    Say {
        /// The text.
        text: String,
    },
    /// Shut the server down gracefully.
    Shutdown,
    /// Print the command list.
    Help,
}

/// Asks the network plugin to disconnect a client.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct AdminKick {
    /// Who.
    pub client: ClientId,
    /// Shown to the player.
    pub reason: String,
}

/// Asks the chat plugin to broadcast a server message.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct AdminSay {
    /// The text.
    pub text: String,
}

/// Reason sent with a kick when the admin gave none.
pub const DEFAULT_KICK_REASON: &str = "kicked by an administrator";

/// The command list, printed by `help` and after an unknown command.
pub const HELP: &str = "\
commands:
  status               tick rate, tick time p50/p99 (last 1-2 min, since start), overruns, uptime
  players [skip]       list connected players, address and RTT, 1000 at a time
  kick <id> [reason]   show a player the reason, then disconnect it
  say <text>           broadcast a server message
  shutdown             save, say goodbye and exit
  help                 this list";

/// Why a console line is not a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseCommandError {
    /// No such command.
    #[error("unknown command {0:?}")]
    Unknown(String),
    /// The command's arguments are wrong; holds the usage line.
    #[error("usage: {0}")]
    Usage(&'static str),
}

/// Parses one console line; `Ok(None)` for a blank line.
///
/// # Errors
/// [`ParseCommandError`] for an unknown command or bad arguments.
pub fn parse_command(line: &str) -> Result<Option<AdminCommand>, ParseCommandError> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    };
    let command = match word {
        "" => return Ok(None),
        "status" | "shutdown" | "help" if !rest.is_empty() => {
            return Err(ParseCommandError::Usage(match word {
                "status" => "status",
                "shutdown" => "shutdown",
                _ => "help",
            }));
        }
        "status" => AdminCommand::Status,
        "players" if rest.is_empty() => AdminCommand::Players { skip: 0 },
        "players" => AdminCommand::Players {
            skip: rest
                .parse()
                .map_err(|_| ParseCommandError::Usage("players [skip]"))?,
        },
        "shutdown" => AdminCommand::Shutdown,
        "help" | "?" => AdminCommand::Help,
        "kick" => {
            const USAGE: &str = "kick <id> [reason]";
            let (id, reason) = match rest.split_once(char::is_whitespace) {
                Some((id, reason)) => (id, Some(reason.trim().to_owned())),
                None => (rest, None),
            };
            let client = id.parse().map_err(|_| ParseCommandError::Usage(USAGE))?;
            AdminCommand::Kick { client, reason }
        }
        "say" if rest.is_empty() => return Err(ParseCommandError::Usage("say <text>")),
        "say" => AdminCommand::Say {
            text: rest.to_owned(),
        },
        other => return Err(ParseCommandError::Unknown(other.to_owned())),
    };
    Ok(Some(command))
}

/// Formats the `status` reply.
pub fn format_status(stats: &TickStats) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let uptime = stats.uptime().as_secs();
    format!(
        "tick rate {} Hz | tick {} | tick time, last 1-2 min: p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms; since start: p99 {:.2} ms, max {:.2} ms | \
         overruns {} | skipped {} | uptime {}h{:02}m{:02}s",
        stats.rate().hz(),
        stats.tick(),
        ms(stats.recent_quantile(0.5)),
        ms(stats.recent_quantile(0.99)),
        ms(stats.recent_quantile(1.0)),
        ms(stats.duration_quantile(0.99)),
        ms(stats.duration_quantile(1.0)),
        stats.overruns(),
        stats.skipped_ticks(),
        uptime / 3600,
        uptime / 60 % 60,
        uptime % 60,
    )
}

/// Players one `players` answer lists: a page of about 100 KB, well under
/// [`MAX_QUEUED_ANSWER_BYTES`] (a listing of a full server, 65,536 players,
/// in one answer would be dropped as one too many for stdout), and more than
/// a terminal shows.
pub const PLAYERS_PAGE: usize = 1000;

/// Formats the `players` reply: the players after the first `skip`, at
/// most [`PLAYERS_PAGE`] of them, and how to list the next ones.
pub fn format_players(roster: &PlayerRoster, skip: usize) -> String {
    if roster.is_empty() {
        return "no players connected".to_owned();
    }
    let total = roster.len();
    if skip >= total {
        return format!("{total} player(s); none after the first {skip}");
    }
    let shown = PLAYERS_PAGE.min(total - skip);
    let mut out = if shown == total {
        format!("{total} player(s):")
    } else {
        format!("{total} player(s), {} to {}:", skip + 1, skip + shown)
    };
    for (id, player) in roster.iter().skip(skip).take(shown) {
        out.push_str(&format!("\n  {id:>20}  {}", player.name));
        if let Some(addr) = player.addr {
            out.push_str(&format!("  {addr}"));
        }
        if let Some(rtt) = player.rtt {
            out.push_str(&format!("  rtt {:.1} ms", rtt.as_secs_f64() * 1000.0));
        }
    }
    let next = skip + shown;
    if next < total {
        out.push_str(&format!(
            "\n  ... {} more: `players {next}` lists the next ones",
            total - next
        ));
    }
    out
}

/// The console systems, both in `PreUpdate` before
/// [`ShutdownSystems::Detect`], so that commands take effect in the tick
/// they arrive in.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsoleSystems {
    /// Drains the reader thread's channel into [`AdminCommand`] messages.
    Receive,
    /// Carries out [`AdminCommand`]s.
    Execute,
}

/// The receiving end of the reader thread's channel.
#[derive(Resource, Debug)]
struct ConsoleInbox(Receiver<AdminCommand>);

/// Installs the console messages and systems, and, when `stdin` is true and
/// stdin is a terminal, the thread that reads it.
#[derive(Clone, Debug, Default)]
pub struct ConsolePlugin {
    /// Read commands from stdin (only if it is a terminal).
    pub stdin: bool,
}

impl Plugin for ConsolePlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<AdminCommand>()
            .add_message::<AdminKick>()
            .add_message::<AdminSay>()
            .add_message::<ShutdownRequested>()
            .init_resource::<PlayerRoster>()
            .configure_sets(
                PreUpdate,
                (ConsoleSystems::Receive, ConsoleSystems::Execute)
                    .chain()
                    .before(ShutdownSystems::Detect),
            )
            .add_systems(
                PreUpdate,
                (
                    receive_commands
                        .in_set(ConsoleSystems::Receive)
                        .run_if(resource_exists::<ConsoleInbox>),
                    execute_commands.in_set(ConsoleSystems::Execute),
                ),
            );

        if self.stdin && std::io::stdin().is_terminal() {
            let (sender, receiver) = crossbeam_channel::bounded(CONSOLE_QUEUE);
            let spawned = std::thread::Builder::new()
                .name("admin-console".into())
                .spawn(move || read_commands(std::io::stdin().lock(), &sender));
            match spawned {
                Ok(_) => {
                    app.insert_resource(ConsoleInbox(receiver));
                    answer(format_args!(
                        "admin console ready; type `help` for commands"
                    ));
                }
                Err(error) => warn!(%error, "could not start the admin console"),
            }
        }
    }
}

/// Answers dropped because stdout was not being read, for `/metrics`.
pub(crate) static ANSWERS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The `console-out` outlet once started (`None` inside: it could not be).
static OUT: OnceLock<Option<Outlet>> = OnceLock::new();

/// The `console-out` outlet, started on first use; `None` if it could not
/// be (answers are then written by the thread that answers).
fn console_out() -> Option<&'static Outlet> {
    OUT.get_or_init(|| {
        Outlet::start(
            "console-out",
            MAX_QUEUED_ANSWER_BYTES,
            ANSWERS_DROPPED.clone(),
            write_answer,
        )
        .ok()
    })
    .as_ref()
}

/// Writes one answer on stdout, first saying how many were dropped before
/// it. With stdout closed (its reader gone) the answer is lost, not the
/// thread: `println!` would panic.
fn write_answer(text: &[u8], dropped: u64) {
    let mut stdout = std::io::stdout().lock();
    if dropped > 0 {
        let _ = writeln!(
            stdout,
            "({dropped} answers dropped: stdout was not being read)"
        );
    }
    let _ = stdout.write_all(text);
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// Queues a console answer for stdout, never waiting for it.
fn answer(text: std::fmt::Arguments<'_>) {
    let text = text.to_string().into_bytes();
    match console_out() {
        Some(out) => {
            out.send(text);
        }
        None => write_answer(&text, 0),
    }
}

/// Waits, up to `limit`, for the answers queued so far to be written: the
/// last ones (`shutting down`) before the process exits.
pub fn flush_answers(limit: Duration) {
    if let Some(out) = OUT.get().and_then(Option::as_ref) {
        out.flush(limit);
    }
}

/// Two ends of input closer together than this close the console: a
/// terminal that is gone (hung up) ends every read at once, for ever.
const REPEATED_END: Duration = Duration::from_secs(1);

/// Reads commands, one a line, until the input fails, ends twice in a row
/// within [`REPEATED_END`], or the game is gone. An end of input alone (a
/// Ctrl-D typed at the console's terminal, which reads on after it) is
/// answered and read past: it used to close the console without a word,
/// and every command typed after it was ignored. A line that is not UTF-8
/// (a Latin-1 terminal, a stray paste) is answered and skipped, not the end
/// of the console.
fn read_commands(mut input: impl BufRead, sender: &Sender<AdminCommand>) {
    let mut last_end: Option<Instant> = None;
    while read_until_end(&mut input, sender) {
        if last_end.is_some_and(|end| end.elapsed() < REPEATED_END) {
            answer(format_args!(
                "admin console closed (end of input); SIGTERM stops the server"
            ));
            return;
        }
        answer(format_args!(
            "end of input ignored; `shutdown` stops the server"
        ));
        last_end = Some(Instant::now());
    }
}

/// Reads commands until the input ends (true) or fails or the game is gone
/// (false).
fn read_until_end(input: &mut impl BufRead, sender: &Sender<AdminCommand>) -> bool {
    for line in input.split(b'\n') {
        let Ok(line) = line else { return false };
        let Ok(line) = std::str::from_utf8(&line) else {
            answer(format_args!("ignored a line that is not UTF-8 text"));
            continue;
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        match parse_command(line) {
            Ok(Some(command)) => {
                if sender.send(command).is_err() {
                    return false;
                }
            }
            Ok(None) => {}
            Err(ParseCommandError::Unknown(word)) => {
                answer(format_args!("unknown command {word:?}\n{HELP}"));
            }
            Err(error) => answer(format_args!("{error}")),
        }
    }
    true
}

fn receive_commands(inbox: Res<ConsoleInbox>, mut commands: MessageWriter<AdminCommand>) {
    commands.write_batch(inbox.0.try_iter());
}

fn execute_commands(
    mut commands: MessageReader<AdminCommand>,
    stats: Option<Res<TickStats>>,
    roster: Res<PlayerRoster>,
    mut kicks: MessageWriter<AdminKick>,
    mut says: MessageWriter<AdminSay>,
    mut shutdown: MessageWriter<ShutdownRequested>,
) {
    for command in commands.read() {
        match command {
            AdminCommand::Status => match &stats {
                Some(stats) => answer(format_args!("{}", format_status(stats))),
                None => answer(format_args!(
                    "no tick statistics (the tick runner is not installed)"
                )),
            },
            AdminCommand::Players { skip } => {
                answer(format_args!("{}", format_players(&roster, *skip)));
            }
            AdminCommand::Kick { client, .. } if roster.get(*client).is_none() => {
                answer(format_args!("no such player {client} (see `players`)"));
            }
            AdminCommand::Kick { client, reason } => {
                let reason = reason
                    .clone()
                    .unwrap_or_else(|| DEFAULT_KICK_REASON.to_owned());
                info!(%client, %reason, "admin kick");
                answer(format_args!("kicking {client}: {reason}"));
                kicks.write(AdminKick {
                    client: *client,
                    reason,
                });
            }
            AdminCommand::Say { text } => {
                info!(%text, "admin say");
                answer(format_args!("saying: {text}"));
                says.write(AdminSay { text: text.clone() });
            }
            AdminCommand::Shutdown => {
                info!("shutdown requested from the console");
                answer(format_args!("shutting down"));
                shutdown.write(ShutdownRequested {
                    reason: ShutdownReason::Console,
                });
            }
            AdminCommand::Help => answer(format_args!("{HELP}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::players::PlayerSummary;

    /// An hour of slow ticks after days of fast ones shows in `status`:
    /// its percentiles are the last one to two minutes' first.
    #[test]
    fn status_shows_the_last_minute_that_history_would_drown() {
        use crate::tick::{TickRate, TickStats};
        let mut stats = TickStats::new(TickRate::default());
        let mut uptime = Duration::ZERO;
        let mut tick = |stats: &mut TickStats, ms: u64| {
            // On schedule at 30 Hz, or late as long as the tick took.
            uptime += Duration::from_millis(ms.max(33));
            stats.record(Duration::from_millis(ms), uptime);
        };
        for _ in 0..100_000 {
            tick(&mut stats, 1);
        }
        // 100 s of slow ticks: the last minute is all slow ones.
        for _ in 0..500 {
            tick(&mut stats, 200);
        }
        assert!(stats.recent_quantile(0.5) >= Duration::from_millis(100));
        let recent = stats.recent_quantile(0.99);
        assert!(stats.duration_quantile(0.99) < Duration::from_millis(10));
        let status = format_status(&stats);
        let shown = format!("p99 {:.2} ms", recent.as_secs_f64() * 1000.0);
        let since_start = status.find("since start").expect("both spans");
        assert!(status[..since_start].contains(&shown), "{status}");
        // Two minutes later, the slow spell has left the window.
        for _ in 0..2 * 60 * 30 + 30 {
            tick(&mut stats, 1);
        }
        assert!(stats.recent_quantile(1.0) < Duration::from_millis(10));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_skipped_not_the_end_of_the_console() {
        let (sender, receiver) = crossbeam_channel::unbounded();
        read_commands(&b"\xe9t\xe9\nstatus\r\nplayers\n"[..], &sender);
        let commands: Vec<_> = receiver.try_iter().collect();
        assert_eq!(
            commands,
            [AdminCommand::Status, AdminCommand::Players { skip: 0 }]
        );
    }

    /// A terminal's input: its parts, each read through to an end of
    /// input (a Ctrl-D), then ends for ever (a terminal gone).
    struct Terminal {
        parts: std::collections::VecDeque<&'static [u8]>,
        at: usize,
    }

    impl std::io::Read for Terminal {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = std::io::Read::read(&mut self.fill_buf()?, buf)?;
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for Terminal {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            if self.parts.front().is_some_and(|part| self.at == part.len()) {
                // This part ends here: one read returns nothing.
                self.parts.pop_front();
                self.at = 0;
                return Ok(&[]);
            }
            Ok(self.parts.front().map_or(&[][..], |part| &part[self.at..]))
        }

        fn consume(&mut self, amount: usize) {
            self.at += amount;
        }
    }

    #[test]
    fn a_ctrl_d_at_the_console_is_read_past_and_a_terminal_gone_closes_it() {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let terminal = Terminal {
            parts: [&b"status\n"[..], b"players\n"].into(),
            at: 0,
        };
        let (done, finished) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            read_commands(terminal, &sender);
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a terminal that ends every read closes the console");
        let commands: Vec<_> = receiver.try_iter().collect();
        assert_eq!(
            commands,
            [AdminCommand::Status, AdminCommand::Players { skip: 0 }]
        );
    }

    #[test]
    fn only_players_online_are_kicked() {
        let mut app = App::new();
        app.add_plugins(ConsolePlugin { stdin: false });
        let kick = |app: &mut App, id: u64| {
            app.world_mut().write_message(AdminCommand::Kick {
                client: ClientId(id),
                reason: None,
            });
            app.update();
            let kicks = app.world().resource::<Messages<AdminKick>>();
            kicks
                .iter_current_update_messages()
                .map(|k| k.client.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(kick(&mut app, 42), Vec::<u64>::new());
        app.world_mut().resource_mut::<PlayerRoster>().insert(
            ClientId(42),
            PlayerSummary {
                name: "ada".into(),
                addr: None,
                rtt: None,
            },
        );
        assert_eq!(kick(&mut app, 42), [42]);
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse_command("  status "), Ok(Some(AdminCommand::Status)));
        assert_eq!(
            parse_command("players"),
            Ok(Some(AdminCommand::Players { skip: 0 }))
        );
        assert_eq!(
            parse_command("players 1000"),
            Ok(Some(AdminCommand::Players { skip: 1000 }))
        );
        assert_eq!(
            parse_command("players ten"),
            Err(ParseCommandError::Usage("players [skip]"))
        );
        assert_eq!(parse_command("shutdown"), Ok(Some(AdminCommand::Shutdown)));
        assert_eq!(parse_command("help"), Ok(Some(AdminCommand::Help)));
        assert_eq!(parse_command(""), Ok(None));
        assert_eq!(
            parse_command("kick 42"),
            Ok(Some(AdminCommand::Kick {
                client: ClientId(42),
                reason: None
            }))
        );
        assert_eq!(
            parse_command("kick 42   spamming  chat "),
            Ok(Some(AdminCommand::Kick {
                client: ClientId(42),
                reason: Some("spamming  chat".into())
            }))
        );
        assert_eq!(
            parse_command("say hello  world"),
            Ok(Some(AdminCommand::Say {
                text: "hello  world".into()
            }))
        );
    }

    #[test]
    fn rejects_unknown_commands_and_bad_arguments() {
        assert_eq!(
            parse_command("dance"),
            Err(ParseCommandError::Unknown("dance".into()))
        );
        assert_eq!(
            parse_command("kick bob"),
            Err(ParseCommandError::Usage("kick <id> [reason]"))
        );
        assert_eq!(
            parse_command("kick"),
            Err(ParseCommandError::Usage("kick <id> [reason]"))
        );
        assert_eq!(
            parse_command("say"),
            Err(ParseCommandError::Usage("say <text>"))
        );
        assert_eq!(
            parse_command("status now"),
            Err(ParseCommandError::Usage("status"))
        );
    }

    #[test]
    fn commands_become_messages_for_other_plugins() {
        let mut app = App::new();
        app.add_plugins(ConsolePlugin { stdin: false });
        let world = app.world_mut();
        world.resource_mut::<PlayerRoster>().insert(
            ClientId(7),
            PlayerSummary {
                name: "ada".into(),
                addr: None,
                rtt: None,
            },
        );
        world.write_message(AdminCommand::Kick {
            client: ClientId(7),
            reason: None,
        });
        world.write_message(AdminCommand::Say { text: "hi".into() });
        world.write_message(AdminCommand::Shutdown);
        app.update();

        let world = app.world();
        let kicks: Vec<_> = world
            .resource::<Messages<AdminKick>>()
            .iter_current_update_messages()
            .cloned()
            .collect();
        assert_eq!(
            kicks,
            vec![AdminKick {
                client: ClientId(7),
                reason: DEFAULT_KICK_REASON.into()
            }]
        );
        let says: Vec<_> = world
            .resource::<Messages<AdminSay>>()
            .iter_current_update_messages()
            .cloned()
            .collect();
        assert_eq!(says, vec![AdminSay { text: "hi".into() }]);
        let shutdowns = world.resource::<Messages<ShutdownRequested>>();
        assert_eq!(shutdowns.iter_current_update_messages().count(), 1);
    }

    #[test]
    fn players_lists_the_roster() {
        let mut roster = PlayerRoster::default();
        assert_eq!(format_players(&roster, 0), "no players connected");
        roster.insert(
            ClientId(3),
            PlayerSummary {
                name: "ada".into(),
                addr: None,
                rtt: Some(Duration::from_millis(42)),
            },
        );
        let listing = format_players(&roster, 0);
        assert!(listing.starts_with("1 player(s):"));
        assert!(listing.contains("ada"));
        assert!(listing.contains("rtt 42.0 ms"));
    }

    /// A full server's listing fits the answers' bound a page at a time:
    /// in one answer (6 MB with long ids and IPv6 addresses) it was dropped
    /// whole.
    #[test]
    fn a_full_servers_players_are_listed_a_page_at_a_time() {
        let mut roster = PlayerRoster::default();
        let players = crate::config::MAX_CLIENTS as usize;
        for n in 0..players {
            roster.insert(
                ClientId(u64::MAX - n as u64),
                PlayerSummary {
                    name: format!("player-{n:05}-with-a-long-name"),
                    addr: Some(
                        "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                            .parse()
                            .unwrap(),
                    ),
                    rtt: Some(Duration::from_millis(123)),
                },
            );
        }
        let mut skip = 0;
        let mut listed = 0;
        loop {
            let page = format_players(&roster, skip);
            assert!(page.len() <= MAX_QUEUED_ANSWER_BYTES / 16, "{}", page.len());
            assert!(page.starts_with(&format!("{players} player(s), {} to ", skip + 1)));
            listed += page.lines().filter(|l| l.contains("player-")).count();
            let Some(next) = page.split("`players ").nth(1) else {
                break;
            };
            skip = next.split('`').next().unwrap().parse().unwrap();
            assert_eq!(skip, listed);
        }
        assert_eq!(listed, players);
        assert_eq!(
            format_players(&roster, players),
            format!("{players} player(s); none after the first {players}")
        );
    }
}
