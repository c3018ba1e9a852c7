//! The chat rules, as specifications of [`ChatRoom`].

use glam::Vec2;
use shared::protocol::chat::{ChatKind, ChatLine, ChatRejectReason, ChatScope};

use super::*;

/// Chat whose tick's fan-out bound is the smallest allowed and whose
/// lines may be long: one long line to 50 members spends a tick.
fn spent_soon() -> ChatConfig {
    ChatConfig {
        max_fanout_bytes_per_tick: ChatConfig::MIN_FANOUT_BYTES_PER_TICK,
        max_chars: 4_096,
        ..ChatConfig::default()
    }
}

fn room_with(accounts: &[u64], config: ChatConfig) -> ChatRoom {
    let mut room = ChatRoom::new(config);
    let mut out = Vec::new();
    for &a in accounts {
        room.join(a, format!("player-{a}"), &mut out);
    }
    room
}

fn lines_for(out: &[ChatOutput], account: u64) -> Vec<ChatLine> {
    out.iter()
        .filter_map(ChatOutput::line)
        .filter(|(to, _)| *to == account)
        .map(|(_, line)| line)
        .collect()
}

fn rejections(out: &[ChatOutput]) -> Vec<ChatRejectReason> {
    out.iter()
        .filter_map(|o| match o {
            ChatOutput::Rejected { rejected, .. } => Some(rejected.reason),
            _ => None,
        })
        .collect()
}

fn nowhere(_: u64) -> Option<Vec2> {
    None
}

/// The one answer `account` got to its send `client_ref`: its own copy of
/// the line or the refusal. Panics unless there is exactly one.
fn the_answer(
    out: &[ChatOutput],
    account: u64,
    client_ref: u32,
) -> Result<ChatLine, ChatRejectReason> {
    let mut answers: Vec<_> = out
        .iter()
        .filter_map(|o| match (o, o.line()) {
            (_, Some((to, line))) if to == account && line.reply_to == Some(client_ref) => {
                Some(Ok(line))
            }
            (ChatOutput::Rejected { to, rejected }, _)
                if *to == account && rejected.client_ref == client_ref =>
            {
                Some(Err(rejected.reason))
            }
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "answers to send {client_ref}: {out:?}");
    answers.remove(0)
}

/// Only the speaker's own copies carry `reply_to`.
fn assert_reply_to_only_on_own_copies(out: &[ChatOutput]) {
    for (to, line) in out.iter().filter_map(ChatOutput::line) {
        assert_eq!(
            line.reply_to.is_some(),
            line.from == Some(to),
            "line to {to}: {line:?}"
        );
    }
}

/// Combining marks stack into one glyph that covers the lines around it
/// ("Zalgo"): a base character keeps at most four, and marks with no base
/// (which would attach to the name before the line) are dropped.
#[test]
fn stacks_of_combining_marks_are_cut() {
    let zalgo = format!("a{}b", "\u{336}\u{489}".repeat(100));
    assert_eq!(
        clean_text(&zalgo, 256).as_deref(),
        Ok("a\u{336}\u{489}\u{336}\u{489}b")
    );
    assert_eq!(
        clean_text("\u{301}\u{301}\u{301}", 256),
        Err(ChatRejectReason::Empty)
    );
    assert_eq!(clean_text("\u{301}hi", 256).as_deref(), Ok("hi"));
    // Neither a space (trimmed away) nor a joiner is a base.
    for marks_alone in [" \u{301}\u{301}", "\u{200D}\u{301}", "hi \u{301}"] {
        assert_eq!(
            clean_text(marks_alone, 256).map(|t| t.chars().filter(|&c| c == '\u{301}').count()),
            if marks_alone.starts_with("hi") {
                Ok(0)
            } else {
                Err(ChatRejectReason::Empty)
            },
            "{marks_alone:?}"
        );
    }
    // Joiners between marks do not start a new stack.
    let joined = format!("a{}", "\u{336}\u{336}\u{336}\u{336}\u{34F}".repeat(50));
    let kept = clean_text(&joined, 256).unwrap();
    assert_eq!(kept.chars().filter(|&c| c == '\u{336}').count(), 4);
    // Two stacked diacritics (Vietnamese, decomposed) stay.
    let viet = "Vie\u{302}\u{323}t";
    assert_eq!(clean_text(viet, 256).as_deref(), Ok(viet));
    // Every script's marks count: a Thai tower is cut too, a mark of
    // another script does not start a new stack, and marks of any script
    // with no base go.
    let thai_tower = format!("\u{E01}{}", "\u{E49}".repeat(255));
    assert_eq!(
        clean_text(&thai_tower, 256).map(|t| t.chars().count()),
        Ok(5)
    );
    let mixed = format!("a{}", "\u{301}\u{301}\u{301}\u{301}\u{E49}".repeat(50));
    assert_eq!(
        clean_text(&mixed, 256).map(|t| t.chars().count()),
        Ok(5),
        "one stack of four on the a"
    );
    for marks_alone in ["\u{E49}\u{E49}", "\u{5B4}\u{5B8}", "\u{94D}"] {
        assert_eq!(
            clean_text(marks_alone, 256),
            Err(ChatRejectReason::Empty),
            "{marks_alone:?}"
        );
    }
    // Words of scripts with marks stay as they are.
    for word in [
        "\u{E17}\u{E35}\u{E48}\u{E19}\u{E35}\u{E48}",
        "\u{928}\u{92E}\u{938}\u{94D}\u{924}\u{947}",
        "\u{5E9}\u{5C1}\u{5B8}\u{5DC}\u{5D5}\u{5B9}\u{5DD}",
    ] {
        assert_eq!(clean_text(word, 256).as_deref(), Ok(word), "{word:?}");
    }
}

#[test]
fn text_is_stripped_of_control_characters_trimmed_and_length_checked() {
    assert_eq!(
        clean_text("  hi\u{7}\tthere\n ", 256).as_deref(),
        Ok("hithere")
    );
    assert_eq!(clean_text(" \n\t\u{0} ", 256), Err(ChatRejectReason::Empty));
    assert_eq!(
        clean_text(&"é".repeat(256), 256).map(|s| s.chars().count()),
        Ok(256)
    );
    assert_eq!(
        clean_text(&"é".repeat(257), 256),
        Err(ChatRejectReason::TooLong)
    );
}

#[test]
fn text_that_would_pass_for_another_line_or_for_nothing_is_cleaned() {
    // A separator drawn as a new line (a fake server line), a
    // right-to-left override, zero-width spaces and a byte-order mark.
    assert_eq!(
        clean_text("gg\u{2028}server: you are banned\u{202E}!", 256).as_deref(),
        Ok("ggserver: you are banned!")
    );
    assert_eq!(
        clean_text("a\u{200B}b\u{FEFF}c\u{2029}d\u{2066}e", 256).as_deref(),
        Ok("abcde")
    );
    assert_eq!(clean_text("a\u{2065}b", 256).as_deref(), Ok("ab"));
    for nothing in [
        "\u{200B}",
        "\u{3164}\u{2800}",
        " \u{200D}\u{FE0F} ",
        "\u{E0041}",
        "\u{17B4}",
        "\u{17B5} ",
        "\u{34F}\u{180B}",
        "\u{180C}\u{180D}\u{180F}",
        // Default ignorable, not assigned yet: drawn as nothing already.
        "\u{2065}",
        "\u{FFF0}\u{FFF8}",
        "\u{E0000}\u{E0002}",
        "\u{E0080}",
        "\u{E01F0}\u{E0FFF}",
    ] {
        assert_eq!(
            clean_text(nothing, 256),
            Err(ChatRejectReason::Empty),
            "{nothing:?}"
        );
    }
    // Emoji composed with the zero-width joiner and variation selectors
    // stay whole.
    let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467} \u{2764}\u{FE0F}";
    assert_eq!(clean_text(family, 256).as_deref(), Ok(family));
}

#[test]
fn a_whisper_reaches_only_its_target_and_the_senders_copy() {
    let mut room = room_with(&[1, 2, 3], ChatConfig::default());
    let mut out = Vec::new();
    assert!(room.say(
        1,
        1,
        &ChatScope::WhisperName("player-2".into()),
        "psst",
        nowhere,
        &mut out
    ));
    assert_eq!(lines_for(&out, 2).len(), 1);
    assert_eq!(lines_for(&out, 2)[0].kind, ChatKind::Whisper);
    assert_eq!(lines_for(&out, 2)[0].from, Some(1));
    assert_eq!(lines_for(&out, 1).len(), 1, "the sender's own copy");
    assert!(lines_for(&out, 3).is_empty(), "a bystander hears nothing");

    let mut out = Vec::new();
    room.say(2, 2, &ChatScope::WhisperId(3), "hey", nowhere, &mut out);
    assert!(lines_for(&out, 1).is_empty());
    assert_eq!(lines_for(&out, 3)[0].text, "hey");

    let mut out = Vec::new();
    room.say(
        2,
        3,
        &ChatScope::WhisperId(99),
        "anyone?",
        nowhere,
        &mut out,
    );
    assert_eq!(rejections(&out), vec![ChatRejectReason::UnknownRecipient]);
}

#[test]
fn global_reaches_everyone_and_nearby_only_those_within_the_radius() {
    let mut room = room_with(&[1, 2, 3, 4], ChatConfig::default());
    let mut out = Vec::new();
    room.say(1, 4, &ChatScope::Global, "hello all", nowhere, &mut out);
    for a in 1..=4 {
        assert_eq!(lines_for(&out, a).len(), 1);
    }
    let position = |a: u64| match a {
        1 => Some(Vec2::new(0.0, 0.0)),
        2 => Some(Vec2::new(30.0, 40.0)), // exactly 50 m
        3 => Some(Vec2::new(50.0, 1.0)),
        _ => None,
    };
    let mut out = Vec::new();
    room.say(1, 5, &ChatScope::Nearby, "near?", position, &mut out);
    assert_eq!(lines_for(&out, 1).len(), 1);
    assert_eq!(lines_for(&out, 2).len(), 1);
    assert!(lines_for(&out, 3).is_empty());
    assert!(lines_for(&out, 4).is_empty());
}

fn announcing() -> ChatConfig {
    ChatConfig {
        announce_sessions: true,
        ..ChatConfig::default()
    }
}

/// Announcements cost the player's chat tokens: a player reconnecting
/// every tick sends everyone no more lines than chatting would (each
/// session's join and leave was a line to everyone, at 30 a second).
#[test]
fn reconnecting_announces_no_more_lines_than_chatting_would() {
    let config = announcing();
    let (burst, tick_hz) = (config.burst, config.tick_hz);
    let mut room = room_with(&[1], config);
    let mut out = Vec::new();
    for _ in 0..tick_hz / 2 {
        room.join(7, "player-7".into(), &mut out);
        room.tick(1);
        room.leave(7, &mut out);
        room.tick(1);
    }
    let heard = lines_for(&out, 1)
        .iter()
        .filter(|l| l.text.starts_with("player-7"))
        .count();
    // A full bucket, and a second's refill at 1 a second.
    assert!(
        heard <= burst as usize + 1,
        "{heard} announcements in a second (burst {burst})"
    );
    assert!(heard >= 2, "its first join and leave are announced");
    // And the bucket spent is the one its lines then draw on.
    room.join(7, "player-7".into(), &mut out);
    let mut out = Vec::new();
    room.say(7, 1, &ChatScope::Global, "hi", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::RateLimited]);
}

/// A muted player's joins and leaves are not announced: chatting, it
/// would say nothing, and its bucket refills while it waits (each
/// reconnect was a line to everyone for the whole mute).
#[test]
fn a_muted_player_reconnecting_announces_nothing() {
    let config = ChatConfig {
        burst: 1,
        mute_after_offences: 2,
        mute_secs: 30,
        tick_hz: 10,
        ..announcing()
    };
    let mut room = room_with(&[1, 7], config);
    let mut out = Vec::new();
    for client_ref in 0..3 {
        room.say(7, client_ref, &ChatScope::Global, "spam", nowhere, &mut out);
    }
    assert!(
        rejections(&out).contains(&ChatRejectReason::Muted),
        "{out:?}"
    );
    let announced = |out: &[ChatOutput]| {
        lines_for(out, 1)
            .iter()
            .filter(|l| l.text.starts_with("player-7"))
            .count()
    };
    // 20 s of the 30 s mute, reconnecting every tick.
    let mut out = Vec::new();
    for _ in 0..100 {
        room.leave(7, &mut out);
        room.tick(1);
        room.join(7, "player-7".into(), &mut out);
        room.tick(1);
    }
    assert_eq!(announced(&out), 0);
    // Once the mute is over, its next reconnect is announced again.
    room.tick(100);
    let mut out = Vec::new();
    room.leave(7, &mut out);
    room.join(7, "player-7".into(), &mut out);
    assert!(announced(&out) >= 1, "{out:?}");
}

#[test]
fn sequence_numbers_count_every_line_per_recipient_without_gaps() {
    let mut room = room_with(&[1], announcing());
    let mut out = Vec::new();
    room.join(2, "player-2".into(), &mut out);
    room.say(1, 6, &ChatScope::Global, "a", nowhere, &mut out);
    room.say(2, 7, &ChatScope::WhisperId(1), "b", nowhere, &mut out);
    room.say(1, 8, &ChatScope::Global, "", nowhere, &mut out); // refused: no line
    room.system("maintenance soon", &mut out);
    let seqs = |a| lines_for(&out, a).iter().map(|l| l.seq).collect::<Vec<_>>();
    // Player 1 saw its own join before this batch: seq 1 went there.
    assert_eq!(seqs(1), vec![2, 3, 4, 5]);
    assert_eq!(seqs(2), vec![1, 2, 3, 4]);
}

#[test]
fn a_burst_passes_then_the_rate_limit_refuses_then_tokens_come_back() {
    let config = ChatConfig {
        burst: 3,
        rate_per_sec: 1.0,
        tick_hz: 10,
        mute_after_offences: 100,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1], config);
    let mut out = Vec::new();
    for _ in 0..3 {
        room.say(1, 9, &ChatScope::Global, "spam", nowhere, &mut out);
    }
    assert!(rejections(&out).is_empty());
    let mut out = Vec::new();
    room.say(1, 10, &ChatScope::Global, "spam", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::RateLimited]);
    for _ in 0..9 {
        room.tick(1);
    }
    let mut out = Vec::new();
    room.say(1, 11, &ChatScope::Global, "spam", nowhere, &mut out);
    assert_eq!(
        rejections(&out),
        vec![ChatRejectReason::RateLimited],
        "0.9 s is not 1 s"
    );
    room.tick(1);
    let mut out = Vec::new();
    room.say(1, 12, &ChatScope::Global, "ok now", nowhere, &mut out);
    assert!(rejections(&out).is_empty());
    assert_eq!(lines_for(&out, 1).len(), 1);
}

#[test]
fn repeated_offenders_are_muted_then_kicked() {
    let config = ChatConfig {
        burst: 1,
        rate_per_sec: 0.0,
        mute_after_offences: 2,
        mute_secs: 1,
        kick_after_mutes: 1,
        tick_hz: 10,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1, 2], config);
    let mut out = Vec::new();
    room.say(1, 13, &ChatScope::Global, "one", nowhere, &mut out);
    let mut out = Vec::new();
    room.say(1, 14, &ChatScope::Global, "two", nowhere, &mut out);
    room.say(1, 15, &ChatScope::Global, "three", nowhere, &mut out);
    assert_eq!(
        rejections(&out),
        vec![ChatRejectReason::RateLimited, ChatRejectReason::Muted]
    );
    let mut out = Vec::new();
    room.say(1, 16, &ChatScope::Global, "muted", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::Muted]);
    let ChatOutput::Rejected { rejected, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(
        rejected.message.contains("muted for 1 more s"),
        "how long, said: {}",
        rejected.message
    );
    assert!(lines_for(&out, 2).is_empty());
    room.say(1, 17, &ChatScope::Global, "again", nowhere, &mut out);
    assert!(out.contains(&ChatOutput::Kick { account: 1 }));
    let mut out = Vec::new();
    room.say(1, 18, &ChatScope::Global, "after kick", nowhere, &mut out);
    // Answered and never delivered; within the kick's period, nothing more.
    assert_eq!(the_answer(&out, 1, 18), Err(ChatRejectReason::Kicked));
    assert!(lines_for(&out, 2).is_empty());
    assert_eq!(out.len(), 1, "{out:?}");
    // A period later the disconnect is asked for again (the first may
    // have been lost), once, and not as a new kick.
    room.tick(1);
    let mut out = Vec::new();
    for client_ref in 19..29 {
        room.say(1, client_ref, &ChatScope::Global, "more", nowhere, &mut out);
    }
    assert_eq!(rejections(&out), [ChatRejectReason::Kicked; 10]);
    let kicks: Vec<&ChatOutput> = out
        .iter()
        .filter(|o| matches!(o, ChatOutput::Kick { .. } | ChatOutput::KickAgain { .. }))
        .collect();
    assert_eq!(kicks, [&ChatOutput::KickAgain { account: 1 }]);
}

/// The mute's message says what the next flood brings, as the config
/// has it: another mute, or the disconnect; and a kick with no mute before
/// it does not claim one.
#[test]
fn mute_and_kick_messages_say_what_the_config_does() {
    let message = |out: &[ChatOutput], reason| {
        out.iter()
            .find_map(|o| match o {
                ChatOutput::Rejected { rejected, .. } if rejected.reason == reason => {
                    Some(rejected.message.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {reason:?} in {out:?}"))
    };
    let flood = |kick_after_mutes, mute_secs| {
        let config = ChatConfig {
            burst: 1,
            rate_per_sec: 0.0,
            mute_after_offences: 2,
            mute_secs,
            kick_after_mutes,
            tick_hz: 10,
            ..ChatConfig::default()
        };
        let mut room = room_with(&[1], config);
        let mut out = Vec::new();
        for client_ref in 0..3 {
            room.say(1, client_ref, &ChatScope::Global, "spam", nowhere, &mut out);
        }
        (room, out)
    };
    // The default: two mutes, then the kick.
    let (mut room, out) = flood(2, 1);
    let first = message(&out, ChatRejectReason::Muted);
    assert!(first.contains("one more mute"), "{first}");
    assert!(!first.contains("will be disconnected"), "{first}");
    room.tick(10);
    let mut out = Vec::new();
    for client_ref in 3..5 {
        room.say(1, client_ref, &ChatScope::Global, "spam", nowhere, &mut out);
    }
    let second = message(&out, ChatRejectReason::Muted);
    assert!(
        second.contains("again and you will be disconnected"),
        "{second}"
    );
    let (_, out) = flood(3, 1);
    let first = message(&out, ChatRejectReason::Muted);
    assert!(first.contains("2 more mutes"), "{first}");
    // No mutes: the first would-be mute is the kick.
    let (_, out) = flood(0, 1);
    let kicked = message(&out, ChatRejectReason::Kicked);
    assert!(!kicked.contains("muted"), "{kicked}");
}

#[test]
fn a_whisper_by_name_follows_joins_leaves_and_renames() {
    let mut room = room_with(&[1, 2, 3], ChatConfig::default());
    let mut out = Vec::new();
    room.leave(2, &mut out);
    room.join(3, "renamed".into(), &mut out);
    for (client_ref, name) in [(1, "player-2"), (2, "player-3"), (3, "renamed")] {
        room.say(
            1,
            client_ref,
            &ChatScope::WhisperName(name.into()),
            "psst",
            nowhere,
            &mut out,
        );
    }
    assert_eq!(
        the_answer(&out, 1, 1),
        Err(ChatRejectReason::UnknownRecipient)
    );
    assert_eq!(
        the_answer(&out, 1, 2),
        Err(ChatRejectReason::UnknownRecipient)
    );
    assert!(the_answer(&out, 1, 3).is_ok());
    assert_eq!(lines_for(&out, 3).len(), 1, "the renamed member hears it");

    room.join(2, "player-2".into(), &mut out);
    let mut out = Vec::new();
    room.say(
        1,
        4,
        &ChatScope::WhisperName("player-2".into()),
        "back?",
        nowhere,
        &mut out,
    );
    assert_eq!(
        lines_for(&out, 2).len(),
        1,
        "a member who came back hears it"
    );
}

#[test]
fn nothing_is_accepted_outside_a_session() {
    let mut room = room_with(&[1], ChatConfig::default());
    let mut out = Vec::new();
    assert!(!room.say(7, 19, &ChatScope::Global, "hi", nowhere, &mut out));
    assert!(out.is_empty());
    room.leave(1, &mut out);
    assert!(!room.say(1, 20, &ChatScope::Global, "hi", nowhere, &mut out));
}

#[test]
fn joins_leaves_and_admin_lines_are_system_lines() {
    let mut room = room_with(&[1], announcing());
    let mut out = Vec::new();
    room.join(2, "player-2".into(), &mut out);
    room.system("restart at noon", &mut out);
    room.leave(2, &mut out);
    let lines = lines_for(&out, 1);
    let texts: Vec<_> = lines
        .iter()
        .map(|l| (l.kind, l.from_name.as_str(), l.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![
            (ChatKind::System, SYSTEM_NAME, "player-2 joined"),
            (ChatKind::System, SYSTEM_NAME, "restart at noon"),
            (ChatKind::System, SYSTEM_NAME, "player-2 left"),
        ]
    );
}

#[test]
fn sessions_are_not_announced_by_default() {
    let mut room = room_with(&[1], ChatConfig::default());
    let mut out = Vec::new();
    room.join(2, "player-2".into(), &mut out);
    room.leave(2, &mut out);
    assert!(out.is_empty());
}

/// The chat plugin in an app of its own, each tick run by hand, with
/// sessions, sends and leaves written as the network plugin writes them.
struct PluginApp(App);

/// Session `session` of `account`, in slot `slot`.
fn client_id(account: u64, session: u64, slot: u32) -> shared::io::ClientId {
    shared::io::ClientId {
        slot: shared::netcode::ClientIndex::from_slot(slot),
        account,
        session,
    }
}

impl PluginApp {
    fn new(config: Option<ChatConfig>) -> Self {
        let mut app = App::new();
        app.add_plugins(ChatPlugin { config })
            .init_resource::<crate::net::DepartedPositions>();
        Self(app)
    }

    /// `client`'s session begins, its player entity standing at `at`.
    fn join(&mut self, client: shared::io::ClientId, at: Vec2) -> Entity {
        let entity = self.0.world_mut().spawn(Position(at)).id();
        (self.0.world_mut()).write_message(crate::net::ClientConnected { client, entity });
        entity
    }

    fn send(
        &mut self,
        client: shared::io::ClientId,
        client_ref: u32,
        scope: ChatScope,
        text: &str,
    ) {
        self.0.world_mut().write_message(crate::net::FromClient {
            client,
            message: shared::protocol::chat::ChatSend {
                client_ref,
                scope,
                text: text.into(),
            },
        });
    }

    /// `client`'s session ends, and its entity is gone; where it stood is
    /// kept for the tick, as the session code does.
    fn leave(&mut self, client: shared::io::ClientId, entity: Entity) {
        let world = self.0.world_mut();
        if let Some(position) = world.get::<Position>(entity).copied() {
            (world.resource_mut::<crate::net::DepartedPositions>().0)
                .insert(client.account, position.0);
        }
        world.write_message(crate::net::ClientDisconnected {
            client,
            reason: shared::transport::DisconnectReason::Closed,
        });
        world.despawn(entity);
    }

    fn tick(&mut self) {
        self.0.world_mut().run_schedule(FixedUpdate);
    }

    /// The net commands chat has sent so far.
    fn commands(&self) -> &[shared::io::NetCommand] {
        self.0.world().resource::<Outbox>().commands()
    }

    /// A counter's value on the metrics page.
    fn counter(&self, name: &str) -> Option<f64> {
        let mut text = String::new();
        self.0
            .world()
            .resource::<Metrics>()
            .registry()
            .render(&mut text);
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }
}

/// The console's `say` reaches every member in a tick whose fan-out
/// bound players' lines have spent: it was left out then (a warning on
/// stderr), while the console had answered `saying: ...`, and restart
/// notices went missing when the server was busiest.
#[test]
fn an_admin_line_goes_out_in_a_spent_tick() {
    use shared::io::NetCommand;
    use shared::protocol::{self, channels};

    let mut app = PluginApp::new(Some(spent_soon()));
    let members: Vec<_> = (1..=50).map(|a| client_id(a, 1, a as u32)).collect();
    for &member in &members {
        app.join(member, Vec2::ZERO);
    }
    app.tick();
    let sent_before = app.commands().len();
    app.send(members[0], 1, ChatScope::Global, &"x".repeat(1_500));
    app.0.world_mut().write_message(AdminSay {
        text: "restart in 5 minutes".into(),
    });
    app.tick();
    let told = app.commands()[sent_before..]
        .iter()
        .filter(|command| match command {
            NetCommand::Send {
                channel, payload, ..
            } if *channel == channels::CHAT => {
                protocol::decode::<ChatLine>(payload).is_ok_and(|line| {
                    line.kind == ChatKind::System && line.text == "restart in 5 minutes"
                })
            }
            _ => false,
        })
        .count();
    assert_eq!(told, members.len());
}

#[test]
fn the_plugin_routes_admin_lines_to_its_members() {
    use shared::io::{ClientId, NetCommand};
    use shared::protocol::{self, channels};

    let mut app = PluginApp::new(None);
    let client = client_id(1, 1, 0);
    app.join(client, Vec2::ZERO);
    app.tick();
    app.0
        .world_mut()
        .write_message(AdminSay { text: "hi".into() });
    app.tick();
    let lines: Vec<(ClientId, ChatLine)> = app
        .commands()
        .iter()
        .map(|command| match command {
            NetCommand::Send {
                client,
                channel,
                payload,
            } if *channel == channels::CHAT => (
                *client,
                protocol::decode::<ChatLine>(payload).expect("a chat line"),
            ),
            other => panic!("not a chat line: {other:?}"),
        })
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let (to, line) = &lines[0];
    assert_eq!(*to, client);
    assert_eq!((line.kind, line.text.as_str()), (ChatKind::System, "hi"));
}

/// A nearby line a player says in the tick it leaves is heard around
/// where it stood, though its entity is gone by then.
#[test]
fn a_nearby_line_said_as_its_speaker_leaves_is_heard_where_it_stood() {
    let mut app = PluginApp::new(None);
    let (a, b) = (client_id(1, 1, 0), client_id(2, 2, 1));
    let ea = app.join(a, Vec2::ZERO);
    app.join(b, Vec2::new(5.0, 0.0));
    app.tick();
    let before = app.commands().len();
    app.send(a, 1, ChatScope::Nearby, "bye");
    app.leave(a, ea);
    app.tick();
    let sent = app.commands().len() - before;
    assert_eq!(sent, 2, "the speaker's copy and its neighbour's");
}

/// A session that begins and ends in one tick still says what it sent
/// (its messages come before its end): they were counted as sent outside
/// any session and said to no one.
#[test]
fn a_session_that_joins_and_leaves_in_one_tick_says_its_line() {
    let mut app = PluginApp::new(None);
    app.join(client_id(1, 1, 0), Vec2::ZERO);
    app.join(client_id(2, 2, 1), Vec2::ZERO);
    app.tick();
    let before = app.commands().len();
    let brief = client_id(3, 3, 2);
    let entity = app.join(brief, Vec2::ZERO);
    app.send(brief, 1, ChatScope::Global, "hello and goodbye");
    app.leave(brief, entity);
    app.tick();
    let sent = app.commands().len() - before;
    assert_eq!(sent, 3, "the two players' copies and the speaker's own");
    assert_eq!(app.counter("chat_outside_session_total"), Some(0.0));
}

/// A whisper to a player whose session ends in the tick it arrives goes
/// to the player's next session if it came back in that tick, and is
/// refused as to no one online if not: it was numbered for the ended
/// session and confirmed to its sender (its own copy), and reached no one.
#[test]
fn a_whisper_to_a_player_leaving_this_tick_reaches_its_next_session_or_is_refused() {
    use bevy_ecs::message::Messages;
    use shared::io::NetCommand;
    use shared::protocol::chat::ChatRejected;

    let (a, b, back) = (client_id(1, 1, 0), client_id(2, 2, 1), client_id(2, 3, 1));
    for comes_back in [false, true] {
        let mut app = PluginApp::new(None);
        app.join(a, Vec2::ZERO);
        let eb = app.join(b, Vec2::ZERO);
        app.tick();
        let before = app.commands().len();
        app.send(a, 9, ChatScope::WhisperId(2), "psst");
        app.leave(b, eb);
        if comes_back {
            app.join(back, Vec2::ZERO);
        }
        app.tick();
        let refused: Vec<_> = (app.0.world())
            .resource::<Messages<crate::net::ToClient<ChatRejected>>>()
            .iter_current_update_messages()
            .map(|m| m.message.reason)
            .collect();
        let to: Vec<_> = app.commands()[before..]
            .iter()
            .filter_map(|c| match c {
                NetCommand::Send { client, .. } => Some(*client),
                _ => None,
            })
            .collect();
        if comes_back {
            assert_eq!((to, refused), (vec![a, back], vec![]));
        } else {
            assert_eq!(
                (to, refused),
                (vec![], vec![ChatRejectReason::UnknownRecipient])
            );
        }
    }
}

/// A flooder that goes on sending after its kick is kicked once: one
/// counted kick, one log line, and one disconnect a tick (each send
/// after the kick made all three, up to 2,000 a second).
#[test]
fn sends_after_a_kick_are_not_kicks_each() {
    use shared::io::NetCommand;
    use shared::transport::DisconnectReason;

    let mut app = PluginApp::new(Some(ChatConfig {
        burst: 1,
        rate_per_sec: 0.0,
        mute_after_offences: 1,
        kick_after_mutes: 0,
        ..ChatConfig::default()
    }));
    let flooder = client_id(1, 1, 0);
    app.join(flooder, Vec2::ZERO);
    app.tick();
    let disconnects = |app: &PluginApp| {
        app.commands()
            .iter()
            .filter(|c| {
                matches!(c, NetCommand::Disconnect { client, reason: DisconnectReason::Kicked }
                    if *client == flooder)
            })
            .count()
    };
    // A line, the offence that kicks, and 50 more, in one tick; then 50
    // more in each of two ticks (the disconnect not in effect yet).
    for (tick, sends) in [52, 50, 50].into_iter().enumerate() {
        for client_ref in 0..sends {
            app.send(flooder, client_ref, ChatScope::Global, "spam");
        }
        app.tick();
        assert_eq!(app.counter("chat_kicks_total"), Some(1.0), "tick {tick}");
        assert_eq!(disconnects(&app), 1 + tick, "tick {tick}");
    }
}

#[test]
fn every_answer_echoes_the_client_ref_of_its_send_in_every_scope() {
    // Room in the bucket for every send below, the refused ones included.
    let config = ChatConfig {
        burst: 20,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1, 2, 3], config);
    let position = |a: u64| match a {
        1 => Some(Vec2::ZERO),
        2 => Some(Vec2::new(10.0, 0.0)),
        3 => Some(Vec2::new(500.0, 0.0)),
        _ => None,
    };
    let mut out = Vec::new();
    let sends: [(u32, ChatScope); 6] = [
        (101, ChatScope::Global),
        (102, ChatScope::Nearby),
        (103, ChatScope::WhisperId(2)),
        (104, ChatScope::WhisperName("player-3".into())),
        (105, ChatScope::WhisperId(1)),
        (106, ChatScope::Global),
    ];
    for (client_ref, scope) in &sends {
        let text = format!("line {client_ref}");
        assert!(room.say(1, *client_ref, scope, &text, position, &mut out));
    }
    for (client_ref, _) in &sends {
        let own = the_answer(&out, 1, *client_ref).expect("accepted");
        assert_eq!(own.text, format!("line {client_ref}"));
        assert_eq!(own.from, Some(1));
    }
    // Nearby from a player without a position reaches only the speaker,
    // still with the echo.
    let mut alone = Vec::new();
    room.say(1, 107, &ChatScope::Nearby, "alone", nowhere, &mut alone);
    assert_eq!(
        the_answer(&alone, 1, 107).map(|l| l.kind),
        Ok(ChatKind::Nearby)
    );
    assert_eq!(alone.len(), 1);
    // Everyone else's copies and system lines carry no reference.
    room.say(2, 201, &ChatScope::Global, "from 2", nowhere, &mut out);
    room.system("maintenance", &mut out);
    assert_reply_to_only_on_own_copies(&out);
    assert_eq!(
        the_answer(&out, 2, 201).map(|l| l.text),
        Ok("from 2".to_owned())
    );
    // Player 3 heard globals 101, 106 and 201, whisper 104 and the system
    // line: none of them its own.
    assert_eq!(
        lines_for(&out, 3)
            .iter()
            .map(|l| l.reply_to)
            .collect::<Vec<_>>(),
        vec![None; 5]
    );

    // Refusals echo the reference too.
    let mut out = Vec::new();
    room.say(1, 301, &ChatScope::Global, " \t ", nowhere, &mut out);
    room.say(
        1,
        302,
        &ChatScope::Nearby,
        &"x".repeat(257),
        position,
        &mut out,
    );
    room.say(
        1,
        303,
        &ChatScope::WhisperId(99),
        "anyone?",
        nowhere,
        &mut out,
    );
    room.say(
        1,
        304,
        &ChatScope::WhisperName("nobody".into()),
        "hi",
        nowhere,
        &mut out,
    );
    assert_eq!(the_answer(&out, 1, 301), Err(ChatRejectReason::Empty));
    assert_eq!(the_answer(&out, 1, 302), Err(ChatRejectReason::TooLong));
    assert_eq!(
        the_answer(&out, 1, 303),
        Err(ChatRejectReason::UnknownRecipient)
    );
    assert_eq!(
        the_answer(&out, 1, 304),
        Err(ChatRejectReason::UnknownRecipient)
    );
    assert_eq!(out.len(), 4, "a refusal delivers nothing: {out:?}");
}

#[test]
fn rate_limit_and_mute_refusals_echo_the_client_ref_and_a_kick_is_explained_first() {
    let config = ChatConfig {
        burst: 1,
        rate_per_sec: 0.0,
        mute_after_offences: 2,
        mute_secs: 1,
        kick_after_mutes: 1,
        tick_hz: 10,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1, 2], config);
    let mut out = Vec::new();
    for client_ref in 1..=5 {
        room.say(
            1,
            client_ref,
            &ChatScope::WhisperId(2),
            "spam",
            nowhere,
            &mut out,
        );
    }
    assert_eq!(the_answer(&out, 1, 1).map(|l| l.seq), Ok(1));
    assert_eq!(the_answer(&out, 1, 2), Err(ChatRejectReason::RateLimited));
    // The second offence mutes.
    assert_eq!(the_answer(&out, 1, 3), Err(ChatRejectReason::Muted));
    // Sending while muted is refused as muted.
    assert_eq!(the_answer(&out, 1, 4), Err(ChatRejectReason::Muted));
    // The offence that would be a second mute is a kick, explained first
    // (the transport delivers what was sent before a disconnect).
    assert_eq!(the_answer(&out, 1, 5), Err(ChatRejectReason::Kicked));
    let answered = out.iter().position(
        |o| matches!(o, ChatOutput::Rejected { rejected, .. } if rejected.client_ref == 5),
    );
    let kicked = out
        .iter()
        .position(|o| *o == ChatOutput::Kick { account: 1 });
    assert!(answered.is_some() && answered < kicked, "{out:?}");
    assert_reply_to_only_on_own_copies(&out);
}

#[test]
fn nearby_lines_reach_the_same_members_through_the_spatial_index() {
    // 400 members scattered over 600 m (every fifth nowhere), nearby
    // radius 50 m: the routing system's grid must pick exactly the members
    // the plain per-member check picks.
    let accounts: Vec<u64> = (1..=400).collect();
    let mut room = room_with(&accounts, ChatConfig::default());
    let mut seed = 7u64;
    let mut unit = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    let positions: HashMap<u64, Vec2> = accounts
        .iter()
        .filter(|&&a| a % 5 != 0)
        .map(|&a| (a, Vec2::new(unit(), unit()) * 600.0 - 300.0))
        .collect();
    let position = |a: u64| positions.get(&a).copied();
    let mut index = NearbyIndex::default();
    index.rebuild(positions.iter().map(|(&a, &p)| (a, p)), 50.0);

    let recipients = |out: &[ChatOutput]| -> Vec<u64> {
        out.iter()
            .filter_map(ChatOutput::line)
            .map(|(to, _)| to)
            .collect()
    };
    let mut reached = 0;
    for speaker in 1..=40 {
        let (mut scanned, mut indexed) = (Vec::new(), Vec::new());
        // Twin rooms, so that sequence numbers match.
        let mut twin = room.clone();
        room.say(speaker, 1, &ChatScope::Nearby, "hi", position, &mut scanned);
        let located = Located {
            position,
            index: Some(&index),
        };
        twin.say(speaker, 1, &ChatScope::Nearby, "hi", located, &mut indexed);
        assert_eq!(indexed, scanned, "speaker {speaker}");
        assert!(recipients(&scanned).contains(&speaker));
        reached += recipients(&scanned).len() - 1;
    }
    assert!(reached > 40, "the scatter is too sparse to test: {reached}");
}

/// Members 1 and 2, with 1 just muted (bucket of one, no refill, muted
/// at its second offence for 30 s at 10 Hz).
fn room_with_member_1_muted() -> ChatRoom {
    let config = ChatConfig {
        burst: 1,
        rate_per_sec: 0.0,
        mute_after_offences: 2,
        mute_secs: 30,
        tick_hz: 10,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1, 2], config);
    let mut out = Vec::new();
    for client_ref in 0..3 {
        room.say(1, client_ref, &ChatScope::Global, "spam", nowhere, &mut out);
    }
    assert_eq!(
        rejections(&out),
        vec![ChatRejectReason::RateLimited, ChatRejectReason::Muted]
    );
    room
}

#[test]
fn a_mute_and_a_spent_bucket_survive_a_reconnect() {
    let mut room = room_with_member_1_muted();
    // Leave and come straight back: still muted.
    let mut out = Vec::new();
    room.leave(1, &mut out);
    room.tick(1);
    room.join(1, "player-1".into(), &mut out);
    let mut out = Vec::new();
    room.say(1, 9, &ChatScope::Global, "clean slate?", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::Muted]);
    assert!(lines_for(&out, 2).is_empty());

    // A spent bucket is not refilled by leaving either.
    let mut room = room_with(
        &[3],
        ChatConfig {
            mute_secs: 1,
            rate_per_sec: 0.1,
            ..room.config().clone()
        },
    );
    let mut out = Vec::new();
    room.say(3, 1, &ChatScope::Global, "my one line", nowhere, &mut out);
    room.leave(3, &mut out);
    room.join(3, "player-3".into(), &mut out);
    let mut out = Vec::new();
    room.say(
        3,
        2,
        &ChatScope::Global,
        "a fresh burst?",
        nowhere,
        &mut out,
    );
    assert_eq!(rejections(&out), vec![ChatRejectReason::RateLimited]);

    // A minute later the room has forgotten.
    room.leave(3, &mut out);
    for _ in 0..=60 * 10 {
        room.tick(1);
    }
    room.join(3, "player-3".into(), &mut out);
    let mut out = Vec::new();
    room.say(3, 3, &ChatScope::Global, "hello again", nowhere, &mut out);
    assert!(rejections(&out).is_empty(), "{out:?}");
}

/// A bucket that takes longer than a minute to refill is remembered until
/// it would be full again: reconnecting once a minute gives no more lines
/// than staying.
#[test]
fn a_slow_bucket_is_not_refilled_by_a_reconnect_after_a_minute() {
    let config = ChatConfig {
        burst: 10,
        rate_per_sec: 0.05,
        tick_hz: 10,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1, 2], config);
    let mut out = Vec::new();
    for client_ref in 0..10 {
        room.say(1, client_ref, &ChatScope::Global, "hi", nowhere, &mut out);
    }
    assert!(rejections(&out).is_empty(), "the burst is ten lines");
    room.leave(1, &mut out);
    for _ in 0..60 * 10 {
        room.tick(1);
    }
    room.join(1, "player-1".into(), &mut out);
    // A minute at 0.05 a second refilled three lines.
    let mut out = Vec::new();
    for client_ref in 10..14 {
        room.say(1, client_ref, &ChatScope::Global, "back", nowhere, &mut out);
    }
    assert_eq!(rejections(&out), vec![ChatRejectReason::RateLimited]);
    assert_eq!(lines_for(&out, 2).len(), 3);
}

#[test]
fn empty_and_overlong_sends_spend_tokens_too() {
    let config = ChatConfig {
        burst: 2,
        rate_per_sec: 0.0,
        mute_after_offences: 3,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1], config);
    let mut out = Vec::new();
    for client_ref in 0..10 {
        room.say(1, client_ref, &ChatScope::Global, "", nowhere, &mut out);
    }
    let refused = rejections(&out);
    assert_eq!(&refused[..2], &[ChatRejectReason::Empty; 2]);
    assert!(
        refused.contains(&ChatRejectReason::RateLimited),
        "{refused:?}"
    );
    assert!(refused.contains(&ChatRejectReason::Muted), "{refused:?}");
}

#[test]
fn a_client_at_exactly_the_advertised_rate_is_never_refused() {
    let config = ChatConfig {
        burst: 1,
        rate_per_sec: 1.0,
        tick_hz: 30,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1], config);
    let mut out = Vec::new();
    for second in 0..100 {
        room.say(
            1,
            second,
            &ChatScope::Global,
            "once a second",
            nowhere,
            &mut out,
        );
        for _ in 0..30 {
            room.tick(1);
        }
    }
    assert!(rejections(&out).is_empty(), "{:?}", rejections(&out));
}

/// A server that cannot keep up (every tick takes 1.5 periods: 20 ticks
/// a second at 30 Hz) still refills buckets at `rate_per_sec` of wall
/// time: a client saying one line a second for two minutes is never
/// refused, muted or kicked.
#[test]
fn a_client_at_the_advertised_rate_is_never_refused_when_ticks_run_late() {
    let mut room = room_with(&[1], ChatConfig::default());
    let mut out = Vec::new();
    for second in 0..120 {
        room.say(
            1,
            second,
            &ChatScope::Global,
            "once a second",
            nowhere,
            &mut out,
        );
        for n in 0..20 {
            // 1.5 periods a tick, as the runner rounds them: 2, 1, 2, 1...
            room.tick(2 - n % 2);
        }
    }
    assert!(rejections(&out).is_empty(), "{:?}", rejections(&out));
    assert!(!out.contains(&ChatOutput::Kick { account: 1 }));
}

/// A mute lasts `mute_secs` of wall time however few ticks run in it:
/// ticks of two periods end a 30 s mute in 150 ticks, not 300.
#[test]
fn a_mute_lasts_its_seconds_when_ticks_run_late() {
    let config = ChatConfig {
        burst: 1,
        mute_after_offences: 2,
        mute_secs: 30,
        tick_hz: 10,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1], config);
    let mut out = Vec::new();
    for client_ref in 0..3 {
        room.say(1, client_ref, &ChatScope::Global, "spam", nowhere, &mut out);
    }
    assert_eq!(
        rejections(&out),
        vec![ChatRejectReason::RateLimited, ChatRejectReason::Muted]
    );
    for _ in 0..149 {
        room.tick(2);
    }
    let mut out = Vec::new();
    room.say(1, 3, &ChatScope::Global, "29.8 s", nowhere, &mut out);
    assert_eq!(the_answer(&out, 1, 3), Err(ChatRejectReason::Muted));
    room.tick(2);
    let mut out = Vec::new();
    room.say(1, 4, &ChatScope::Global, "30 s", nowhere, &mut out);
    assert!(the_answer(&out, 1, 4).is_ok(), "{out:?}");
}

/// A client saying one line a second of wall time, on the real runner.
#[derive(Resource)]
struct OncePerSecond {
    clock: crate::tick::ManualClock,
    client: shared::io::ClientId,
    entity: Entity,
    said: u32,
    refused: Vec<ChatRejectReason>,
}

/// Connects the client in the first tick, says its line when a second has
/// passed since the last, then works for 1.5 periods: the server cannot
/// keep up.
fn say_once_a_second_in_slow_ticks(
    mut speaker: ResMut<OncePerSecond>,
    stats: Res<TickStats>,
    mut connected: MessageWriter<ClientConnected>,
    mut sends: MessageWriter<FromClient<ChatSend>>,
) {
    use crate::tick::Clock;
    if stats.tick() == 0 {
        connected.write(ClientConnected {
            client: speaker.client,
            entity: speaker.entity,
        });
    }
    let elapsed = speaker.clock.now() - speaker.clock.start();
    if elapsed >= std::time::Duration::from_secs(speaker.said.into()) {
        sends.write(FromClient {
            client: speaker.client,
            message: ChatSend {
                client_ref: speaker.said,
                scope: ChatScope::Global,
                text: "once a second".into(),
            },
        });
        speaker.said += 1;
    }
    let period = stats.rate().period();
    speaker.clock.advance(period * 3 / 2);
}

/// The plugin refills by the periods of wall time each tick stands for:
/// at 30 Hz with every tick taking 1.5 periods (20 ticks a second), a
/// client saying one line a second for two minutes is never refused nor
/// kicked.
#[test]
fn the_plugin_refills_by_wall_time_when_the_runner_falls_behind() {
    use crate::tick::{ManualClock, TickConfig, TickPlugin, TickRate};
    use bevy_app::{AppExit, Last};
    use shared::io::{ClientId, NetCommand};
    use shared::netcode::ClientIndex;

    let clock = ManualClock::new();
    let mut app = App::new();
    app.add_plugins(TickPlugin {
        config: TickConfig {
            rate: TickRate::new(30).unwrap(),
            ..TickConfig::default()
        },
        clock: clock.clone(),
    })
    .add_plugins(ChatPlugin {
        config: Some(ChatConfig::default()),
    });
    let entity = app.world_mut().spawn(Position(Vec2::ZERO)).id();
    let client = ClientId {
        slot: ClientIndex::from_slot(0),
        account: 1,
        session: 1,
    };
    app.insert_resource(OncePerSecond {
        clock,
        client,
        entity,
        said: 0,
        refused: Vec::new(),
    })
    .add_systems(
        FixedUpdate,
        say_once_a_second_in_slow_ticks.before(ChatSystems::Route),
    );
    let (sender, receiver) = std::sync::mpsc::channel();
    app.add_systems(
        Last,
        move |mut speaker: ResMut<OncePerSecond>,
              mut refusals: MessageReader<ToClient<ChatRejected>>,
              outbox: Res<Outbox>,
              mut exit: MessageWriter<AppExit>| {
            let refused = refusals.read().map(|r| r.message.reason);
            speaker.refused.extend(refused);
            let kicked = outbox
                .commands()
                .iter()
                .any(|c| matches!(c, NetCommand::Disconnect { .. }));
            if speaker.said == 120 || kicked {
                let _ = sender.send((speaker.said, speaker.refused.clone(), kicked));
                exit.write(AppExit::Success);
            }
        },
    );
    assert_eq!(app.run(), AppExit::Success);
    let (said, refused, kicked) = receiver.recv().unwrap();
    assert_eq!((said, refused, kicked), (120, Vec::new(), false));
}

/// A rate beyond what the bucket counts (the file refuses it; a room built
/// in code may still get one) fills the bucket instead of wrapping it.
#[test]
fn a_huge_rate_fills_the_bucket_instead_of_wrapping_it() {
    let mut room = room_with(
        &[1],
        ChatConfig {
            rate_per_sec: f64::INFINITY,
            burst: 2,
            ..ChatConfig::default()
        },
    );
    for round in 0..5 {
        room.tick(1);
        let mut out = Vec::new();
        for n in 0..2 {
            room.say(
                1,
                round * 2 + n,
                &ChatScope::Global,
                "hi",
                nowhere,
                &mut out,
            );
        }
        assert!(rejections(&out).is_empty(), "round {round}");
    }
}

#[test]
fn one_ticks_chat_is_bounded_and_the_refused_are_not_offenders() {
    let config = ChatConfig {
        max_fanout_bytes_per_tick: ChatConfig::MIN_FANOUT_BYTES_PER_TICK,
        ..ChatConfig::default()
    };
    let accounts: Vec<u64> = (1..=50).collect();
    let mut room = room_with(&accounts, config.clone());
    let mut out = Vec::new();
    let text = "x".repeat(200);
    // Everyone spends a whole burst on lines to everyone, in one tick.
    for &from in &accounts {
        for client_ref in 0..config.burst {
            room.say(
                from,
                client_ref,
                &ChatScope::Global,
                &text,
                nowhere,
                &mut out,
            );
        }
    }
    let copy = text.len() + "player-50".len() + DELIVERY_OVERHEAD_BYTES;
    let delivered = out.iter().filter_map(ChatOutput::line).count();
    assert!(delivered > 0);
    assert!(
        delivered * copy <= config.max_fanout_bytes_per_tick + accounts.len() * copy,
        "{delivered} copies of {copy} bytes"
    );
    let refused = rejections(&out);
    assert_eq!(
        delivered / accounts.len() + refused.len(),
        accounts.len() * config.burst as usize,
        "every send answered once"
    );
    assert!(refused.iter().all(|r| *r == ChatRejectReason::RateLimited));
    // The refused are not offenders: once a token is back they speak
    // (refused ten times, counted as offences, they would be muted).
    for _ in 0..=config.tick_hz {
        room.tick(1);
    }
    out.clear();
    room.say(50, 99, &ChatScope::WhisperId(1), "hi", nowhere, &mut out);
    assert!(the_answer(&out, 50, 99).is_ok(), "{out:?}");
}

/// A send refused for the tick's fan-out bound (the server's limit) does
/// not spend the sender's token: trying again the next tick is no rate
/// offence, however slow its bucket refills.
#[test]
fn a_send_refused_for_the_fan_out_bound_keeps_its_token() {
    let config = ChatConfig {
        max_fanout_bytes_per_tick: ChatConfig::MIN_FANOUT_BYTES_PER_TICK,
        max_chars: 4_096,
        burst: 2,
        rate_per_sec: 0.1,
        ..ChatConfig::default()
    };
    let accounts: Vec<u64> = (1..=50).collect();
    let mut room = room_with(&accounts, config);
    let mut out = Vec::new();
    let text = "x".repeat(1_500);
    // Member 1's line takes the tick's budget; member 2's two are refused.
    room.say(1, 1, &ChatScope::Global, &text, nowhere, &mut out);
    for client_ref in [1, 2] {
        room.say(2, client_ref, &ChatScope::Global, &text, nowhere, &mut out);
        assert_eq!(
            the_answer(&out, 2, client_ref),
            Err(ChatRejectReason::RateLimited)
        );
    }
    room.tick(1);
    out.clear();
    room.say(2, 3, &ChatScope::WhisperId(1), "hi", nowhere, &mut out);
    assert!(the_answer(&out, 2, 3).is_ok(), "{out:?}");
}

/// A send into a tick whose fan-out bound has no room left even for one
/// short copy is refused before its text is cleaned and its recipients
/// are listed: that work grows with the text and the members, and the
/// once-a-tick refund let one such send a tick cost no token, so many
/// accounts could keep every tick busy for ever.
#[test]
fn a_send_into_a_spent_tick_is_refused_before_its_recipients_are_listed() {
    let config = spent_soon();
    let accounts: Vec<u64> = (1..=50).collect();
    let mut room = room_with(&accounts, config);
    let mut out = Vec::new();
    let long = "x".repeat(1_500);
    room.say(1, 1, &ChatScope::Global, &long, nowhere, &mut out);
    let looked_up = std::cell::Cell::new(0);
    let counting = |_: u64| {
        looked_up.set(looked_up.get() + 1);
        Some(Vec2::ZERO)
    };
    room.say(2, 1, &ChatScope::Nearby, "hi", counting, &mut out);
    assert_eq!(the_answer(&out, 2, 1), Err(ChatRejectReason::RateLimited));
    assert_eq!(looked_up.get(), 0, "positions looked up");
}

/// The early refusal counts a whisper to oneself as the one copy it is,
/// and a whisper to nobody is told so, spent tick or not: charged two
/// copies, a short whisper to oneself that fitted was refused, and one to
/// an unknown name was told to try again later.
#[test]
fn whispers_in_a_nearly_spent_tick_are_judged_as_before() {
    let config = spent_soon();
    let accounts: Vec<u64> = (1..=50).collect();
    let mut room = room_with(&accounts, config.clone());
    room.tick(1);
    let name_len = "player-1".len();
    let copy = |text: usize| text + name_len + DELIVERY_OVERHEAD_BYTES;
    let mut out = Vec::new();
    // Member 1's line leaves room for one short copy, not two.
    let budget = config.max_fanout_bytes_per_tick;
    let one = copy(1);
    let long = (budget - one) / accounts.len() - name_len - DELIVERY_OVERHEAD_BYTES;
    room.say(
        1,
        1,
        &ChatScope::Global,
        &"x".repeat(long),
        nowhere,
        &mut out,
    );
    assert!(the_answer(&out, 1, 1).is_ok());
    assert!(
        accounts.len() * copy(long) + one <= budget
            && accounts.len() * copy(long) + 2 * one > budget,
        "the setup leaves room for one copy"
    );
    room.say(2, 1, &ChatScope::WhisperId(999), "hi", nowhere, &mut out);
    assert_eq!(
        the_answer(&out, 2, 1),
        Err(ChatRejectReason::UnknownRecipient)
    );
    room.say(2, 2, &ChatScope::WhisperId(2), "x", nowhere, &mut out);
    assert!(the_answer(&out, 2, 2).is_ok(), "{out:?}");
}

/// The token of a send refused for the fan-out bound comes back once a
/// tick: sending again and again while the tick's budget is spent (each
/// send cleaning its text and listing everyone) costs tokens like any
/// send, and a flooder is muted as usual.
#[test]
fn sends_refused_for_the_fan_out_bound_are_free_only_once_a_tick() {
    let config = spent_soon();
    let accounts: Vec<u64> = (1..=50).collect();
    let mut room = room_with(&accounts, config.clone());
    let mut out = Vec::new();
    room.say(
        1,
        0,
        &ChatScope::Global,
        &"x".repeat(1_500),
        nowhere,
        &mut out,
    );
    out.clear();
    for client_ref in 0..1_000 {
        room.say(2, client_ref, &ChatScope::Global, "hi", nowhere, &mut out);
    }
    let refused = rejections(&out);
    assert_eq!(refused.len(), 1_000);
    let free = 1 + config.burst as usize;
    assert!(
        refused[..free]
            .iter()
            .all(|r| *r == ChatRejectReason::RateLimited),
        "{refused:?}"
    );
    assert!(refused.contains(&ChatRejectReason::Muted), "never muted");
}

/// Offences count toward a mute only within a minute of the last: a
/// player who pastes one line too many now and then is refused each time,
/// not muted at the fifth over a long session.
#[test]
fn offences_spread_over_a_long_session_earn_no_mute() {
    let config = ChatConfig::default();
    let mut room = room_with(&[1, 2], config.clone());
    for episode in 0..6 {
        let mut out = Vec::new();
        for client_ref in 0..=config.burst {
            room.say(1, client_ref, &ChatScope::Global, "hi", nowhere, &mut out);
        }
        assert_eq!(
            rejections(&out),
            [ChatRejectReason::RateLimited],
            "episode {episode}"
        );
        // Ten quiet minutes.
        for _ in 0..600 * config.tick_hz {
            room.tick(1);
        }
    }
    // Within a minute they still add up.
    let mut out = Vec::new();
    for client_ref in 0..config.burst + config.mute_after_offences {
        room.say(1, client_ref, &ChatScope::Global, "hi", nowhere, &mut out);
    }
    assert_eq!(rejections(&out).last(), Some(&ChatRejectReason::Muted));
}

/// Mutes count toward a kick only within ten minutes of the last one's
/// end: two brief floods in a long session do not get a player kicked at
/// the third; floods close together still do.
#[test]
fn mutes_far_apart_earn_no_kick() {
    let config = ChatConfig::default();
    let mut room = room_with(&[1, 2], config.clone());
    let flood = |room: &mut ChatRoom| {
        let mut out = Vec::new();
        for client_ref in 0..config.burst + config.mute_after_offences {
            room.say(1, client_ref, &ChatScope::Global, "hi", nowhere, &mut out);
        }
        out
    };
    for episode in 0..4 {
        let out = flood(&mut room);
        assert_eq!(
            rejections(&out).last(),
            Some(&ChatRejectReason::Muted),
            "episode {episode}"
        );
        assert!(!out.contains(&ChatOutput::Kick { account: 1 }));
        // Fifteen quiet minutes.
        for _ in 0..900 * config.tick_hz {
            room.tick(1);
        }
    }
    // Back to back, the third mute is a kick.
    let mut kicked = false;
    for _ in 0..3 {
        for _ in 0..(config.mute_secs + 60) * config.tick_hz {
            room.tick(1);
        }
        kicked |= flood(&mut room).contains(&ChatOutput::Kick { account: 1 });
    }
    assert!(kicked);
}

/// Burst 1 (a line a second), a 5 s mute at the second offence within a
/// minute, a kick at the second mute within ten minutes, at 10 Hz.
fn kick_at_the_second_mute() -> ChatConfig {
    ChatConfig {
        burst: 1,
        mute_after_offences: 2,
        mute_secs: 5,
        kick_after_mutes: 1,
        tick_hz: 10,
        ..ChatConfig::default()
    }
}

/// Three lines at once from `account`: said, refused, muted (or kicked).
fn flood(room: &mut ChatRoom, account: u64) -> Vec<ChatOutput> {
    let mut out = Vec::new();
    for client_ref in 0..3 {
        room.say(
            account,
            client_ref,
            &ChatScope::Global,
            "spam",
            nowhere,
            &mut out,
        );
    }
    out
}

/// Mutes count toward a kick for ten minutes after the last one ends,
/// whether or not the player stays: leaving for a minute and coming back
/// does not start the count again.
#[test]
fn leaving_for_a_minute_does_not_forget_a_mute() {
    let mut room = room_with(&[1, 2], kick_at_the_second_mute());
    assert_eq!(
        rejections(&flood(&mut room, 1)),
        [ChatRejectReason::RateLimited, ChatRejectReason::Muted]
    );
    let mut out = Vec::new();
    room.leave(1, &mut out);
    for _ in 0..610 {
        room.tick(1);
    }
    room.join(1, "player-1".into(), &mut out);
    // The mute ended 56 s ago: its memory lasts 9 minutes more.
    for _ in 0..600 {
        room.tick(1);
    }
    let out = flood(&mut room, 1);
    assert_eq!(
        rejections(&out),
        [ChatRejectReason::RateLimited, ChatRejectReason::Kicked]
    );
    assert!(out.contains(&ChatOutput::Kick { account: 1 }));
}

/// The room remembers at most `rejoin_memory_players` players who left;
/// past it the standing that runs out soonest (here the earliest mute's)
/// is forgotten, and its player comes back with a clean slate.
#[test]
fn the_standings_kept_are_bounded() {
    let config = ChatConfig {
        rejoin_memory_players: 2,
        ..kick_at_the_second_mute()
    };
    let mut room = room_with(&[1, 2, 3], config);
    let mut out = Vec::new();
    for account in 1..=3 {
        assert_eq!(
            rejections(&flood(&mut room, account)).last(),
            Some(&ChatRejectReason::Muted)
        );
        room.leave(account, &mut out);
        room.tick(1);
    }
    for account in 1..=3 {
        room.join(account, format!("player-{account}"), &mut out);
    }
    // After the mutes: account 1 starts again, 2 and 3 are kicked.
    for _ in 0..60 {
        room.tick(1);
    }
    let last = |room: &mut ChatRoom, account| rejections(&flood(room, account)).pop();
    assert_eq!(last(&mut room, 1), Some(ChatRejectReason::Muted));
    assert_eq!(last(&mut room, 2), Some(ChatRejectReason::Kicked));
    assert_eq!(last(&mut room, 3), Some(ChatRejectReason::Kicked));
}

/// A system line (a console `say`, a kick's reason) is cleaned and cut
/// like a player's: a line past the transport's largest message would
/// never reach anyone, its sequence number spent, and every client would
/// see a gap.
#[test]
fn system_lines_are_cleaned_and_cut_to_the_longest_line() {
    let config = ChatConfig::default();
    let mut room = room_with(&[1], config.clone());
    let mut out = Vec::new();
    room.system(&format!("\u{202E}{}", "x".repeat(70_000)), &mut out);
    room.system_to(
        1,
        &format!("kicked: \u{202E}{}", "y".repeat(70_000)),
        &mut out,
    );
    let texts: Vec<String> = out
        .iter()
        .filter_map(ChatOutput::line)
        .map(|(_, line)| line.text)
        .collect();
    assert_eq!(texts.len(), 2);
    for text in &texts {
        assert_eq!(text.chars().count(), config.max_chars, "{text:.40}");
        assert!(!text.contains('\u{202E}'));
    }
    assert!(texts[1].starts_with("kicked: y"));
}

/// System lines count against the tick's fan-out bound too: a tick in
/// which many players leave does not send each leave to everyone left.
#[test]
fn system_lines_count_against_the_fan_out_bound() {
    let config = ChatConfig {
        max_fanout_bytes_per_tick: ChatConfig::MIN_FANOUT_BYTES_PER_TICK,
        announce_sessions: true,
        ..ChatConfig::default()
    };
    let accounts: Vec<u64> = (1..=300).collect();
    let mut room = room_with(&accounts, config.clone());
    room.tick(1);
    let mut out = Vec::new();
    for account in 151..=300 {
        room.leave(account, &mut out);
    }
    let copy = "player-300 left".len() + "server".len() + DELIVERY_OVERHEAD_BYTES;
    let delivered = out.iter().filter_map(ChatOutput::line).count();
    assert!(delivered > 0, "the tick's first line goes");
    assert!(
        delivered * copy <= config.max_fanout_bytes_per_tick + 300 * copy,
        "{delivered} copies of {copy} bytes"
    );
    // And the players' lines that tick find the bound spent.
    out.clear();
    room.say(1, 7, &ChatScope::Global, "hello", nowhere, &mut out);
    assert_eq!(the_answer(&out, 1, 7), Err(ChatRejectReason::RateLimited));
}

/// An announcement the tick's fan-out bound leaves out costs its player
/// nothing: the token comes back, as for a player's line refused for it.
#[test]
fn an_announcement_left_out_costs_no_token() {
    let config = ChatConfig {
        burst: 2,
        max_fanout_bytes_per_tick: ChatConfig::MIN_FANOUT_BYTES_PER_TICK,
        ..announcing()
    };
    let accounts: Vec<u64> = (1..=1_000).collect();
    let mut room = room_with(&accounts, config);
    room.tick(1);
    let mut out = Vec::new();
    room.join(9_001, "player-9001".into(), &mut out);
    room.join(9_002, "player-9002".into(), &mut out);
    let announced = |out: &[ChatOutput], name: &str| {
        lines_for(out, 1)
            .iter()
            .any(|l| l.text == format!("{name} joined"))
    };
    assert!(announced(&out, "player-9001"), "the tick's first line goes");
    assert!(!announced(&out, "player-9002"), "the bound is spent");
    // Its two tokens are both left: two lines, a tick apart (each the
    // first of its tick, within the fan-out bound).
    for client_ref in 1..=2 {
        room.tick(1);
        let mut out = Vec::new();
        room.say(
            9_002,
            client_ref,
            &ChatScope::Global,
            "hi",
            nowhere,
            &mut out,
        );
        assert!(
            the_answer(&out, 9_002, client_ref).is_ok(),
            "line {client_ref}"
        );
    }
}

/// Joining again while in session is a rename: it does not wipe a mute
/// (nor the offences, the bucket, or the lines' numbering).
#[test]
fn joining_again_while_in_session_keeps_a_mute() {
    let mut room = room_with_member_1_muted();
    let mut out = Vec::new();
    room.join(1, "someone-else".into(), &mut out);
    room.say(1, 9, &ChatScope::Global, "clean slate?", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::Muted]);
    assert!(lines_for(&out, 2).is_empty());
}

/// What the lines of `out` to `account` take of its chat channel's send
/// queue: each copy as the transport holds it.
fn queued_for(out: &[ChatOutput], account: u64) -> usize {
    lines_for(out, account)
        .iter()
        .map(|line| shared::protocol::encode(line).unwrap().len())
        .sum()
}

/// Two hundred accounts each whispering one player a burst of long lines
/// in one tick sent it 790 KB: more than its chat channel holds
/// ([`RELIABLE_QUEUE_BYTES`](shared::protocol::channels::RELIABLE_QUEUE_BYTES)),
/// so the honest player was cut off (`SendQueueFull`) by accounts that
/// each stayed within the rate limit. Whispers past its inflow bound are
/// refused instead, with no offence, and it takes more as the bound
/// refills.
#[test]
fn whisperers_together_cannot_send_a_player_more_than_its_channel_holds() {
    let config = ChatConfig::default();
    let attackers: Vec<u64> = (2..=201).collect();
    let mut accounts = vec![1];
    accounts.extend(&attackers);
    let mut room = room_with(&accounts, config.clone());
    let line = "w".repeat(config.max_chars);
    let mut out = Vec::new();
    let mut refused = 0;
    for &a in &attackers {
        for client_ref in 0..config.burst {
            room.say(
                a,
                client_ref,
                &ChatScope::WhisperId(1),
                &line,
                nowhere,
                &mut out,
            );
            if let Err(reason) = the_answer(&out, a, client_ref) {
                assert_eq!(reason, ChatRejectReason::RateLimited);
                refused += 1;
            }
        }
    }
    let taken = queued_for(&out, 1);
    assert!(
        taken <= config.recipient_burst_bytes,
        "{taken} bytes queued for one player in a tick"
    );
    assert!(taken < shared::protocol::channels::RELIABLE_QUEUE_BYTES);
    assert!(refused > 0);
    let told = out.iter().find_map(|o| match o {
        ChatOutput::Rejected { rejected, .. } => Some(rejected.message.clone()),
        _ => None,
    });
    assert!(told.is_some_and(|m| m.contains("player-1")), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(o, ChatOutput::Kick { .. })),
        "refusals for the recipient's bound are no offence"
    );

    // A second later the bound has room for a second's worth more.
    for _ in 0..config.tick_hz {
        room.tick(1);
    }
    let mut out = Vec::new();
    for (i, &a) in attackers.iter().enumerate() {
        room.say(
            a,
            100 + i as u32,
            &ChatScope::WhisperId(1),
            &line,
            nowhere,
            &mut out,
        );
    }
    let cost = |line: &ChatLine| line.text.len() + line.from_name.len() + DELIVERY_OVERHEAD_BYTES;
    let taken: usize = lines_for(&out, 1).iter().map(cost).sum();
    let largest = line.len() + "player-201".len() + DELIVERY_OVERHEAD_BYTES;
    let second = config.recipient_bytes_per_sec;
    assert!(
        (second - largest..second + largest).contains(&taken),
        "{taken} bytes a second later"
    );
}

/// A nearby or global line goes on to everyone else when one recipient's
/// inflow bound is spent: that copy alone is withheld, and a speaker
/// always gets its own.
#[test]
fn a_spent_recipient_misses_a_global_line_that_everyone_else_gets() {
    let config = ChatConfig {
        burst: 10_000,
        ..ChatConfig::default()
    };
    let mut room = room_with(&[1, 2, 3, 4], config.clone());
    let long = "w".repeat(config.max_chars);
    let mut out = Vec::new();
    let spent = (1..10_000).find(|&client_ref| {
        room.say(
            4,
            client_ref,
            &ChatScope::WhisperId(1),
            &long,
            nowhere,
            &mut out,
        );
        the_answer(&out, 4, client_ref).is_err()
    });
    assert!(spent.is_some(), "4 whispered 1 until its bound was spent");

    let mut out = Vec::new();
    assert!(room.say(3, 1, &ChatScope::Global, &long, nowhere, &mut out));
    assert_eq!(lines_for(&out, 2).len(), 1);
    assert_eq!(lines_for(&out, 3).len(), 1, "the speaker's own copy");
    assert_eq!(
        lines_for(&out, 4).len(),
        1,
        "a whisperer's own copies are not charged to its bound"
    );
    assert!(lines_for(&out, 1).is_empty());
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, ChatOutput::Withheld { .. }))
            .collect::<Vec<_>>(),
        [&ChatOutput::Withheld { to: 1 }]
    );
    // 1's own line still answers it.
    let mut out = Vec::new();
    assert!(room.say(1, 7, &ChatScope::Global, &long, nowhere, &mut out));
    assert!(the_answer(&out, 1, 7).is_ok());
}

/// Copies withheld for a spent recipient are counted on the metrics page.
#[test]
fn withheld_copies_are_counted() {
    let config = ChatConfig {
        burst: 1_000,
        ..ChatConfig::default()
    };
    let long = "w".repeat(config.max_chars);
    let mut app = PluginApp::new(Some(config));
    let members: Vec<_> = (1..=13).map(|a| client_id(a, 1, a as u32)).collect();
    for &member in &members {
        app.join(member, Vec2::ZERO);
    }
    app.tick();
    // Ten accounts whisper 1 past its bound, each far within its own,
    // then 3 says a line to everyone in the same tick.
    for &whisperer in &members[3..] {
        for client_ref in 0..70 {
            app.send(whisperer, client_ref, ChatScope::WhisperId(1), &long);
        }
    }
    app.send(members[2], 1, ChatScope::Global, &long);
    app.tick();
    assert_eq!(app.counter("chat_withheld_total"), Some(1.0));
}
