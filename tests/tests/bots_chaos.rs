//! `client_headless chaos` against the real server binary over loopback
//! UDP: garbage at 2,000 datagrams/s for 2 s gets no answer to any garbage
//! source, has its flipped sealed packets opened (and refused), and leaves
//! the server serving; slot-hold against a 4-slot server holds every slot
//! and is then refused as full; a 12 s fragment bomb reaches its
//! over-claim; a non-loopback target is refused without
//! `--i-own-this-server`.
//!
//! The server and `client_headless` binaries come from `e2e::server_binary`
//! and `e2e::client_binary` (built, or confirmed up to date, first).

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use e2e::{ServerOptions, ServerProcess, client_binary, output_within};

/// Every run here ends on its own after its `--duration` (2 s at most); one
/// still running after this limit hangs, and fails the test.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn chaos(args: &[&str]) -> Output {
    output_within(
        Command::new(client_binary()).arg("chaos").args(args),
        RUN_LIMIT,
    )
}

/// The `key: value` lines of a summary.
fn summary(output: &Output) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    stdout
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `chaos --attack attack --rate rate --duration duration` against
/// `game`, which must succeed; its summary.
fn attack(game: &str, attack: &str, rate: &str, duration: &str) -> HashMap<String, String> {
    let output = chaos(&[
        "--server",
        game,
        "--attack",
        attack,
        "--rate",
        rate,
        "--duration",
        duration,
    ]);
    assert!(
        output.status.success(),
        "{attack} failed: {:?}",
        output.status
    );
    summary(&output)
}

fn number(summary: &HashMap<String, String>, key: &str) -> f64 {
    summary
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in the summary: {summary:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {summary:?}"))
}

/// How long `chaos spoof-connect`'s probe tries to connect.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// A server with four slots, for slot-hold to fill.
fn four_slot_server() -> ServerProcess {
    ServerProcess::start(&ServerOptions {
        max_clients: 4,
        ..ServerOptions::default()
    })
}

#[test]
fn garbage_then_slot_hold_are_bounded_and_reported() {
    let mut server = four_slot_server();
    let game = server.game.to_string();

    let s = attack(&game, "garbage", "2000", "2");
    assert_eq!(s["attack"], "garbage");
    assert_eq!(s["target"], game);
    // Rate × duration, what a stall kept back sent before the end (the
    // socket may refuse a few).
    let garbage = number(&s, "garbage_sent_datagrams");
    assert!(
        (3_960.0..=4_000.0).contains(&garbage),
        "{garbage} garbage datagrams"
    );
    // Every one accounted for: sent, refused by the kernel or not sent.
    let refused = number(&s, "garbage_send_refused");
    assert_eq!(garbage + refused + number(&s, "unsent"), 4_000.0, "{s:?}");
    assert!(number(&s, "send_refused") >= refused);
    assert!(number(&s, "sent_datagrams") >= garbage);
    assert!(number(&s, "sent_bytes") > 0.0);
    // The server answers no garbage source.
    assert_eq!(number(&s, "garbage_answers_datagrams"), 0.0);
    assert_eq!(number(&s, "garbage_answers_bytes"), 0.0);
    assert!(server.is_running(), "the server died under garbage");
    // The flipped sealed packets came from their session's address, so the
    // server tried to open them (from anywhere else it drops them unread);
    // the session lasted the run and said goodbye.
    assert_eq!(s["template_session"], "connected to the end", "{s:?}");
    assert!(number(&s, "garbage_sealed_flipped") > 0.0, "{s:?}");
    let decrypt_failed = "net_dropped_datagrams_total{reason=\"DecryptFailed\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.metric_or_zero(decrypt_failed) == 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.metric_or_zero(decrypt_failed) > 0.0,
        "{}",
        server.scrape()
    );

    // Slot-hold takes every free slot of the 4 and is refused after.
    let s = attack(&game, "slot-hold", "20", "1");
    assert_eq!(s["attack"], "slot-hold");
    assert_eq!(number(&s, "connect_attempts"), 20.0);
    assert_eq!(number(&s, "slots_held"), 4.0, "{s:?}");
    assert_eq!(number(&s, "server_full_denials"), 16.0, "{s:?}");
    assert_eq!(number(&s, "other_failures"), 0.0);
    assert!(number(&s, "received_datagrams") > 0.0);
    assert!(server.is_running(), "the server died under slot-hold");
}

/// Every attack's sessions say goodbye as it ends: spoof-connect's probe,
/// a slow reader the server did not end, and slot-hold's held slots were
/// dropped silently and held their slots until the server's 10 s timeout,
/// so a run right after found fewer free.
#[test]
fn attacks_free_the_slots_they_hold_as_they_end() {
    let server = four_slot_server();
    let game = server.game.to_string();

    let s = attack(&game, "spoof-connect", "100", "0.5");
    assert_eq!(s["probe_connected"], "yes", "{s:?}");
    server.sessions_end_soon("spoof-connect's probe held its slot");

    let s = attack(&game, "slow-reader", "5", "1");
    assert_eq!(s["disconnect_reason"], "none", "{s:?}");
    server.sessions_end_soon("the slow reader held its slot");

    let s = attack(&game, "slot-hold", "20", "1");
    assert_eq!(number(&s, "slots_held"), 4.0, "{s:?}");
    server.sessions_end_soon("slot-hold's sessions held their slots");
    let s = attack(&game, "slot-hold", "20", "1");
    assert_eq!(
        number(&s, "slots_held"),
        4.0,
        "a second run finds every slot: {s:?}"
    );
}

/// A garbage run longer than its template session's first 256 packets (13
/// s of acknowledgements) keeps its flipped sealed packets reaching
/// decryption: sealed once, they fell behind the replay window and were
/// dropped as replays, unread.
#[test]
fn a_long_garbage_run_keeps_its_sealed_packets_fresh() {
    let server = ServerProcess::start(&ServerOptions::default());
    let game = server.game.to_string();
    let s = attack(&game, "garbage", "500", "20");
    assert_eq!(s["template_session"], "connected to the end", "{s:?}");
    // Only a flip in a template's prefix or sequence bytes can make it
    // read as a replay while the template is fresh.
    let header_flipped = number(&s, "garbage_sealed_header_flipped");
    let reason = |r: &str| format!("net_dropped_datagrams_total{{reason=\"{r}\"}}");
    // The drops reach the metrics page with the once-a-second summary.
    std::thread::sleep(Duration::from_millis(1_500));
    let (decrypt_failed, replayed) = (
        server.metric_or_zero(&reason("DecryptFailed")),
        server.metric_or_zero(&reason("Replayed")),
    );
    assert!(decrypt_failed > 0.0, "{}", server.scrape());
    assert!(
        replayed <= header_flipped,
        "{replayed} replays for {header_flipped} flips in the header ({decrypt_failed} \
         decryptions failed)"
    );
}

/// A fragment bomb longer than the server's 10 s reliable timeout bombs to
/// its end (its session acknowledges the server's packets: unacknowledged,
/// the welcome ended it at 10 s) and its over-claim is what the server
/// disconnects it for.
#[test]
fn a_long_fragment_bomb_reaches_its_over_claim() {
    let mut server = ServerProcess::start(&ServerOptions::default());
    let game = server.game.to_string();
    let s = attack(&game, "fragment-bomb", "20", "12");
    assert_eq!(s["disconnected_while_bombing"], "no", "{s:?}");
    assert_eq!(s["disconnect_reason"], "ProtocolViolation", "{s:?}");
    assert!(number(&s, "fragments_sent") >= 200.0, "{s:?}");
    assert!(server.is_running(), "the server died under the bomb");
}

/// A host out of descriptors (slot-hold keeps a socket per session it
/// holds) fails those attempts and says so; the attack goes on to its end
/// and its summary.
#[cfg(unix)]
#[test]
fn slot_hold_out_of_descriptors_goes_on_and_says_so() {
    let server = ServerProcess::start(&ServerOptions::default());
    let game = server.game.to_string();
    let client = client_binary();
    let output = output_within(
        Command::new("sh")
            .args(["-c", "ulimit -n 48 && exec \"$0\" \"$@\""])
            .arg(client)
            .args(["chaos", "--server", &game, "--attack", "slot-hold"])
            .args(["--rate", "200", "--duration", "1"]),
        RUN_LIMIT,
    );
    assert!(output.status.success(), "{:?}", output);
    let s = summary(&output);
    assert!(number(&s, "socket_failures") > 0.0, "{s:?}");
    assert!(s.contains_key("socket_error"), "{s:?}");
    assert!(number(&s, "slots_held") > 10.0, "{s:?}");
}

/// Slots held at once never exceed the server's: a silent session's slot
/// is freed by the server's idle timeout (10 s) and may be taken again.
#[test]
fn slot_hold_reports_the_slots_held_at_once() {
    let server = four_slot_server();
    let game = server.game.to_string();
    let s = attack(&game, "slot-hold", "2", "12");
    assert_eq!(number(&s, "slots_held"), 4.0, "{s:?}");
    assert!(number(&s, "slots_held_at_end") <= 4.0, "{s:?}");
    // The first four timed out and later attempts took their slots.
    let connected = number(&s, "connect_attempts")
        - number(&s, "server_full_denials")
        - number(&s, "other_failures");
    assert!(
        connected > 4.0,
        "slots taken again after the timeout: {s:?}"
    );
}

/// A probe that never connects is reported as such, however short the
/// flood: the run waits out the probe's own limit.
#[test]
fn a_probe_that_never_connects_is_reported_not_connected() {
    // A "server" that reads everything and answers nothing.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = sink.local_addr().unwrap().to_string();
    // Built (or found up to date) before the clock starts.
    client_binary();
    let began = std::time::Instant::now();
    let s = attack(&target, "spoof-connect", "100", "0.5");
    let ran = began.elapsed();
    eprintln!("the spoof-connect run took {ran:?}");
    assert_eq!(s["probe_connected"], "no", "{s:?}");
    // The flood: sent, refused by the kernel or not sent, 100 × 0.5.
    let flood = ["sent_datagrams", "send_refused", "unsent"].map(|k| number(&s, k));
    assert_eq!(flood.iter().sum::<f64>(), 50.0, "{s:?}");
    // The probe's own limit, waited out, ten times the flood's 0.5 s.
    assert!(
        s["probe_error"].contains("no connection within 5s"),
        "{s:?}"
    );
    assert!(
        ran >= PROBE_LIMIT,
        "the run ended after {ran:?}, before the probe's {PROBE_LIMIT:?}"
    );
}

#[test]
fn a_non_loopback_target_is_refused_without_the_ownership_flag() {
    let output = chaos(&[
        "--server",
        "192.0.2.1:7777",
        "--attack",
        "garbage",
        "--rate",
        "10",
        "--duration",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing was sent or reported");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to attack 192.0.2.1:7777")
            && stderr.contains("--i-own-this-server"),
        "{stderr}"
    );
}

#[test]
fn out_of_range_rates_and_durations_are_refused() {
    let last_id = u64::MAX.to_string();
    for args in [
        &["--rate", "0", "--duration", "1"][..],
        &["--rate", "10", "--duration", "0"],
        &["--rate", "10", "--duration", "7200"],
        // No room for the attack's consecutive account ids.
        &[
            "--rate",
            "10",
            "--duration",
            "1",
            "--first-client-id",
            &last_id,
        ],
    ] {
        let output = chaos(
            &[
                &["--server", "127.0.0.1:9", "--attack", "garbage"][..],
                args,
            ]
            .concat(),
        );
        // Refused with a message (exit 1, or clap's 2), not a panic (101).
        assert!(
            matches!(output.status.code(), Some(1 | 2)),
            "{args:?}: {:?}",
            output.status
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("error"),
            "{args:?}: no message"
        );
        assert!(output.stdout.is_empty(), "{args:?} sent something");
    }
}
