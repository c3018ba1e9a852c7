//! The chat rules, as specifications of [`ChatRoom`].

use glam::Vec2;
use shared::protocol::chat::{ChatKind, ChatLine, ChatRejectReason, ChatScope};

use super::*;

fn room_with(accounts: &[u64], config: ChatConfig) -> ChatRoom {
    let mut room = ChatRoom::new(config);
    let mut out = Vec::new();
    for &a in accounts {
        room.join(a, format!("player-{a}"), &mut out);
    }
    room
}

fn lines_for(out: &[ChatOutput], account: u64) -> Vec<&ChatLine> {
    out.iter()
        .filter_map(|o| match o {
            ChatOutput::Line { to, line } if *to == account => Some(line),
            _ => None,
        })
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
fn a_whisper_reaches_only_its_target_and_the_senders_copy() {
    let mut room = room_with(&[1, 2, 3], ChatConfig::default());
    let mut out = Vec::new();
    assert!(room.say(
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
    room.say(2, &ChatScope::WhisperId(3), "hey", nowhere, &mut out);
    assert!(lines_for(&out, 1).is_empty());
    assert_eq!(lines_for(&out, 3)[0].text, "hey");

    let mut out = Vec::new();
    room.say(2, &ChatScope::WhisperId(99), "anyone?", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::UnknownRecipient]);
}

#[test]
fn global_reaches_everyone_and_nearby_only_those_within_the_radius() {
    let mut room = room_with(&[1, 2, 3, 4], ChatConfig::default());
    let mut out = Vec::new();
    room.say(1, &ChatScope::Global, "hello all", nowhere, &mut out);
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
    room.say(1, &ChatScope::Nearby, "near?", position, &mut out);
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

#[test]
fn sequence_numbers_count_every_line_per_recipient_without_gaps() {
    let mut room = room_with(&[1], announcing());
    let mut out = Vec::new();
    room.join(2, "player-2".into(), &mut out);
    room.say(1, &ChatScope::Global, "a", nowhere, &mut out);
    room.say(2, &ChatScope::WhisperId(1), "b", nowhere, &mut out);
    room.say(1, &ChatScope::Global, "", nowhere, &mut out); // refused: no line
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
        room.say(1, &ChatScope::Global, "spam", nowhere, &mut out);
    }
    assert!(rejections(&out).is_empty());
    let mut out = Vec::new();
    room.say(1, &ChatScope::Global, "spam", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::RateLimited]);
    for _ in 0..9 {
        room.tick();
    }
    let mut out = Vec::new();
    room.say(1, &ChatScope::Global, "spam", nowhere, &mut out);
    assert_eq!(
        rejections(&out),
        vec![ChatRejectReason::RateLimited],
        "0.9 s is not 1 s"
    );
    room.tick();
    let mut out = Vec::new();
    room.say(1, &ChatScope::Global, "ok now", nowhere, &mut out);
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
    room.say(1, &ChatScope::Global, "one", nowhere, &mut out);
    let mut out = Vec::new();
    room.say(1, &ChatScope::Global, "two", nowhere, &mut out);
    room.say(1, &ChatScope::Global, "three", nowhere, &mut out);
    assert_eq!(
        rejections(&out),
        vec![ChatRejectReason::RateLimited, ChatRejectReason::Muted]
    );
    let mut out = Vec::new();
    room.say(1, &ChatScope::Global, "muted", nowhere, &mut out);
    assert_eq!(rejections(&out), vec![ChatRejectReason::Muted]);
    assert!(lines_for(&out, 2).is_empty());
    room.say(1, &ChatScope::Global, "again", nowhere, &mut out);
    assert!(out.contains(&ChatOutput::Kick { account: 1 }));
    let mut out = Vec::new();
    room.say(1, &ChatScope::Global, "after kick", nowhere, &mut out);
    assert!(out.is_empty(), "a kicked member is silent until it leaves");
}

#[test]
fn nothing_is_accepted_outside_a_session() {
    let mut room = room_with(&[1], ChatConfig::default());
    let mut out = Vec::new();
    assert!(!room.say(7, &ChatScope::Global, "hi", nowhere, &mut out));
    assert!(out.is_empty());
    room.leave(1, &mut out);
    assert!(!room.say(1, &ChatScope::Global, "hi", nowhere, &mut out));
}

#[test]
fn joins_leaves_and_admin_lines_are_system_lines() {
    let mut room = room_with(&[1], announcing());
    let mut out = Vec::new();
    room.join(2, "player-2".into(), &mut out);
    room.system("restart at noon", &mut out);
    room.leave(2, &mut out);
    let texts: Vec<_> = lines_for(&out, 1)
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

#[test]
fn the_plugin_builds_and_routes_admin_lines_without_members() {
    let mut app = App::new();
    app.add_plugins(ChatPlugin::default());
    app.world_mut()
        .write_message(AdminSay { text: "hi".into() });
    app.world_mut().run_schedule(FixedUpdate);
    let lines = app.world().resource::<Messages<ToClient<ChatLine>>>();
    assert_eq!(lines.iter_current_update_messages().count(), 0);
}
