//! `client_headless play`: one interactive player in the terminal.
//!
//! A stdin thread hands typed lines over a bounded channel; the main loop
//! pumps the socket, prints what the server says and sends what the player
//! asks. Commands are listed by `/help`.

use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use glam::Vec2;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent};
use shared::io::{ClientSocket, MAX_READS_PER_PUMP, unix_secs};
use shared::movement::{ApplyScratch, MovementRules, Predictor, SnapshotReceiver, tick_dt};
use shared::netcode::ConnectToken;
use shared::protocol::chat::{
    ChatKind, ChatLine, ChatRejected, ChatScope, ChatSend, MAX_SEND_TEXT_BYTES,
};
use shared::protocol::inventory::{
    InventoryError, InventoryOp, InventoryReply, InventorySnapshot, InventoryTracker,
    InventoryUpdate, OfferedStack, TradeOffer, TradeState, TradeUpdate, WorldItems,
};
use shared::protocol::messages::{EMOTE_COUNT, Emote, EmoteRequest, ServerNotice, Welcome};
use shared::protocol::movement::Snapshot;
use shared::protocol::{self, NetMessage, PROTOCOL_ID, PROTOCOL_VERSION, channels};
use shared::transport::{ChannelId, DisconnectReason};

use crate::bot::next_beat;

/// `println!` that does not panic when stdout is closed (see
/// [`write_line`]).
macro_rules! say {
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

/// Lines typed ahead of the network loop; more wait in stdin.
const INPUT_QUEUE: usize = 64;
/// Longest the loop sleeps between socket pumps.
const IDLE: Duration = Duration::from_millis(5);
/// Most players `/near` lists.
const NEAR_LIST: usize = 20;
/// World items `/pick` lists.
const PICK_LIST: usize = 10;
/// Longest `/quit` (or the end of the input) waits for the server's
/// answers to what was sent before leaving: a piped script's replies are
/// printed, not cut off by its goodbye.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

const HELP: &str = "\
commands:
  /say TEXT        chat to everyone (plain text without a slash does the same)
  /near TEXT       chat to players nearby; /near alone lists who is nearby
  /w NAME TEXT     whisper (NAME, or #ID for an account id); also /whisper
  /move X Y        walk with velocity (X, Y) m/s; /stop to stand still
  /emote N         play emote N (0 to 15)
  /inv             your inventory
  /pick [ID]       list the nearest world items, or pick item ID up (within 5 m)
  /drop SLOT [N]   drop N (default 1) from a slot
  /use SLOT        use one item of a slot
  /give ACCOUNT SLOT [N]    give N (default 1) to another player
  /trade ACCOUNT SLOT [N]   offer N of a slot in a trade (again to change it)
  /trade accept ID REV | /trade cancel ID   (REV: the revision printed)
  /stats           connection statistics
  /help            this list (also /?)
  /quit            leave once what you sent is answered, 5 s at most (also /exit)";

/// What a typed line asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Chat.
    Say(ChatScope, String),
    /// List the players nearby.
    Near,
    /// Set the walking velocity.
    Move(Vec2),
    /// Emote.
    Emote(u8),
    /// An inventory request.
    Inventory(InventoryOp),
    /// Connection statistics.
    Stats,
    /// Print the help.
    Help,
    /// Leave.
    Quit,
}

/// Parses one typed line; `Err` is a sentence for the player.
pub(crate) fn parse_command(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if line.len() > MAX_SEND_TEXT_BYTES {
        return Err(format!(
            "that line is {} bytes: too long to send (chat takes a few hundred characters)",
            line.len()
        ));
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Some(Command::Say(ChatScope::Global, line.to_owned())));
    };
    let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let args = args.trim();
    let text = |what: &str| {
        if args.is_empty() {
            Err(format!("usage: /{verb} {what}"))
        } else {
            Ok(args.to_owned())
        }
    };
    let command = match verb {
        "say" => Command::Say(ChatScope::Global, text("TEXT")?),
        "near" if args.is_empty() => Command::Near,
        "near" => Command::Say(ChatScope::Nearby, args.to_owned()),
        "w" | "whisper" => {
            let (to, words) = args
                .split_once(' ')
                .ok_or_else(|| "usage: /w NAME TEXT".to_owned())?;
            let scope = match to.strip_prefix('#').map(str::parse::<u64>) {
                Some(Ok(id)) => ChatScope::WhisperId(id),
                Some(Err(_)) => return Err(format!("{to} is not an account id")),
                None => ChatScope::WhisperName(to.to_owned()),
            };
            Command::Say(scope, words.trim().to_owned())
        }
        "move" => {
            let mut parts = args.split_whitespace().map(str::parse::<f32>);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(Ok(x)), Some(Ok(y)), None) if x.is_finite() && y.is_finite() => {
                    Command::Move(Vec2::new(x, y))
                }
                _ => return Err("usage: /move X Y (velocity in m/s)".into()),
            }
        }
        "stop" => Command::Move(Vec2::ZERO),
        "emote" => Command::Emote(
            args.parse()
                .ok()
                .filter(|n| *n < EMOTE_COUNT)
                .ok_or_else(|| format!("usage: /emote N (0-{})", EMOTE_COUNT - 1))?,
        ),
        "inv" | "pick" | "drop" | "use" | "give" | "trade" => {
            Command::Inventory(parse_inventory(verb, args)?)
        }
        "stats" => Command::Stats,
        "help" | "?" => Command::Help,
        "quit" | "exit" => Command::Quit,
        _ => return Err(format!("unknown command /{verb}; /help lists them")),
    };
    Ok(Some(command))
}

/// Parses the arguments of an inventory command.
fn parse_inventory(verb: &str, args: &str) -> Result<InventoryOp, String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let usage = |u: &str| format!("usage: /{verb} {u}");
    let num = |i: usize, u: &str| -> Result<u64, String> {
        words
            .get(i)
            .and_then(|w| w.trim_start_matches('#').parse().ok())
            .ok_or_else(|| usage(u))
    };
    let slot = |i: usize, u: &str| -> Result<u16, String> {
        u16::try_from(num(i, u)?).map_err(|_| usage(u))
    };
    let count = |i: usize, u: &str| -> Result<u32, String> {
        match words.get(i) {
            None => Ok(1),
            Some(w) => w.parse().map_err(|_| usage(u)),
        }
    };
    let op = match (verb, words.len()) {
        ("inv", 0) => InventoryOp::List,
        ("pick", 0) => InventoryOp::ListWorld,
        ("pick", 1) => InventoryOp::PickUp {
            world_item: num(0, "[ID]")?,
        },
        ("drop", 1 | 2) => InventoryOp::Drop {
            slot: slot(0, "SLOT [N]")?,
            count: count(1, "SLOT [N]")?,
        },
        ("use", 1) => InventoryOp::Use {
            slot: slot(0, "SLOT")?,
        },
        ("give", 2 | 3) => InventoryOp::Give {
            to: num(0, "ACCOUNT SLOT [N]")?,
            slot: slot(1, "ACCOUNT SLOT [N]")?,
            count: count(2, "ACCOUNT SLOT [N]")?,
        },
        ("trade", _) if words.first() == Some(&"accept") => {
            if words.len() != 3 {
                return Err(usage("accept ID REV"));
            }
            InventoryOp::Accept {
                trade: num(1, "accept ID REV")?,
                revision: num(2, "accept ID REV")?,
            }
        }
        ("trade", 2) if words[0] == "cancel" => InventoryOp::Cancel {
            trade: num(1, "cancel ID")?,
        },
        ("trade", 2 | 3) => {
            let u = "ACCOUNT SLOT [N] | accept ID REV | cancel ID";
            InventoryOp::Offer {
                with: num(0, u)?,
                offer: TradeOffer {
                    items: vec![(slot(1, u)?, count(2, u)?)],
                },
            }
        }
        ("inv", _) => return Err(usage("")),
        ("pick", _) => return Err(usage("[ID]")),
        ("drop", _) => return Err(usage("SLOT [N]")),
        ("use", _) => return Err(usage("SLOT")),
        ("give", _) => return Err(usage("ACCOUNT SLOT [N]")),
        _ => return Err(usage("ACCOUNT SLOT [N] | accept ID REV | cancel ID")),
    };
    Ok(op)
}

/// Runs the interactive player until `/quit`, end of input or disconnect.
/// Returns the process exit code.
pub(crate) fn run(server: SocketAddr, token: &ConnectToken) -> Result<i32, String> {
    // The endpoint connects to the token's addresses, first to last: the
    // socket is of the first one's family, bound to any address, so that
    // it opens one of the other family for an address of that one.
    let first = token.server_addresses.first().copied().unwrap_or(server);
    let bind: SocketAddr = if shared::io::unmapped(first).is_ipv6() {
        "[::]:0".parse().map_err(|_| "bad bind address")?
    } else {
        "0.0.0.0:0".parse().map_err(|_| "bad bind address")?
    };
    let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
    endpoint
        .connect(token, Instant::now(), unix_secs())
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut socket =
        ClientSocket::bind(bind, endpoint).map_err(|e| format!("cannot open a socket: {e}"))?;
    say!("connecting to {server} ... (/help for commands)");
    let input = spawn_stdin();
    let mut player = Player::new();
    let mut stdin_open = true;
    // Commands that need the connection, typed before it was up, with the
    // answers to the lines after them kept in turn; and the end of input
    // (or `/quit`) behind them, to follow once they ran.
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut quit_after_pending = false;
    let mut input_ended = false;
    // Asked to leave: the goodbye goes once everything sent is answered,
    // or at this deadline.
    let mut leaving: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let read = match socket.pump(now) {
            Ok(read) => read,
            Err(error) => return Err(format!("socket error: {error}")),
        };
        while let Some(event) = socket.endpoint.poll_event() {
            if let Some(reason) = player.on_event(event) {
                // The answers to lines read before the end, kept behind
                // commands that now never run.
                for queued in pending.drain(..) {
                    if let Queued::Say(line) = queued {
                        say!("{line}");
                    }
                }
                say!("disconnected: {reason}");
                if reason == DisconnectReason::ConnectTimeout {
                    if let Some((to, error)) = socket.last_send_error() {
                        say!("  sending to {to} failed: {error}");
                    }
                    // The server drops requests it cannot accept without a
                    // word (it must not answer what it cannot verify).
                    say!("{}", connect_timeout_hint(server));
                }
                return Ok(exit_code(reason, !stdin_open));
            }
        }
        player.tick(now, &mut socket.endpoint);
        if socket.endpoint.is_connected() {
            for queued in pending.drain(..) {
                match queued {
                    Queued::Run(command) => player.run(now, command, &mut socket.endpoint),
                    Queued::Say(line) => say!("{line}"),
                }
            }
            if std::mem::take(&mut quit_after_pending) {
                leaving = Some(now + ANSWER_WAIT);
            }
        }
        if let Some(deadline) = leaving {
            let waiting = player.unanswered();
            if waiting == 0 || now >= deadline || !socket.endpoint.is_connected() {
                if waiting > 0 {
                    say!("leaving with {waiting} requests unanswered");
                }
                socket.endpoint.disconnect(now, DisconnectReason::Closed);
                leaving = None;
            }
        }
        if stdout_gone() && stdin_open {
            // Nobody reads what this prints: leave at once.
            stdin_open = false;
            socket.endpoint.disconnect(now, DisconnectReason::Closed);
        }
        // A pass reads at most a queue's worth of lines, and none while
        // the commands waiting for the connection are at their bound: the
        // rest wait in stdin, and a producer faster than the loop does not
        // keep it from the socket.
        let mut lines_left = INPUT_QUEUE;
        while stdin_open && lines_left > 0 && pending.len() < MAX_PENDING_COMMANDS {
            lines_left -= 1;
            // Behind commands waiting for the connection, a line's answer
            // waits its turn.
            let quit = match input.try_recv() {
                // Another encoding (a Latin-1 terminal): the line alone is
                // refused; the input goes on.
                Ok(Err(_)) => {
                    let notice = "that line is not UTF-8 text: ignored";
                    if pending.is_empty() {
                        say!("{notice}");
                    } else {
                        pending.push_back(Queued::Say(notice.to_owned()));
                    }
                    false
                }
                Ok(Ok(line)) => match parse_command(&line) {
                    Ok(Some(Command::Quit)) => true,
                    Ok(Some(command))
                        if !pending.is_empty()
                            || waits_for_connection(&command, &socket.endpoint) =>
                    {
                        pending.push_back(Queued::Run(command));
                        false
                    }
                    Ok(Some(command)) => {
                        player.run(now, command, &mut socket.endpoint);
                        false
                    }
                    Ok(None) => false,
                    Err(message) if pending.is_empty() => {
                        say!("{message}");
                        false
                    }
                    Err(message) => {
                        pending.push_back(Queued::Say(message));
                        false
                    }
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    input_ended = true;
                    true
                }
            };
            if quit {
                stdin_open = false;
                // The end of input while connecting waits for the
                // connection, as commands do: `play ... </dev/null`
                // connects and leaves, 1 if it could not connect. `/quit`
                // gives up at once.
                if !pending.is_empty() || input_ended {
                    quit_after_pending = true;
                } else if socket.endpoint.is_connected() {
                    leaving = Some(now + ANSWER_WAIT);
                } else {
                    socket.endpoint.disconnect(now, DisconnectReason::Closed);
                }
            }
        }
        socket.flush(now);
        if read == MAX_READS_PER_PUMP {
            // More may be waiting.
            continue;
        }
        let wake = socket
            .endpoint
            .poll_timeout()
            .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()))
            .min(IDLE);
        std::thread::sleep(wake);
    }
}

/// What to check when a connect timed out: the server drops what it
/// cannot accept without a word.
fn connect_timeout_hint(server: SocketAddr) -> String {
    format!(
        "  is the server up at {server}? A server of another protocol version (this client: \
         {PROTOCOL_VERSION}) or with another key also stays silent, and so do one whose public \
         address (public_addr) is not {server} (a token names the addresses it is for: a \
         server bound to every interface names loopback unless public_addr is set) and one \
         where this account is connected already"
    )
}

/// Whether `command` must wait for the connection (typed while it is
/// still being made): all but `/help`, so that a script's commands run in
/// its order.
fn waits_for_connection(command: &Command, endpoint: &ClientEndpoint) -> bool {
    !endpoint.is_connected() && !matches!(command, Command::Help)
}

/// The exit code of a session that ended for `reason`: 0 when the player
/// left (`quit`: `/quit` or the end of its input), 1 otherwise. `Closed`
/// alone does not say who closed: the server's secure layer says it too
/// when its transport's goodbye was lost.
fn exit_code(reason: DisconnectReason, quit: bool) -> i32 {
    if quit && reason == DisconnectReason::Closed {
        0
    } else {
        1
    }
}

/// A line of input, or `Err` for one that is not UTF-8 text (refused in
/// its turn, after the lines before it).
type InputLine = Result<String, std::str::Utf8Error>;

fn spawn_stdin() -> Receiver<InputLine> {
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut bytes = Vec::new();
            loop {
                bytes.clear();
                match stdin.read_until(b'\n', &mut bytes) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = std::str::from_utf8(&bytes)
                    .map(|line| line.trim_end_matches(['\n', '\r']).to_owned());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    rx
}

/// Set once stdout is gone (its reader closed the pipe): `play` leaves,
/// saying goodbye, instead of panicking on its next line.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout; a failed write marks stdout gone.
#[cfg(not(test))]
fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{args}").and_then(|()| out.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
thread_local! {
    /// What this thread's tests had printed.
    static PRINTED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tests read what was printed instead.
#[cfg(test)]
fn write_line(args: std::fmt::Arguments<'_>) {
    PRINTED.with(|printed| printed.borrow_mut().push(args.to_string()));
}

fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// The player's state: movement (a [`Predictor`] and a
/// [`SnapshotReceiver`], as every client must), and inventory requests in
/// an [`InventoryTracker`].
struct Player {
    account: Option<u64>,
    tick_hz: u16,
    /// The server's movement rules, from its welcome.
    rules: MovementRules,
    receiver: SnapshotReceiver,
    /// The receiver's working lists.
    apply_scratch: ApplyScratch,
    predictor: Option<Predictor>,
    snapshot_errors: u64,
    velocity: Vec2,
    next_move: Option<Instant>,
    inventory: InventoryTracker,
    /// Requests answered `Busy` or `Storage`, resent with their ids when
    /// the time comes (a new id could apply the op twice).
    inventory_retry: InventoryRetries,
    /// The `client_ref` of the next chat send.
    next_chat_ref: u32,
    /// Chat sends not answered yet, by `client_ref`: the text, to say which
    /// one a refusal is about. At most [`MAX_UNANSWERED_CHAT`]; the oldest
    /// is forgotten first (its refusal is then printed without the text).
    unanswered_chat: BTreeMap<u32, String>,
}

/// A message of type `T`, or `None` after saying it did not decode (a
/// request would otherwise look as if never answered).
fn decoded<T: NetMessage>(payload: &[u8]) -> Option<T> {
    match protocol::decode::<T>(payload) {
        Ok(message) => Some(message),
        Err(error) => {
            say!(
                "(message {} from the server did not decode: {error})",
                T::ID
            );
            None
        }
    }
}

/// Server text as it may reach the terminal: control characters (escape
/// sequences that would clear the screen, retitle the window or fake
/// lines) shown as U+FFFD. The server cleans players' chat, but not
/// everything it sends, and a server you try out need not be trusted.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// How long `play` waits before sending a request answered `Busy` or
/// `Storage` again the first time; each next wait is twice as long.
const INVENTORY_RETRY: Duration = Duration::from_secs(1);

/// Refusals (`Busy` or `Storage`) after which `play` gives a request up:
/// with [`INVENTORY_RETRY`] doubling, 1 + 2 + 4 + 8 s of retries.
const INVENTORY_TRIES: u32 = 5;

/// The inventory requests answered `Busy` or `Storage` and due to be sent
/// again, each after twice the wait of the time before, up to
/// [`INVENTORY_TRIES`] refusals (a server whose storage keeps failing is
/// not asked every second for ever).
#[derive(Debug, Default)]
struct InventoryRetries {
    /// Request id → refusals so far, and when it is due again (`None`
    /// while the copy sent last is unanswered).
    waiting: BTreeMap<u64, (u32, Option<Instant>)>,
}

impl InventoryRetries {
    /// `id` was refused at `now`: the wait before it is sent again, or
    /// `None` when that was its last try (it is forgotten here).
    fn refused(&mut self, id: u64, now: Instant) -> Option<Duration> {
        let (refusals, due) = self.waiting.entry(id).or_insert((0, None));
        *refusals += 1;
        if *refusals >= INVENTORY_TRIES {
            self.waiting.remove(&id);
            return None;
        }
        let wait = INVENTORY_RETRY.saturating_mul(1 << (*refusals - 1));
        *due = Some(now + wait);
        Some(wait)
    }

    /// `id` got an answer that is not a refusal.
    fn answered(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// The ids due at `now`, marked as sent.
    fn due(&mut self, now: Instant) -> Vec<u64> {
        let mut ids = Vec::new();
        for (id, (_, due)) in &mut self.waiting {
            if due.is_some_and(|at| at <= now) {
                *due = None;
                ids.push(*id);
            }
        }
        ids
    }
}

/// See [`Player::unanswered_chat`].
const MAX_UNANSWERED_CHAT: usize = 64;

/// Commands typed (or piped) before the connection is up, kept to run once
/// it is: a script piped in arrives whole before the handshake ends. Past
/// this many, the rest wait in stdin.
const MAX_PENDING_COMMANDS: usize = 256;

/// A line of input waiting for the connection: a command to run, or the
/// answer to a line that needed none, printed in its turn.
enum Queued {
    Run(Command),
    Say(String),
}

impl Player {
    fn new() -> Self {
        // Request ids from the clock: the server remembers applied ids per
        // account (across restarts) and answers a repeat without applying it.
        let first = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        )
        .unwrap_or(0)
            << 16;
        Self {
            account: None,
            tick_hz: 30,
            rules: MovementRules::default(),
            receiver: SnapshotReceiver::new(),
            apply_scratch: ApplyScratch::default(),
            predictor: None,
            snapshot_errors: 0,
            velocity: Vec2::ZERO,
            next_move: None,
            inventory: InventoryTracker::starting_at(first),
            next_chat_ref: 1,
            unanswered_chat: BTreeMap::new(),
            inventory_retry: InventoryRetries::default(),
        }
    }

    /// Answers still to come: chat sends and inventory requests not
    /// answered yet, and the welcome until it came.
    fn unanswered(&self) -> usize {
        self.unanswered_chat.len()
            + self.inventory.pending().count()
            + usize::from(self.account.is_none())
    }

    /// Prints an event; `Some(reason)` when the session ended.
    fn on_event(&mut self, event: ClientEndpointEvent<'_>) -> Option<DisconnectReason> {
        match event {
            ClientEndpointEvent::Connected { client_index } => {
                say!("connected (slot {client_index})");
                // Input every tick from now on (standing still until /move):
                // the server starts the snapshot stream with the first one.
                self.next_move = Some(Instant::now());
            }
            ClientEndpointEvent::Disconnected { reason } => return Some(reason),
            ClientEndpointEvent::Message { channel, payload } => {
                self.on_message(channel, payload);
            }
        }
        None
    }

    fn on_message(&mut self, channel: ChannelId, payload: &[u8]) {
        if channel == channels::SNAPSHOT {
            self.on_snapshot(payload);
            return;
        }
        match protocol::message_id(payload) {
            Some(Welcome::ID) => {
                if let Some(w) = decoded::<Welcome>(payload) {
                    say!(
                        "welcome! you are account {} (server ticks at {} Hz)",
                        w.client_id,
                        w.tick_hz
                    );
                    self.account = Some(w.client_id);
                    self.tick_hz = w.tick_hz;
                    if w.rules.is_valid() {
                        self.rules = w.rules;
                    } else {
                        say!(
                            "the server's movement rules are unusable; predicting with the defaults"
                        );
                    }
                    // The first inputs may have left before the welcome.
                    if let Some(predictor) = self.predictor.as_mut() {
                        predictor.set_rules(self.rules, tick_dt(self.tick_hz));
                    }
                    // A `/move` before it was held to the default limit.
                    let velocity = self
                        .rules
                        .clamp_velocity(self.velocity)
                        .unwrap_or(Vec2::ZERO);
                    if velocity != self.velocity {
                        self.velocity = velocity;
                        say!(
                            "moving at ({}, {}) m/s: the server's limit is {} m/s",
                            velocity.x,
                            velocity.y,
                            self.rules.max_speed
                        );
                    }
                }
            }
            Some(ServerNotice::ID) => {
                if let Some(n) = decoded::<ServerNotice>(payload) {
                    say!("[server] {}", printable(&n.text));
                }
            }
            Some(Emote::ID) => {
                if let Some(e) = decoded::<Emote>(payload) {
                    say!("* {} plays emote {}", e.from, e.emote);
                }
            }
            Some(ChatLine::ID) => {
                if let Some(line) = decoded::<ChatLine>(payload) {
                    let kind = match line.kind {
                        ChatKind::Global => "",
                        ChatKind::Nearby => "(nearby) ",
                        ChatKind::Whisper => "(whisper) ",
                        ChatKind::System => "(system) ",
                    };
                    if let Some(client_ref) = line.reply_to {
                        self.unanswered_chat.remove(&client_ref);
                    }
                    say!(
                        "{kind}<{}> {}",
                        printable(&line.from_name),
                        printable(&line.text)
                    );
                }
            }
            Some(ChatRejected::ID) => {
                if let Some(r) = decoded::<ChatRejected>(payload) {
                    match self.unanswered_chat.remove(&r.client_ref) {
                        Some(text) => {
                            say!("chat refused ({text:?}): {}", printable(&r.message));
                        }
                        None => say!("chat refused: {}", printable(&r.message)),
                    }
                }
            }
            Some(InventoryReply::ID) => {
                if let Some(reply) = decoded::<InventoryReply>(payload) {
                    self.on_inventory_reply(&reply);
                }
            }
            Some(InventoryUpdate::ID) => {
                if let Some(update) = decoded::<InventoryUpdate>(payload) {
                    // An update no newer than a reply printed before it
                    // (the server sends a tick's replies first) is not news.
                    let seen = self.inventory.inventory().map(|i| i.version);
                    let result = self.inventory.on_update(&update);
                    if let Err(e) = &result {
                        say!("(inventory: {e})");
                    }
                    if result.is_err() || seen.is_none_or(|seen| update.inventory.version > seen) {
                        say!("your inventory changed:");
                        print_inventory(&update.inventory);
                    }
                }
            }
            Some(TradeUpdate::ID) => {
                if let Some(t) = decoded::<TradeUpdate>(payload) {
                    self.print_trade(&t);
                }
            }
            Some(WorldItems::ID) => {
                if let Some(w) = decoded::<WorldItems>(payload) {
                    let me = self.receiver.own_position().unwrap_or(Vec2::ZERO);
                    let mut items = w.items;
                    items.sort_by(|a, b| {
                        a.position
                            .distance_squared(me)
                            .total_cmp(&b.position.distance_squared(me))
                    });
                    say!("{} items in the world; nearest:", items.len());
                    for i in items.iter().take(PICK_LIST) {
                        say!(
                            "  #{}: {} x item {} at ({:.1}, {:.1}), {:.1} m away",
                            i.id,
                            i.stack.count,
                            i.stack.item.0,
                            i.position.x,
                            i.position.y,
                            i.position.distance(me)
                        );
                    }
                }
            }
            other => say!(
                "(message {other:?} on channel {} not understood by this client)",
                channel.0
            ),
        }
    }

    /// Applies a snapshot and reconciles the prediction.
    fn on_snapshot(&mut self, payload: &[u8]) {
        let applied = protocol::decode::<Snapshot>(payload)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                self.receiver
                    .apply(&s, &mut self.apply_scratch)
                    .map_err(|e| e.to_string())
            });
        match applied {
            Ok(()) => {
                if let (Some(p), Some(own)) =
                    (self.predictor.as_mut(), self.receiver.own_position())
                {
                    p.reconcile(own, self.receiver.last_input());
                }
            }
            Err(error) => {
                self.snapshot_errors += 1;
                if self.snapshot_errors.is_power_of_two() {
                    say!(
                        "(snapshot not applied: {error}; {} so far)",
                        self.snapshot_errors
                    );
                }
            }
        }
    }

    fn on_inventory_reply(&mut self, reply: &InventoryReply) {
        let op = match self.inventory.on_reply(reply) {
            Ok(op) => op,
            Err(e) => {
                say!("(inventory: {e})");
                return;
            }
        };
        match &reply.result {
            Ok(inventory) => {
                if let Some(trade) = reply.trade {
                    let what = match op {
                        InventoryOp::Offer { .. } => "offer made",
                        InventoryOp::Accept { .. } => "accepted",
                        InventoryOp::Cancel { .. } => "cancelled",
                        _ => "done",
                    };
                    say!("trade {trade}: {what}");
                }
                if !matches!(op, InventoryOp::ListWorld) {
                    print_inventory(inventory);
                }
            }
            Err(error @ (InventoryError::Busy | InventoryError::Storage)) => {
                match self
                    .inventory_retry
                    .refused(reply.request_id, Instant::now())
                {
                    Some(wait) => say!(
                        "{op:?}: {error}; sent again in {} s with the same request id",
                        wait.as_secs()
                    ),
                    None => {
                        self.inventory.forget(reply.request_id);
                        say!(
                            "{op:?}: {error} {INVENTORY_TRIES} times; given up (a copy still \
                             queued at the server may apply: /inv shows)"
                        );
                    }
                }
                return;
            }
            Err(error) => say!("{op:?} failed: {error}"),
        }
        self.inventory_retry.answered(reply.request_id);
    }

    /// Sends again the requests answered `Busy` or `Storage`, once due.
    fn retry_inventory(&mut self, now: Instant, endpoint: &mut ClientEndpoint) {
        let ids = self.inventory_retry.due(now);
        if ids.is_empty() {
            return;
        }
        for request in self
            .inventory
            .pending()
            .filter(|r| ids.contains(&r.request_id))
        {
            if let Ok(payload) = protocol::encode(&request) {
                let _ = endpoint.send(channels::INVENTORY, payload);
            }
        }
    }

    fn print_trade(&self, t: &TradeUpdate) {
        let me = self.account;
        let other = if me == Some(t.initiator) {
            t.partner
        } else {
            t.initiator
        };
        let (mine, theirs) = if me == Some(t.initiator) {
            (&t.initiator_offer, &t.partner_offer)
        } else {
            (&t.partner_offer, &t.initiator_offer)
        };
        let state = match t.state {
            TradeState::Open {
                initiator_accepted,
                partner_accepted,
            } => format!(
                "open (accepted: {} {}, {} {}); /trade accept {} {} to accept it as shown",
                t.initiator, initiator_accepted, t.partner, partner_accepted, t.trade, t.revision
            ),
            TradeState::Completed => "completed".to_owned(),
            TradeState::Cancelled => "cancelled".to_owned(),
        };
        say!(
            "trade {} (revision {}) with account {other}: you give {}; you get {}; {state}",
            t.trade,
            t.revision,
            describe_offer(mine),
            describe_offer(theirs)
        );
    }

    fn run(&mut self, now: Instant, command: Command, endpoint: &mut ClientEndpoint) {
        if !endpoint.is_connected() && !matches!(command, Command::Help | Command::Stats) {
            say!("not connected yet");
            return;
        }
        match command {
            Command::Say(scope, text) => {
                let client_ref = self.next_chat_ref;
                self.next_chat_ref = self.next_chat_ref.wrapping_add(1);
                let send = ChatSend {
                    client_ref,
                    scope,
                    text,
                };
                let Ok(payload) = protocol::encode(&send) else {
                    return;
                };
                match endpoint.send(channels::CHAT, payload) {
                    Ok(()) => {
                        if self.unanswered_chat.len() >= MAX_UNANSWERED_CHAT {
                            self.unanswered_chat.pop_first();
                        }
                        self.unanswered_chat.insert(client_ref, send.text);
                    }
                    Err(e) => say!("chat not sent: {e}"),
                }
            }
            Command::Near => self.print_near(),
            Command::Move(velocity) => {
                // What the server will apply: faster is clamped there (and
                // counted as a violation every tick), so send it clamped.
                let velocity = self.rules.clamp_velocity(velocity).unwrap_or(Vec2::ZERO);
                self.velocity = velocity;
                self.next_move.get_or_insert(now);
                say!(
                    "moving at ({}, {}) m/s (at most {} m/s)",
                    velocity.x,
                    velocity.y,
                    self.rules.max_speed
                );
            }
            Command::Emote(emote) => {
                if let Ok(payload) = protocol::encode(&EmoteRequest { emote }) {
                    let _ = endpoint.send(channels::EVENTS, payload);
                }
            }
            Command::Inventory(op) => match self.inventory.request(op) {
                Ok(request) => {
                    let sent = protocol::encode(&request)
                        .map_err(|e| e.to_string())
                        .and_then(|payload| {
                            (endpoint.send(channels::INVENTORY, payload)).map_err(|e| e.to_string())
                        });
                    if let Err(e) = sent {
                        // Never sent: nothing to wait for.
                        self.inventory.forget(request.request_id);
                        say!("inventory request not sent: {e}");
                    }
                }
                Err(e) => say!("inventory request not sent: {e}"),
            },
            Command::Stats => match endpoint.connection_stats() {
                Some(s) => say!(
                    "rtt {:.1} ms, loss {:.1}%, sent {} packets / {} B, received {} packets / {} B, resent {}",
                    s.rtt.as_secs_f64() * 1000.0,
                    s.packet_loss * 100.0,
                    s.packets_sent,
                    s.bytes_sent,
                    s.packets_received,
                    s.bytes_received,
                    s.resent
                ),
                None => say!("not connected"),
            },
            Command::Help => say!("{HELP}"),
            Command::Quit => {}
        }
    }

    /// Lists the players in the last applied snapshot, nearest first.
    fn print_near(&self) {
        let Some(me) = self.receiver.own_position() else {
            say!("no snapshot yet");
            return;
        };
        let you = self.receiver.you();
        let mut others: Vec<(u32, Vec2)> = self
            .receiver
            .entities()
            .iter()
            .filter(|(id, _)| Some(*id) != you)
            .filter_map(|(id, _)| Some((*id, self.receiver.position(*id)?)))
            .collect();
        others.sort_by(|a, b| {
            a.1.distance_squared(me)
                .total_cmp(&b.1.distance_squared(me))
        });
        let predicted = self.predictor.as_ref().map_or(me, Predictor::position);
        say!(
            "you are at ({:.1}, {:.1}) (server), ({:.1}, {:.1}) (predicted); {} others in view",
            me.x,
            me.y,
            predicted.x,
            predicted.y,
            others.len()
        );
        for (id, p) in others.iter().take(NEAR_LIST) {
            say!(
                "  entity {id} at ({:.1}, {:.1}), {:.1} m",
                p.x,
                p.y,
                p.distance(me)
            );
        }
    }

    /// Sends one movement input per server tick, walking or not: the
    /// server starts the snapshot stream with the first input, and each
    /// input acknowledges the newest applied snapshot (delta baseline).
    fn tick(&mut self, now: Instant, endpoint: &mut ClientEndpoint) {
        self.retry_inventory(now, endpoint);
        let Some(at) = self.next_move else { return };
        if at > now || !endpoint.is_connected() {
            return;
        }
        let dt = tick_dt(self.tick_hz);
        let start = self.receiver.own_position().unwrap_or(Vec2::ZERO);
        let predictor = self
            .predictor
            .get_or_insert_with(|| Predictor::new(self.rules, dt, start));
        let input = predictor.input(self.velocity, self.receiver.ack());
        if let Ok(payload) = protocol::encode(&input) {
            let _ = endpoint.send(channels::MOVEMENT, payload);
        }
        let period = Duration::from_secs_f64(1.0 / f64::from(self.tick_hz.max(1)));
        self.next_move = Some(next_beat(at, period, now));
    }
}

/// Prints an inventory, one occupied slot a line.
/// `2 x item 5 (slot 3), 1 x item 7 (slot 0)`, or `nothing`.
fn describe_offer(offer: &[OfferedStack]) -> String {
    if offer.is_empty() {
        return "nothing".to_owned();
    }
    offer
        .iter()
        .map(|o| {
            format!(
                "{} x item {} (slot {})",
                o.stack.count, o.stack.item.0, o.slot
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_inventory(inventory: &InventorySnapshot) {
    let used = inventory.slots.iter().flatten().count();
    say!(
        "inventory v{}: {used} of {} slots used",
        inventory.version,
        inventory.slots.len()
    );
    for (slot, stack) in inventory.slots.iter().enumerate() {
        if let Some(stack) = stack {
            say!("  slot {slot}: {} x item {}", stack.count, stack.item.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use shared::protocol::inventory::{ItemId, ItemStack};

    use super::*;

    fn printed() -> Vec<String> {
        PRINTED.with(|printed| std::mem::take(&mut *printed.borrow_mut()))
    }

    fn receive<T: NetMessage>(player: &mut Player, message: &T) {
        let payload = protocol::encode(message).unwrap();
        player.on_message(channels::INVENTORY, &payload);
    }

    fn inventory(version: u64, apples: u32) -> InventorySnapshot {
        let mut slots = vec![None; 4];
        slots[0] = (apples > 0).then_some(ItemStack {
            item: ItemId(1),
            count: apples,
        });
        InventorySnapshot { version, slots }
    }

    /// A tick's replies leave before its updates: an update older than
    /// the reply printed before it is not shown as the inventory now.
    #[test]
    fn an_update_older_than_the_reply_before_it_is_not_shown_as_current() {
        let mut player = Player::new();
        let request = player.inventory.request(InventoryOp::List).unwrap();
        receive(
            &mut player,
            &InventoryReply {
                request_id: request.request_id,
                result: Ok(inventory(7, 0)),
                trade: None,
            },
        );
        assert!(printed().iter().any(|l| l.starts_with("inventory v7")));
        receive(
            &mut player,
            &InventoryUpdate {
                inventory: inventory(6, 3),
            },
        );
        let shown = printed();
        assert!(!shown.iter().any(|l| l.contains("v6")), "{shown:?}");
        // Nor one of the version just printed.
        receive(
            &mut player,
            &InventoryUpdate {
                inventory: inventory(7, 0),
            },
        );
        assert_eq!(printed(), Vec::<String>::new());
        // A newer one is.
        receive(
            &mut player,
            &InventoryUpdate {
                inventory: inventory(8, 2),
            },
        );
        assert!(printed().iter().any(|l| l.starts_with("inventory v8")));
    }

    /// A `/move` before the welcome was held to the default limit: the
    /// welcome's lower one applies to it, or every input is a violation.
    #[test]
    fn a_move_before_the_welcome_keeps_to_the_servers_limit() {
        let mut player = Player::new();
        player.velocity = Vec2::new(8.0, 0.0);
        let rules = MovementRules {
            max_speed: 3.0,
            ..MovementRules::default()
        };
        let welcome = Welcome {
            client_id: 5,
            tick_hz: 30,
            rules,
        };
        receive(&mut player, &welcome);
        assert!(
            player.velocity.length() <= 3.0 + 1e-4,
            "{}",
            player.velocity
        );
        assert!(player.velocity.x > 2.9, "{}", player.velocity);
        assert!(printed().iter().any(|l| l.contains("limit is 3 m/s")));
    }

    #[test]
    fn a_connect_timeout_names_the_address_the_token_is_for() {
        let hint = connect_timeout_hint("192.0.2.5:7777".parse().unwrap());
        assert!(hint.contains("public_addr"), "{hint}");
    }

    #[test]
    fn server_text_reaches_the_terminal_without_control_characters() {
        let shown = printable("hi\x1b[2J\x1b]0;owned\x07\u{9b}31m there\n");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.starts_with("hi") && shown.contains(" there"),
            "{shown:?}"
        );
        assert_eq!(printable("ünïcode ok"), "ünïcode ok");
    }

    #[test]
    fn commands_parse_like_the_help_says() {
        assert_eq!(
            parse_command("hello all").unwrap(),
            Some(Command::Say(ChatScope::Global, "hello all".into()))
        );
        assert_eq!(
            parse_command("/w bob hi there").unwrap(),
            Some(Command::Say(
                ChatScope::WhisperName("bob".into()),
                "hi there".into()
            ))
        );
        assert_eq!(
            parse_command("/w #42 hi").unwrap(),
            Some(Command::Say(ChatScope::WhisperId(42), "hi".into()))
        );
        assert_eq!(
            parse_command("/move 1 -2.5").unwrap(),
            Some(Command::Move(Vec2::new(1.0, -2.5)))
        );
        assert_eq!(parse_command("/near").unwrap(), Some(Command::Near));
        let pasted = "x".repeat(70_000);
        let error = parse_command(&pasted).unwrap_err();
        assert!(error.contains("70000 bytes"), "{error}");
        assert_eq!(
            parse_command("/near hi all").unwrap(),
            Some(Command::Say(ChatScope::Nearby, "hi all".into()))
        );
        assert_eq!(
            parse_command("/inv").unwrap(),
            Some(Command::Inventory(InventoryOp::List))
        );
        assert_eq!(
            parse_command("/pick").unwrap(),
            Some(Command::Inventory(InventoryOp::ListWorld))
        );
        assert_eq!(
            parse_command("/pick #12").unwrap(),
            Some(Command::Inventory(InventoryOp::PickUp { world_item: 12 }))
        );
        assert_eq!(
            parse_command("/drop 3").unwrap(),
            Some(Command::Inventory(InventoryOp::Drop { slot: 3, count: 1 }))
        );
        assert_eq!(
            parse_command("/give 42 0 5").unwrap(),
            Some(Command::Inventory(InventoryOp::Give {
                to: 42,
                slot: 0,
                count: 5
            }))
        );
        assert_eq!(
            parse_command("/trade 42 1").unwrap(),
            Some(Command::Inventory(InventoryOp::Offer {
                with: 42,
                offer: TradeOffer {
                    items: vec![(1, 1)]
                }
            }))
        );
        assert_eq!(
            parse_command("/trade accept 7 2").unwrap(),
            Some(Command::Inventory(InventoryOp::Accept {
                trade: 7,
                revision: 2
            }))
        );
        assert!(
            parse_command("/trade accept 7").is_err(),
            "the revision is needed"
        );
        assert_eq!(
            parse_command("/trade cancel 7").unwrap(),
            Some(Command::Inventory(InventoryOp::Cancel { trade: 7 }))
        );
        assert_eq!(parse_command("  ").unwrap(), None);
        assert_eq!(parse_command("/quit").unwrap(), Some(Command::Quit));
    }

    #[test]
    fn bad_commands_explain_themselves() {
        assert!(parse_command("/move 1").unwrap_err().contains("usage"));
        assert!(parse_command("/move nan 1").is_err());
        assert!(parse_command("/w bob").unwrap_err().contains("usage"));
        assert!(parse_command("/say").unwrap_err().contains("usage"));
        assert!(parse_command("/fly").unwrap_err().contains("unknown"));
        assert!(parse_command("/emote 15").is_ok());
        // The server ignores emotes it does not know: refused here, said.
        assert!(parse_command("/emote 16").unwrap_err().contains("0-15"));
        assert!(parse_command("/emote 300").is_err());
        assert!(
            parse_command("/drop")
                .unwrap_err()
                .contains("usage: /drop SLOT")
        );
        assert!(parse_command("/give bob 1").unwrap_err().contains("usage"));
        assert!(parse_command("/trade 42").unwrap_err().contains("usage"));
        assert!(parse_command("/drop 70000").is_err());
    }

    #[test]
    fn a_refused_request_is_retried_after_doubling_waits_then_given_up() {
        let mut retries = InventoryRetries::default();
        let t0 = Instant::now();
        let mut now = t0;
        let mut waits = Vec::new();
        while let Some(wait) = retries.refused(7, now) {
            assert!(
                retries
                    .due(now + wait - Duration::from_millis(1))
                    .is_empty()
            );
            now += wait;
            assert_eq!(retries.due(now), vec![7]);
            assert!(retries.due(now).is_empty(), "sent once per refusal");
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, vec![1, 2, 4, 8]);
        assert!(retries.waiting.is_empty(), "given up after five refusals");
        // An answer that is not a refusal ends the retries, and the count.
        retries.refused(8, t0);
        retries.answered(8);
        assert!(retries.due(now).is_empty());
        assert_eq!(retries.refused(8, t0), Some(INVENTORY_RETRY));
    }

    #[test]
    fn a_session_the_server_closed_exits_1_even_as_closed() {
        assert_eq!(exit_code(DisconnectReason::Closed, true), 0);
        assert_eq!(exit_code(DisconnectReason::Closed, false), 1);
        assert_eq!(exit_code(DisconnectReason::Kicked, false), 1);
        assert_eq!(exit_code(DisconnectReason::ServerShutdown, true), 1);
    }

    #[test]
    fn a_welcome_after_the_first_inputs_still_sets_the_rules() {
        let mut player = Player::new();
        player.predictor = Some(Predictor::new(player.rules, tick_dt(30), Vec2::ZERO));
        let rules = MovementRules {
            max_speed: 2.0,
            ..MovementRules::default()
        };
        let welcome = protocol::encode(&Welcome {
            client_id: 7,
            tick_hz: 10,
            rules,
        })
        .unwrap();
        player.on_message(channels::CONTROL, &welcome);
        let predictor = player.predictor.as_mut().unwrap();
        predictor.input(Vec2::new(7.0, 0.0), 0);
        // 2 m/s for a tenth of a second, not 7 m/s for a thirtieth.
        assert!(
            (predictor.position().x - 0.2).abs() < 1e-5,
            "{}",
            predictor.position()
        );
    }
}
