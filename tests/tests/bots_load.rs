//! `client_headless load` against the real server binary over loopback UDP:
//! 200 bots of `default.toml` (movement and chat) through a 10 % loss
//! conditioner all connect, move, and get every chat line exactly once; 50
//! bots of `trade.toml` get exactly one reply to every inventory request;
//! and the JSON report has the documented shape.
//!
//! The server and `client_headless` binaries come from `e2e::server_binary`
//! and `e2e::client_binary` (built, or confirmed up to date, first).

use std::process::Command;
use std::time::Duration;

use e2e::{
    ServerOptions, ServerProcess, client_binary, exit_within, free_tcp_addr, free_udp_addr,
    metric_family_sum, metric_value, output_within,
};

const BOTS: u64 = 200;
/// The 200 bots' run: `--duration` and `--ramp` (seconds), `--loss`.
const DURATION_S: f64 = 8.0;
const RAMP_S: f64 = 2.0;
const LOSS: f64 = 0.1;
/// `default.toml`'s inputs a second, and the server's default tick rate
/// (a snapshot a tick to every player).
const INPUT_HZ: f64 = 30.0;
const TICK_HZ: f64 = 30.0;
/// Longest a load run of these tests may take (they ask for at most 8 s
/// and a drain): a run still going then is killed and the test fails.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn two_hundred_bots_through_ten_percent_loss_all_connect_and_report() {
    let server = ServerProcess::start(&ServerOptions::default());
    let (game, metrics) = (server.game, server.metrics);
    let dir = std::env::temp_dir().join(format!("bots-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let report = dir.join("report.json");
    let chart = dir.join("chart.svg");
    let output = output_within(
        Command::new(client_binary())
            .args(["load", "--server", &game.to_string()])
            .args([
                "--bots",
                &BOTS.to_string(),
                "--duration",
                &DURATION_S.to_string(),
                "--ramp",
                &RAMP_S.to_string(),
            ])
            .args(["--loss", &LOSS.to_string(), "--drain-timeout", "5"])
            .args(["--metrics-url", &format!("http://{metrics}/metrics")])
            .arg("--report")
            .arg(&report)
            .arg("--chart")
            .arg(&chart)
            .args(["--min-connected-ratio", "1.0", "--require-exactly-once"]),
        LOAD_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "load failed: {:?}", output.status);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["requested"], BOTS);
    assert_eq!(
        json["connected"], BOTS,
        "every bot connects through 10 % loss"
    );
    assert!(json["connect_failures"].as_object().unwrap().is_empty());
    assert!(json["duration_s"].as_f64().unwrap() >= DURATION_S);
    for q in ["p50", "p95", "p99", "max"] {
        let rtt = json["rtt_ms"][q].as_f64().unwrap();
        assert!(rtt > 0.0 && rtt < 5000.0, "rtt {q} = {rtt}");
    }
    // The same after the ramp, the connect storm left out.
    assert_eq!(json["rtt_ms_steady"]["from_s"], RAMP_S);
    let steady_p99 = json["rtt_ms_steady"]["p99"].as_f64().unwrap();
    assert!(steady_p99 > 0.0 && steady_p99 < 5000.0, "{steady_p99}");
    // How late the bots were served: measured, and ordered.
    let late = &json["bot_lateness_ms"];
    let late: Vec<f64> = ["p50", "p95", "p99", "max"]
        .iter()
        .map(|q| {
            late[q]
                .as_f64()
                .unwrap_or_else(|| panic!("lateness {q}: {late}"))
        })
        .collect();
    assert!(late.is_sorted() && late[0] >= 0.0, "{late:?}");
    for key in ["sent", "delivered", "duplicates", "out_of_order", "lost"] {
        assert!(json["reliable"][key].is_u64(), "reliable.{key}");
    }
    assert!(json["bytes_per_bot_per_s"]["up"].as_f64().unwrap() > 0.0);
    assert!(json["bytes_per_bot_per_s"]["down"].as_f64().unwrap() > 0.0);
    assert!(json["inventory"]["ok"].is_u64());
    assert!(json["inventory"]["failed"].is_object());
    // The bots really move: inputs from the start, snapshots back, every
    // one applied. Every bot plays at least `DURATION_S - RAMP_S` (it
    // starts within the ramp): that many seconds of inputs at 30 Hz, and of
    // snapshots at the server's 30 Hz less the 10 % lost on the way. The
    // report has totals; they must reach half of that for every bot
    // (measured: about twice it), and no session went without snapshots.
    let movement = &json["movement"];
    let playing_s = DURATION_S - RAMP_S;
    let inputs_floor = 0.5 * INPUT_HZ * playing_s * BOTS as f64;
    let snapshots_floor = 0.5 * TICK_HZ * (1.0 - LOSS) * playing_s * BOTS as f64;
    let inputs = movement["inputs_sent"].as_u64().unwrap();
    let snapshots = movement["snapshots_applied"].as_u64().unwrap();
    eprintln!(
        "{BOTS} bots: {inputs} inputs sent (floor {inputs_floor}), {snapshots} snapshots \
         applied (floor {snapshots_floor})"
    );
    assert!(
        inputs as f64 >= inputs_floor,
        "{inputs} inputs sent, fewer than {inputs_floor}: {movement}"
    );
    assert!(
        snapshots as f64 >= snapshots_floor,
        "{snapshots} snapshots applied, fewer than {snapshots_floor}: {movement}"
    );
    assert_eq!(movement["sessions_without_snapshots"], 0, "{movement}");
    assert!(movement["inputs_skipped"].is_u64(), "{movement}");
    assert!(
        movement["snapshot_errors"].as_object().unwrap().is_empty(),
        "{movement}"
    );
    // The server's metrics were reachable: its tick figures are real.
    assert!(json["server"]["tick_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(json["server"]["tick_ms"]["p99"].as_f64().is_some());
    assert!(json["server"]["overruns"].as_f64().is_some());

    // The server has chat: every line said comes back exactly once.
    let reliable = &json["reliable"];
    let sent = reliable["sent"].as_u64().unwrap();
    assert!(sent >= BOTS / 2, "bots chat every 5 s: {reliable}");
    assert!(reliable["lines_received"].as_u64().unwrap() >= sent);
    assert_eq!(reliable["duplicates"], 0, "{reliable}");
    assert_eq!(reliable["out_of_order"], 0, "{reliable}");
    assert_eq!(reliable["lost"], 0, "{reliable}");
    assert_eq!(
        reliable["delivered"].as_u64().unwrap() + reliable["rejected"].as_u64().unwrap(),
        sent,
        "every chat line said is answered exactly once: {reliable}"
    );
    // Honest bots stay within the rate limit; only whispers to bots not
    // (yet) online may be refused.
    for reason in json["chat_rejected"].as_object().unwrap().keys() {
        assert_eq!(reason, "unknown_recipient", "{}", json["chat_rejected"]);
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("connected bots"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bots_move_at_the_tick_rate_of_a_slower_server_without_violations() {
    // default.toml walks at 3 m/s: faster than this server allows.
    let server = ServerProcess::start(&ServerOptions {
        config_toml: "tick_hz = 20\n[movement]\nmax_speed = 2.0\n".into(),
        ..ServerOptions::default()
    });
    let output = output_within(
        Command::new(client_binary())
            .args(["load", "--server", &server.game.to_string()])
            .args(["--bots", "20", "--duration", "4", "--ramp", "1"])
            .args(["--min-connected-ratio", "1.0"]),
        LOAD_LIMIT,
    );
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "load failed: {:?}", output.status);
    let metrics = server.scrape();
    let inputs = metric_family_sum(&metrics, "movement_inputs_total");
    assert!(inputs > 20.0 * 20.0, "the bots moved");
    // default.toml says 30 Hz; a bot sending that to a 20 Hz server
    // would lose a third of its inputs as `rate` (570 in this run). Ticks
    // the server skips after a stall cost no violation (their inputs are
    // made up); a host loaded enough to stall the bot process still makes
    // its inputs come bunched, a few percent at most.
    let violations = metric_family_sum(&metrics, "movement_violations_total");
    assert!(
        violations <= 0.05 * inputs,
        "honest bots were flagged: {violations} violations for {inputs} inputs"
    );
    // Every input within the server's max_speed, from its welcome on
    // (before it, standing still), whatever the scenario's speed.
    let speed = metric_value(&metrics, "movement_violations_total{kind=\"speed\"}");
    assert_eq!(speed, 0.0, "bots faster than the server's max_speed");
}

#[test]
fn fifty_trading_bots_get_exactly_one_reply_to_every_inventory_request() {
    const TRADERS: u64 = 50;
    let server = ServerProcess::start(&ServerOptions::default());
    let (game, metrics) = (server.game, server.metrics);
    let dir = std::env::temp_dir().join(format!("bots-e2e-trade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/scenarios/trade.toml");
    let report = dir.join("report.json");
    let output = output_within(
        Command::new(client_binary())
            .args(["load", "--server", &game.to_string()])
            .args([
                "--bots",
                &TRADERS.to_string(),
                "--duration",
                "6",
                "--ramp",
                "1",
            ])
            .arg("--scenario")
            .arg(&scenario)
            .args(["--drain-timeout", "5", "--threads", "1"])
            // One socket per bot (the path for remote servers), where the
            // 200-bot test covers the shared loopback sockets.
            .args(["--source-ips", "1"])
            .args(["--metrics-url", &format!("http://{metrics}/metrics")])
            .arg("--report")
            .arg(&report)
            .args(["--min-connected-ratio", "1.0", "--require-exactly-once"]),
        LOAD_LIMIT,
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "load failed: {:?}", output.status);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["connected"], TRADERS);
    let inv = &json["inventory"];
    let sent = inv["sent"].as_u64().unwrap();
    let ok = inv["ok"].as_u64().unwrap();
    let failed: u64 = inv["failed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    // Two operations per bot per second, plus trade reactions.
    assert!(sent >= TRADERS * 5, "{inv}");
    assert!(ok > 0, "{inv}");
    assert_eq!(inv["lost"], 0, "every request is answered: {inv}");
    assert_eq!(inv["unexpected"], 0, "no request is answered twice: {inv}");
    assert_eq!(inv["inconsistent"], 0, "{inv}");
    assert_eq!(ok + failed, sent, "one reply per request: {inv}");
    // The server is never too busy or failing to store at this load.
    assert!(inv["failed"].get("busy").is_none(), "{inv}");
    assert!(inv["failed"].get("storage").is_none(), "{inv}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run where no bot connected measured nothing: it fails as a run that
/// could not happen (exit 1; it exited 0 unless an SLO was asked for),
/// and its report still names the connect failures and the failed SLO.
#[test]
fn an_unreachable_server_is_reported_as_connect_failures_and_fails_the_run() {
    let nobody = free_udp_addr();
    let dir = std::env::temp_dir().join(format!("bots-e2e-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let output = output_within(
        Command::new(client_binary())
            .args(["load", "--server", &nobody.to_string()])
            .args(["--bots", "3", "--duration", "3", "--threads", "1"])
            .args([
                "--metrics-url",
                &format!("http://{}/metrics", free_tcp_addr()),
            ])
            .arg("--report")
            .arg(&report)
            .args(["--min-connected-ratio", "0.5"]),
        LOAD_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("metrics unavailable"), "{stderr}");
    assert!(stderr.contains("no bot connected"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["connected"], 0);
    assert_eq!(json["slo"][0]["passed"], false, "{}", json["slo"]);
    let failures: u64 = json["connect_failures"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(failures, 3, "{}", json["connect_failures"]);
    assert!(json["server"]["tick_ms"]["p50"].is_null());
    // No bot connected: no bandwidth per connected bot (not the handshake
    // retries over zero seconds).
    assert!(json["bytes_per_bot_per_s"]["up"].is_null(), "{json}");
    assert!(json["bytes_per_bot_per_s"]["down"].is_null(), "{json}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_metrics_page_that_stops_answering_is_noted_not_hidden() {
    use std::io::{Read, Write};
    // Built (or found up to date) first: the page below waits 20 s at most.
    let client = client_binary();
    // A metrics page that answers twice (the baseline and the first
    // second), then is gone, as an overloaded or crashed server's is.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let page = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut served = 0;
        while served < 2 && std::time::Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            // The whole request first: closing with some of it unread
            // would reset the connection instead of ending the answer.
            let mut request = Vec::new();
            let mut chunk = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            // The game server's series (a page without its tick is
            // taken for another exporter's, as not answering).
            let body = "server_tick_duration_seconds_bucket{le=\"0.001\"} 0\n\
                        server_tick_duration_seconds_bucket{le=\"+Inf\"} 0\n\
                        server_tick_duration_seconds_count 0\n\
                        server_tick_overruns_total 0\n";
            let answer = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
            served += 1;
        }
        served
    });
    let dir = std::env::temp_dir().join(format!("bots-e2e-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let output = output_within(
        Command::new(client)
            .args(["load", "--server", &free_udp_addr().to_string()])
            .args(["--bots", "1", "--duration", "3", "--threads", "1"])
            .args(["--metrics-url", &format!("http://{metrics}/metrics")])
            .arg("--report")
            .arg(&report),
        LOAD_LIMIT,
    );
    assert_eq!(page.join().unwrap(), 2, "the bots scraped the page twice");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let notes = json["notes"].to_string();
    assert!(
        notes.contains("did not answer at the end"),
        "{notes}\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C during a load test ends it early as its end would: the bots
/// drain and say goodbye, and the report is written with a note (the
/// process died at once, with no report, and the server held every bot's
/// slot until its timeout). The run did not complete: exit 1.
#[test]
fn an_interrupted_run_says_goodbye_and_writes_its_report() {
    use std::time::Instant;

    let server = ServerProcess::start(&ServerOptions::default());
    let dir = std::env::temp_dir().join(format!("bots-e2e-interrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let mut load = e2e::KillOnDrop(
        Command::new(client_binary())
            .args(["load", "--server", &server.game.to_string()])
            .args(["--bots", "5", "--duration", "60", "--threads", "1"])
            .args([
                "--metrics-url",
                &format!("http://{}/metrics", server.metrics),
            ])
            .arg("--report")
            .arg(&report)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("connected_clients") < 5.0 {
        assert!(Instant::now() < deadline, "the bots did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    let interrupted_at = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &load.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (status, stderr) = exit_within(
        &mut load,
        Duration::from_secs(15).saturating_sub(interrupted_at.elapsed()),
        "the run went on after Ctrl-C",
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // Every bot said goodbye: the server let them go at once.
    server.sessions_end_soon("sessions outlived their bots");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(json["connected"], 5, "{json}");
    assert!(json["duration_s"].as_f64().unwrap() < 30.0, "{json}");
    assert!(json["notes"].to_string().contains("interrupted"), "{json}");
}

/// A soft open-file limit below what the bots' sockets need (1,024 on
/// many systems) is raised within the hard one; a hard limit below it is
/// a clear error before the run. Past the limit, bots failed one by one
/// as "socket: uncategorized error", and the run went on.
#[test]
fn the_open_file_limit_is_raised_for_the_bots_or_the_run_refused() {
    let nobody = free_udp_addr();
    let dir = std::env::temp_dir().join(format!("bots-e2e-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let load_under = |ulimit: &str| {
        let script = format!(
            "ulimit {ulimit} 200 && exec \"$0\" load --server {nobody} --bots 500 --duration 1 \
             --source-ips 0 --threads 1 --drain-timeout 1 --metrics-url http://{}/metrics --report {}",
            free_tcp_addr(),
            report.display()
        );
        output_within(
            Command::new("sh").args(["-c", &script, &client_binary().display().to_string()]),
            LOAD_LIMIT,
        )
    };
    let refused = load_under("-n");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("open files"), "{stderr}");
    assert!(!report.exists(), "the refused run wrote a report");
    let hard = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_owned();
    if hard.parse::<u64>().is_ok_and(|h| h < 1_000) {
        eprintln!("the hard open-file limit is {hard}: the raise is not checked");
        return;
    }
    let raised = load_under("-S -n");
    let stderr = String::from_utf8_lossy(&raised.stderr);
    assert!(!stderr.contains("open files"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let failures = json["connect_failures"].to_string();
    assert!(!failures.contains("socket"), "{failures}");
    assert_eq!(json["requested"], 500, "{json}");
}

/// Output piped to a reader that quits (`load ... | head -n 3`): the next
/// progress line panicked the run (exit 101, no report, the server holding
/// every bot's slot until its timeout). The run goes on to its end, its
/// bots say goodbye and its report is written.
#[test]
fn a_reader_that_goes_away_leaves_the_run_and_its_report_whole() {
    let server = ServerProcess::start(&ServerOptions::default());
    let dir = std::env::temp_dir().join(format!("bots-e2e-closed-stdout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let mut load = e2e::KillOnDrop(
        Command::new(client_binary())
            .args(["load", "--server", &server.game.to_string()])
            .args(["--bots", "3", "--duration", "3", "--ramp", "1"])
            .arg("--report")
            .arg(&report)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop(load.stdout.take());
    let (status, stderr) = exit_within(&mut load, LOAD_LIMIT, "the run did not end");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["connected"], 3, "{json}");
    // Every bot said goodbye: the server let them go at once.
    server.sessions_end_soon("the sessions outlived the run");
    let _ = std::fs::remove_dir_all(&dir);
}
