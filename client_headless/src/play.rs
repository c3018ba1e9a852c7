//! `client_headless play`: one interactive player in the terminal.
//!
//! A stdin thread hands typed lines over a bounded channel; the main loop
//! pumps the socket, prints what the server says and sends what the player
//! asks. Commands are listed by `/help`.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use glam::Vec2;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent};
use shared::io::{ClientSocket, unix_secs};
use shared::netcode::ConnectToken;
use shared::protocol::chat::{ChatKind, ChatLine, ChatRejected, ChatScope, ChatSend};
use shared::protocol::messages::{Emote, EmoteRequest, ServerNotice, Welcome};
use shared::protocol::movement::MoveInput;
use shared::protocol::{self, NetMessage, PROTOCOL_ID, channels};
use shared::transport::{ChannelId, DisconnectReason};

/// Lines typed ahead of the network loop; more wait in stdin.
const INPUT_QUEUE: usize = 64;
/// Longest the loop sleeps between socket pumps.
const IDLE: Duration = Duration::from_millis(5);
/// How long to wait for an answer to a chat line before saying the server
/// may not speak chat.
const CHAT_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

const HELP: &str = "\
commands:
  /say TEXT        chat to everyone (plain text without a slash does the same)
  /near TEXT       chat to players nearby
  /w NAME TEXT     whisper (NAME, or #ID for an account id)
  /move X Y        walk with velocity (X, Y) m/s; /stop to stand still
  /emote N         play emote N (0-255)
  /inv /pick /drop /give /trade   inventory (not supported by this server yet)
  /stats           connection statistics
  /quit            leave";

/// What a typed line asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Chat.
    Say(ChatScope, String),
    /// Set the walking velocity.
    Move(Vec2),
    /// Emote.
    Emote(u8),
    /// An inventory command (not in the protocol yet).
    Inventory(String),
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
        "near" => Command::Say(ChatScope::Nearby, text("TEXT")?),
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
                .map_err(|_| "usage: /emote N (0-255)".to_owned())?,
        ),
        "inv" | "pick" | "drop" | "give" | "trade" => Command::Inventory(verb.to_owned()),
        "stats" => Command::Stats,
        "help" | "?" => Command::Help,
        "quit" | "exit" => Command::Quit,
        _ => return Err(format!("unknown command /{verb}; /help lists them")),
    };
    Ok(Some(command))
}

/// Runs the interactive player until `/quit`, end of input or disconnect.
/// Returns the process exit code.
pub(crate) fn run(server: SocketAddr, token: &ConnectToken) -> Result<i32, String> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().map_err(|_| "bad bind address")?
    } else {
        "0.0.0.0:0".parse().map_err(|_| "bad bind address")?
    };
    let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
    endpoint
        .connect(token, Instant::now(), unix_secs())
        .map_err(|e| format!("cannot connect: {e:?}"))?;
    let mut socket =
        ClientSocket::bind(bind, endpoint).map_err(|e| format!("cannot open a socket: {e}"))?;
    println!("connecting to {server} ... (/help for commands)");
    let input = spawn_stdin();
    let mut player = Player::default();
    let mut stdin_open = true;
    loop {
        let now = Instant::now();
        if let Err(error) = socket.pump(now) {
            return Err(format!("socket error: {error}"));
        }
        while let Some(event) = socket.endpoint.poll_event() {
            if let Some(reason) = player.on_event(event) {
                println!("disconnected: {reason}");
                return Ok(if reason == DisconnectReason::Closed {
                    0
                } else {
                    1
                });
            }
        }
        player.tick(now, &mut socket.endpoint);
        while stdin_open {
            match input.try_recv() {
                Ok(line) => match parse_command(&line) {
                    Ok(Some(Command::Quit)) => {
                        socket.endpoint.disconnect(now, DisconnectReason::Closed);
                        stdin_open = false;
                    }
                    Ok(Some(command)) => player.run(now, command, &mut socket.endpoint),
                    Ok(None) => {}
                    Err(message) => println!("{message}"),
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    socket.endpoint.disconnect(now, DisconnectReason::Closed);
                    stdin_open = false;
                }
            }
        }
        socket.flush(now);
        let wake = socket
            .endpoint
            .poll_timeout()
            .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()))
            .min(IDLE);
        std::thread::sleep(wake);
    }
}

fn spawn_stdin() -> Receiver<String> {
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    rx
}

#[derive(Default)]
struct Player {
    account: Option<u64>,
    tick_hz: u16,
    saw_snapshot: bool,
    velocity: Vec2,
    move_seq: u32,
    next_move: Option<Instant>,
    chat_unanswered_since: Option<Instant>,
    chat_answered: bool,
}

impl Player {
    /// Prints an event; `Some(reason)` when the session ended.
    fn on_event(&mut self, event: ClientEndpointEvent<'_>) -> Option<DisconnectReason> {
        match event {
            ClientEndpointEvent::Connected { client_index } => {
                println!("connected (slot {client_index})");
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
            if !self.saw_snapshot {
                println!("the server sends world snapshots: /move is available");
            }
            self.saw_snapshot = true;
            return;
        }
        match protocol::message_id(payload) {
            Some(Welcome::ID) => {
                if let Ok(w) = protocol::decode::<Welcome>(payload) {
                    println!(
                        "welcome! you are account {} (server ticks at {} Hz)",
                        w.client_id, w.tick_hz
                    );
                    self.account = Some(w.client_id);
                    self.tick_hz = w.tick_hz;
                }
            }
            Some(ServerNotice::ID) => {
                if let Ok(n) = protocol::decode::<ServerNotice>(payload) {
                    println!("[server] {}", n.text);
                }
            }
            Some(Emote::ID) => {
                if let Ok(e) = protocol::decode::<Emote>(payload) {
                    println!("* {} plays emote {}", e.from, e.emote);
                }
            }
            Some(ChatLine::ID) => {
                if let Ok(line) = protocol::decode::<ChatLine>(payload) {
                    self.chat_answered = true;
                    self.chat_unanswered_since = None;
                    let kind = match line.kind {
                        ChatKind::Global => "",
                        ChatKind::Nearby => "(nearby) ",
                        ChatKind::Whisper => "(whisper) ",
                        ChatKind::System => "(system) ",
                    };
                    println!("{kind}<{}> {}", line.from_name, line.text);
                }
            }
            Some(ChatRejected::ID) => {
                if let Ok(r) = protocol::decode::<ChatRejected>(payload) {
                    self.chat_answered = true;
                    self.chat_unanswered_since = None;
                    println!("chat refused: {}", r.message);
                }
            }
            other => println!(
                "(message {other:?} on channel {} not understood by this client)",
                channel.0
            ),
        }
    }

    fn run(&mut self, now: Instant, command: Command, endpoint: &mut ClientEndpoint) {
        if !endpoint.is_connected() && !matches!(command, Command::Help | Command::Stats) {
            println!("not connected yet");
            return;
        }
        match command {
            Command::Say(scope, text) => {
                if let Ok(payload) = protocol::encode(&ChatSend { scope, text })
                    && let Err(e) = endpoint.send(channels::CHAT, payload)
                {
                    println!("chat not sent: {e}");
                } else if !self.chat_answered {
                    self.chat_unanswered_since.get_or_insert(now);
                }
            }
            Command::Move(velocity) => {
                if !self.saw_snapshot {
                    println!(
                        "movement is not supported by this server yet (it sends no snapshots)"
                    );
                    return;
                }
                self.velocity = velocity;
                self.next_move = Some(now);
                println!("moving at ({}, {}) m/s", velocity.x, velocity.y);
            }
            Command::Emote(emote) => {
                if let Ok(payload) = protocol::encode(&EmoteRequest { emote }) {
                    let _ = endpoint.send(channels::EVENTS, payload);
                }
            }
            Command::Inventory(verb) => {
                println!("/{verb}: inventory is not supported by this server yet");
            }
            Command::Stats => match endpoint.connection_stats() {
                Some(s) => println!(
                    "rtt {:.1} ms, loss {:.1}%, sent {} packets / {} B, received {} packets / {} B, resent {}",
                    s.rtt.as_secs_f64() * 1000.0,
                    s.packet_loss * 100.0,
                    s.packets_sent,
                    s.bytes_sent,
                    s.packets_received,
                    s.bytes_received,
                    s.resent
                ),
                None => println!("not connected"),
            },
            Command::Help => println!("{HELP}"),
            Command::Quit => {}
        }
    }

    /// Sends movement input at the server's tick rate while walking.
    fn tick(&mut self, now: Instant, endpoint: &mut ClientEndpoint) {
        if let Some(since) = self.chat_unanswered_since
            && now.duration_since(since) > CHAT_ANSWER_TIMEOUT
        {
            println!("no answer to your chat line: this server may not support chat yet");
            self.chat_unanswered_since = None;
        }
        let Some(at) = self.next_move else { return };
        if at > now || !endpoint.is_connected() {
            return;
        }
        self.move_seq = self.move_seq.wrapping_add(1);
        if let Ok(payload) = protocol::encode(&MoveInput {
            seq: self.move_seq,
            velocity: self.velocity,
            ack_snapshot: 0,
        }) {
            let _ = endpoint.send(channels::MOVEMENT, payload);
        }
        let period = Duration::from_secs_f64(1.0 / f64::from(self.tick_hz.max(1)));
        // Keep sending while walking; one last zero input after /stop.
        self.next_move = (self.velocity != Vec2::ZERO).then_some(now + period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            parse_command("/trade bob").unwrap(),
            Some(Command::Inventory("trade".into()))
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
        assert!(parse_command("/emote 300").is_err());
    }
}
