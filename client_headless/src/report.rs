//! The load-test report: JSON for machines, a summary for people, and the
//! SLO verdict that sets the exit code.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::inventory::InventoryStats;
use crate::verify::ReliableStats;

/// The whole report (`--report FILE.json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The scenario's name.
    pub(crate) scenario: String,
    /// The server address.
    pub(crate) server_address: String,
    /// Bots asked for.
    pub(crate) requested: u64,
    /// Bots that completed a handshake at least once.
    pub(crate) connected: u64,
    /// Bots that connected and were not dropped: see
    /// [`connected_not_dropped`].
    pub(crate) connected_not_dropped: u64,
    /// Handshakes that failed, by reason: bots that never connected.
    pub(crate) connect_failures: BTreeMap<String, u64>,
    /// Reconnects (churn) that failed, by reason: bots that had connected
    /// and stayed offline from then on.
    pub(crate) reconnect_failures: BTreeMap<String, u64>,
    /// Established connections that ended without the bot asking, by reason.
    pub(crate) disconnects: BTreeMap<String, u64>,
    /// Seconds from the first bot's start to the stop signal.
    pub(crate) duration_s: f64,
    /// Smoothed transport RTT, sampled once per second per connected bot.
    pub(crate) rtt_ms: Percentiles,
    /// The samples of `rtt_ms` taken after the ramp: the steady state,
    /// without the connect storm. `None` without a ramp (every sample is
    /// after it: `rtt_ms` is the steady state's).
    pub(crate) rtt_ms_steady: Option<SteadyRtt>,
    /// How late the bots were served after their due time (one sample per
    /// scheduled service): the bot process's own delay, which `rtt_ms`
    /// includes.
    pub(crate) bot_lateness_ms: Percentiles,
    /// Chat verification (see `verify`).
    pub(crate) reliable: ReliableStats,
    /// Chat refusals by reason.
    pub(crate) chat_rejected: BTreeMap<String, u64>,
    /// Chat slots skipped because `verify::MAX_IN_FLIGHT` lines of the bot
    /// were unanswered.
    pub(crate) chat_skipped: u64,
    /// Movement input and snapshots.
    pub(crate) movement: MovementReport,
    /// UDP payload bytes per connected bot per second.
    pub(crate) bytes_per_bot_per_s: Bandwidth,
    /// Inventory requests and replies (see `inventory`).
    pub(crate) inventory: InventoryStats,
    /// Scraped from the server's metrics; nulls when unreachable.
    pub(crate) server: ServerReport,
    /// CPU seconds used by this process (user + system).
    pub(crate) bot_cpu_s: Option<f64>,
    /// The system (kernel) part of `bot_cpu_s`.
    pub(crate) bot_cpu_kernel_s: Option<f64>,
    /// Wall seconds from the load's start to the reading of `bot_cpu_s`:
    /// `duration_s` and the stop after it (draining, leaving), the time
    /// the CPU seconds were spent in.
    pub(crate) bot_cpu_wall_s: Option<f64>,
    /// This process's peak resident memory, MiB (`VmHWM`; Linux only).
    pub(crate) bot_peak_rss_mib: Option<f64>,
    /// SLOs checked and their outcome.
    pub(crate) slo: Vec<SloResult>,
    /// Things the reader must know (e.g. no chat on the server).
    pub(crate) notes: Vec<String>,
}

/// p50/p95/p99/max in milliseconds (null without samples).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    /// Median.
    pub(crate) p50: Option<f64>,
    /// 95th percentile.
    pub(crate) p95: Option<f64>,
    /// 99th percentile.
    pub(crate) p99: Option<f64>,
    /// Largest sample.
    pub(crate) max: Option<f64>,
}

/// [`Report::rtt_ms_steady`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct SteadyRtt {
    /// Seconds into the run the window starts: the ramp's end.
    pub(crate) from_s: f64,
    /// The RTT over the window.
    #[serde(flatten)]
    pub(crate) rtt: Percentiles,
}

/// Bytes per connected bot per second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Bandwidth {
    /// Bot to server; `None` (null) when no bot connected.
    pub(crate) up: Option<f64>,
    /// Server to bot.
    pub(crate) down: Option<f64>,
}

/// Movement input and snapshots.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct MovementReport {
    /// `MoveInput`s sent.
    pub(crate) inputs_sent: u64,
    /// Inputs the bots' schedules skipped: the beats a bot was served too
    /// late for (its process short of CPU), by which `inputs_sent` fell
    /// short of the scenario's rate.
    pub(crate) inputs_skipped: u64,
    /// Snapshots received and applied.
    pub(crate) snapshots_applied: u64,
    /// Snapshots that could not be decoded or applied, by reason
    /// (`decode`, `stale`, `missing_baseline`, `malformed`).
    pub(crate) snapshot_errors: BTreeMap<String, u64>,
    /// Connections that sent input but never received a snapshot.
    pub(crate) sessions_without_snapshots: u64,
    /// Largest prediction correction on a snapshot, metres.
    pub(crate) max_correction_m: f64,
}

/// The server's own view, from its metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServerReport {
    /// The URL scraped.
    pub(crate) metrics_url: String,
    /// The figures run to the end of the run: its metrics answered then
    /// (when they did not, they stop at the last scrape that did, which
    /// a note says).
    pub(crate) complete: bool,
    /// Seconds into the run of the scrape the figures start at: 0 for the
    /// one before the first bot started; later when the server's metrics
    /// first answered then (a note says so); `None` when they never did.
    pub(crate) from_s: Option<f64>,
    /// The tick over the whole run, ramp included.
    #[serde(flatten)]
    pub(crate) run: TickWindow,
    /// The tick from the first scrape after the ramp to the end: the
    /// steady state, without the connect storm. `None` when no scrape came
    /// after the ramp.
    pub(crate) steady: Option<SteadyWindow>,
}

/// The server's tick over part of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct TickWindow {
    /// Tick duration, from the histogram buckets (ms).
    pub(crate) tick_ms: TickPercentiles,
    /// Ticks longer than the tick period (`None` when no tick was counted
    /// in the window: nothing was measured).
    pub(crate) overruns: Option<f64>,
    /// Ticks longer than the histogram's largest finite bucket: `p99` and
    /// `max` read that bound for them.
    pub(crate) beyond_buckets: Option<f64>,
}

/// [`ServerReport::steady`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct SteadyWindow {
    /// Seconds into the run the window starts.
    pub(crate) from_s: f64,
    /// The tick over the window.
    #[serde(flatten)]
    pub(crate) tick: TickWindow,
}

impl TickWindow {
    fn summary(&self) -> String {
        let t = &self.tick_ms;
        format!(
            "p50 {}  p99 {}  max {}  overruns {}",
            ms(t.p50),
            ms(t.p99),
            ms(t.max),
            self.overruns
                .map_or_else(|| "n/a".to_owned(), |o| format!("{o:.0}"))
        ) + &match self.beyond_buckets {
            Some(n) if n > 0.0 => format!(" ({n:.0} above the largest bucket: max is more)"),
            _ => String::new(),
        }
    }
}

/// Tick duration percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct TickPercentiles {
    /// Median.
    pub(crate) p50: Option<f64>,
    /// 99th percentile.
    pub(crate) p99: Option<f64>,
    /// Upper bound of the highest non-empty bucket.
    pub(crate) max: Option<f64>,
}

/// One SLO and its outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SloResult {
    /// What was required.
    pub(crate) name: String,
    /// Whether it held.
    pub(crate) passed: bool,
    /// The measured value, as a sentence.
    pub(crate) detail: String,
}

/// The bots of `connected` that stayed: minus the sessions the server (or
/// a timeout) ended, `disconnects`, and the churning bots whose reconnect
/// failed, `reconnect_failures`. Either ends a bot's run, so a bot is
/// counted once at most. Bots leaving when the run ends, or between churn
/// sessions, leave by their own goodbye: that is no drop.
pub(crate) fn connected_not_dropped(
    connected: u64,
    disconnects: &BTreeMap<String, u64>,
    reconnect_failures: &BTreeMap<String, u64>,
) -> u64 {
    let dropped = disconnects.values().sum::<u64>() + reconnect_failures.values().sum::<u64>();
    connected.saturating_sub(dropped)
}

/// The SLO flags.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Slos {
    /// `--max-rtt-p99-ms`.
    pub(crate) max_rtt_p99_ms: Option<f64>,
    /// `--min-connected-ratio`.
    pub(crate) min_connected_ratio: Option<f64>,
    /// `--require-exactly-once`.
    pub(crate) require_exactly_once: bool,
    /// The scenario chats: a run with nothing exchanged verified nothing.
    pub(crate) expects_chat: bool,
    /// The scenario sends inventory requests: idem.
    pub(crate) expects_inventory: bool,
}

impl Slos {
    /// Checks the SLOs against `report`.
    pub(crate) fn check(&self, report: &Report) -> Vec<SloResult> {
        let mut out = Vec::new();
        if let Some(limit) = self.max_rtt_p99_ms {
            // After a ramp, the steady state's: the connect storm's round
            // trips are the ramp's, not the server's under its load.
            let (passed, detail) = match report.rtt_ms_steady {
                Some(steady) => match steady.rtt.p99 {
                    Some(p99) => (
                        p99 <= limit,
                        format!(
                            "p99 {p99:.1} ms after the ramp (whole run {}), limit {limit} ms",
                            ms(report.rtt_ms.p99)
                        ),
                    ),
                    None => (
                        false,
                        format!("no RTT sample after the ramp (from {:.0} s)", steady.from_s),
                    ),
                },
                None => match report.rtt_ms.p99 {
                    Some(p99) => (p99 <= limit, format!("p99 {p99:.1} ms, limit {limit} ms")),
                    None => (false, "no RTT sample".to_owned()),
                },
            };
            out.push(SloResult {
                name: "max_rtt_p99_ms".into(),
                passed,
                detail,
            });
        }
        if let Some(min) = self.min_connected_ratio {
            // A bot the server dropped does not count, so a run whose
            // every session was dropped fails however many bots connected
            // first.
            let stayed = report.connected_not_dropped;
            let dropped = report.connected.saturating_sub(stayed);
            let ratio = if report.requested == 0 {
                1.0
            } else {
                stayed as f64 / report.requested as f64
            };
            out.push(SloResult {
                name: "min_connected_ratio".into(),
                passed: ratio >= min,
                detail: format!(
                    "{ratio:.3} connected and not dropped ({dropped} dropped), minimum {min}"
                ),
            });
        }
        if self.require_exactly_once {
            // With no bot connected nothing was exchanged: the checks
            // below would hold for want of anything to check.
            let nobody = (report.connected == 0)
                .then(|| "no bot connected: nothing exchanged to verify".to_owned());
            let r = &report.reliable;
            let silent = r.lines_received == 0 && r.sent == 0;
            // Delivery is verified by own copies coming back: a scenario
            // that chats and had none delivered verified nothing (bots
            // dropped before their first line, every line refused), however
            // many other lines came; one that does not chat has nothing to
            // verify.
            let unverified = (self.expects_chat && r.delivered == 0).then(|| {
                if silent {
                    "the scenario chats, but no line was exchanged: nothing verified".to_owned()
                } else {
                    format!(
                        "the scenario chats, but no line came back to its speaker ({} said, {} \
                         refused, {} lost): nothing verified",
                        r.sent, r.rejected, r.lost
                    )
                }
            });
            let detail = if silent {
                "no chat exchanged: nothing to verify (vacuously true)".to_owned()
            } else {
                format!(
                    "{} duplicates, {} out of order, {} lost, {} mismatched",
                    r.duplicates, r.out_of_order, r.lost, r.mismatched
                )
            };
            let failed_first = nobody.clone().or(unverified);
            out.push(SloResult {
                name: "exactly_once".into(),
                passed: failed_first.is_none() && r.exactly_once(),
                detail: failed_first.unwrap_or(detail),
            });
            let i = &report.inventory;
            let unverified = (self.expects_inventory && i.sent == 0).then(|| {
                "the scenario sends inventory requests, but none was sent: nothing verified"
                    .to_owned()
            });
            let failed_first = nobody.or(unverified);
            // Two inventories with one version: the server broke its
            // atomicity, however many replies each request got. A state
            // older than an earlier session's: it lost an acknowledged
            // change.
            out.push(SloResult {
                name: "inventory_exactly_one_reply".into(),
                passed: failed_first.is_none()
                    && i.exactly_one_reply()
                    && i.inconsistent == 0
                    && i.regressed == 0,
                detail: failed_first.unwrap_or_else(|| {
                    format!(
                        "{} requests, {} lost, {} unexpected replies, {} inconsistent states, \
                         {} regressed states",
                        i.sent, i.lost, i.unexpected, i.inconsistent, i.regressed
                    )
                }),
            });
        }
        out
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"))
}

fn map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The summary printed at the end of a run.
    pub(crate) fn summary(&self) -> String {
        let mut s = String::new();
        let r = &self.reliable;
        let _ = writeln!(
            s,
            "load test '{}' against {} for {:.1} s",
            self.scenario, self.server_address, self.duration_s
        );
        let _ = writeln!(
            s,
            "  bots        {} / {} connected, {} not dropped; connect failures: {}; \
             dropped: {}; reconnects failed: {}",
            self.connected,
            self.requested,
            self.connected_not_dropped,
            map(&self.connect_failures),
            map(&self.disconnects),
            map(&self.reconnect_failures)
        );
        let _ = writeln!(
            s,
            "  rtt         p50 {}  p95 {}  p99 {}  max {}",
            ms(self.rtt_ms.p50),
            ms(self.rtt_ms.p95),
            ms(self.rtt_ms.p99),
            ms(self.rtt_ms.max)
        );
        if let Some(steady) = &self.rtt_ms_steady {
            let _ = writeln!(
                s,
                "  after ramp  p50 {}  p95 {}  p99 {}  max {} (from {:.0} s)",
                ms(steady.rtt.p50),
                ms(steady.rtt.p95),
                ms(steady.rtt.p99),
                ms(steady.rtt.max),
                steady.from_s
            );
        }
        let _ = writeln!(
            s,
            "  bots late   p50 {}  p99 {}  max {} (behind their schedule)",
            ms(self.bot_lateness_ms.p50),
            ms(self.bot_lateness_ms.p99),
            ms(self.bot_lateness_ms.max)
        );
        let _ = writeln!(
            s,
            "  chat        sent {} delivered {} duplicates {} out-of-order {} lost {} mismatched {} rejected {} (lines received {})",
            r.sent,
            r.delivered,
            r.duplicates,
            r.out_of_order,
            r.lost,
            r.mismatched,
            r.rejected,
            r.lines_received
        );
        let m = &self.movement;
        let _ = writeln!(
            s,
            "  movement    {} inputs sent ({} skipped, served late), {} snapshots applied, snapshot errors: {}; max correction {:.2} m; {} sessions without snapshots",
            m.inputs_sent,
            m.inputs_skipped,
            m.snapshots_applied,
            map(&m.snapshot_errors),
            m.max_correction_m,
            m.sessions_without_snapshots
        );
        let i = &self.inventory;
        let _ = writeln!(
            s,
            "  inventory   sent {} ok {} lost {} unexpected {} inconsistent {} regressed {}; failed: {}; trades completed {}, items picked up {}",
            i.sent,
            i.ok,
            i.lost,
            i.unexpected,
            i.inconsistent,
            i.regressed,
            map(&i.failed),
            i.trades_completed,
            i.picked_up
        );
        match (self.bytes_per_bot_per_s.up, self.bytes_per_bot_per_s.down) {
            (Some(up), Some(down)) => {
                let _ = writeln!(
                    s,
                    "  bandwidth   {up:.0} B/s up, {down:.0} B/s down per bot"
                );
            }
            _ => {
                let _ = writeln!(s, "  bandwidth   n/a (no bot connected)");
            }
        }
        let _ = writeln!(s, "  server tick {}", self.server.run.summary());
        if let Some(steady) = &self.server.steady {
            let _ = writeln!(
                s,
                "  after ramp  {} (from {:.0} s)",
                steady.tick.summary(),
                steady.from_s
            );
        }
        if let Some(cpu) = self.bot_cpu_s {
            let wall = self.bot_cpu_wall_s.unwrap_or(self.duration_s);
            let core = |seconds: f64| 100.0 * seconds / wall.max(0.001);
            let _ = write!(s, "  bot cpu     {cpu:.2} s ({:.0}% of one core", core(cpu));
            if let Some(kernel) = self.bot_cpu_kernel_s {
                let _ = write!(s, "; kernel {:.0}%", core(kernel));
            }
            let _ = writeln!(s, ")");
        }
        if let Some(mib) = self.bot_peak_rss_mib {
            let _ = writeln!(s, "  bot memory  {mib:.0} MiB peak resident");
        }
        for note in &self.notes {
            let _ = writeln!(s, "  note: {note}");
        }
        for slo in &self.slo {
            let _ = writeln!(
                s,
                "  SLO {} {}: {}",
                slo.name,
                if slo.passed { "PASS" } else { "FAIL" },
                slo.detail
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            scenario: "default".into(),
            server_address: "127.0.0.1:7777".into(),
            requested: 10,
            connected: 9,
            connected_not_dropped: 9,
            connect_failures: BTreeMap::from([("connect_timeout".into(), 1)]),
            reconnect_failures: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            duration_s: 10.0,
            rtt_ms: Percentiles {
                p50: Some(1.0),
                p95: Some(2.0),
                p99: Some(30.0),
                max: Some(40.0),
            },
            rtt_ms_steady: None,
            bot_lateness_ms: Percentiles::default(),
            reliable: ReliableStats::default(),
            chat_rejected: BTreeMap::new(),
            chat_skipped: 0,
            movement: MovementReport::default(),
            bytes_per_bot_per_s: Bandwidth::default(),
            inventory: InventoryStats::default(),
            server: ServerReport::default(),
            bot_cpu_s: None,
            bot_cpu_kernel_s: None,
            bot_cpu_wall_s: None,
            bot_peak_rss_mib: None,
            slo: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn slos_pass_and_fail_on_the_measured_values() {
        let mut r = report();
        let slos = Slos {
            max_rtt_p99_ms: Some(25.0),
            min_connected_ratio: Some(0.9),
            require_exactly_once: true,
            ..Slos::default()
        };
        let results = slos.check(&r);
        let passed: Vec<bool> = results.iter().map(|s| s.passed).collect();
        assert_eq!(passed, [false, true, true, true]);
        r.reliable.lost = 1;
        r.rtt_ms.p99 = Some(20.0);
        let passed: Vec<bool> = slos.check(&r).iter().map(|s| s.passed).collect();
        assert_eq!(passed, [true, true, false, true]);
        r.reliable.lost = 0;
        r.inventory.lost = 2;
        let passed: Vec<bool> = slos.check(&r).iter().map(|s| s.passed).collect();
        assert_eq!(passed, [true, true, true, false]);
    }

    /// The connect storm of the ramp is not the server's steady state:
    /// with a ramp, the RTT SLO judges the samples after it.
    #[test]
    fn the_rtt_slo_judges_the_steady_state_after_a_ramp() {
        let mut r = report();
        r.rtt_ms.p99 = Some(200.0);
        let slos = Slos {
            max_rtt_p99_ms: Some(50.0),
            ..Slos::default()
        };
        assert!(!slos.check(&r)[0].passed, "no ramp: the whole run");
        r.rtt_ms_steady = Some(SteadyRtt {
            from_s: 10.0,
            rtt: Percentiles {
                p99: Some(20.0),
                ..Percentiles::default()
            },
        });
        let result = &slos.check(&r)[0];
        assert!(result.passed, "{}", result.detail);
        assert!(
            result.detail.contains("after the ramp"),
            "{}",
            result.detail
        );
        let text = r.summary();
        assert!(
            text.contains("  after ramp  p50 n/a  p95 n/a  p99 20.0 ms  max n/a (from 10 s)"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rtt_ms_steady"]["from_s"], 10.0);
        assert_eq!(json["rtt_ms_steady"]["p99"], 20.0);
        assert_eq!(json["rtt_ms"]["p99"], 200.0);
        r.rtt_ms_steady = Some(SteadyRtt::default());
        let result = &slos.check(&r)[0];
        assert!(
            !result.passed,
            "no sample after the ramp: {}",
            result.detail
        );
    }

    /// Two inventories with one version are a server bug, whatever the
    /// replies' count: the summary shows it and exactly-once fails.
    #[test]
    fn an_inconsistent_inventory_is_shown_and_fails_exactly_once() {
        let mut r = report();
        r.inventory.sent = 5;
        r.inventory.ok = 5;
        let slos = Slos {
            require_exactly_once: true,
            ..Slos::default()
        };
        assert!(slos.check(&r).iter().all(|s| s.passed), "consistent");
        r.inventory.inconsistent = 1;
        let text = r.summary();
        assert!(
            text.contains(
                "inventory   sent 5 ok 5 lost 0 unexpected 0 inconsistent 1 regressed 0;"
            ),
            "{text}"
        );
        let result = &slos.check(&r)[1];
        assert_eq!(result.name, "inventory_exactly_one_reply");
        assert!(!result.passed, "{}", result.detail);
        assert!(
            result.detail.contains("1 inconsistent"),
            "{}",
            result.detail
        );
    }

    /// A state older than one an earlier session of the bot was sent: the
    /// server lost an acknowledged change between sessions, which fails
    /// the inventory check however the requests were answered.
    #[test]
    fn a_regressed_inventory_is_shown_and_fails_exactly_once() {
        let mut r = report();
        r.inventory.sent = 5;
        r.inventory.ok = 5;
        r.inventory.regressed = 2;
        let slos = Slos {
            require_exactly_once: true,
            ..Slos::default()
        };
        let result = &slos.check(&r)[1];
        assert_eq!(result.name, "inventory_exactly_one_reply");
        assert!(!result.passed, "{}", result.detail);
        assert!(result.detail.contains("2 regressed"), "{}", result.detail);
        assert!(r.summary().contains("regressed 2;"), "{}", r.summary());
    }

    /// An own copy with another line's text fails exactly-once, and the
    /// summary and the SLO say so.
    #[test]
    fn a_mismatched_chat_copy_is_shown_and_fails_exactly_once() {
        let mut r = report();
        r.reliable.sent = 4;
        r.reliable.delivered = 4;
        r.reliable.lines_received = 4;
        r.reliable.mismatched = 1;
        let slos = Slos {
            require_exactly_once: true,
            expects_chat: true,
            ..Slos::default()
        };
        let result = &slos.check(&r)[0];
        assert_eq!(result.name, "exactly_once");
        assert!(!result.passed, "{}", result.detail);
        assert!(result.detail.contains("1 mismatched"), "{}", result.detail);
        assert!(
            r.summary().contains("lost 0 mismatched 1 rejected 0"),
            "{}",
            r.summary()
        );
    }

    /// Bots connected, but every one was dropped before its first line
    /// and request: a scenario that chats and trades verified nothing.
    #[test]
    fn exactly_once_fails_when_a_scenario_that_exchanges_exchanged_nothing() {
        let mut r = report();
        r.reliable = ReliableStats::default();
        r.inventory.sent = 0;
        let quiet = Slos {
            require_exactly_once: true,
            ..Slos::default()
        };
        assert!(
            quiet.check(&r).iter().all(|s| s.passed),
            "nothing to verify"
        );
        let slos = Slos {
            expects_chat: true,
            expects_inventory: true,
            ..quiet
        };
        let results = slos.check(&r);
        assert_eq!(results.len(), 2);
        for result in &results {
            assert!(!result.passed, "{}: {}", result.name, result.detail);
            assert!(
                result.detail.contains("nothing verified"),
                "{}",
                result.detail
            );
        }
    }

    /// Every line said was refused (or lost), none came back to its
    /// speaker: exactly-once delivery was not verified, so a scenario that
    /// chats fails, as one that said nothing does.
    #[test]
    fn exactly_once_fails_when_a_scenario_that_chats_had_no_line_delivered() {
        let mut r = report();
        r.reliable.sent = 40;
        r.reliable.rejected = 40;
        let slos = Slos {
            require_exactly_once: true,
            expects_chat: true,
            ..Slos::default()
        };
        for lines_received in [0, 12] {
            // Received: other players' lines, system lines.
            r.reliable.lines_received = lines_received;
            let result = &slos.check(&r)[0];
            assert_eq!(result.name, "exactly_once");
            assert!(!result.passed, "{lines_received}: {}", result.detail);
            assert!(
                result.detail.contains("40 said, 40 refused"),
                "{}",
                result.detail
            );
        }
        // One line came back: its delivery was verified.
        r.reliable.rejected = 39;
        r.reliable.delivered = 1;
        assert!(slos.check(&r)[0].passed, "{}", slos.check(&r)[0].detail);
        // A scenario that does not chat has nothing to verify.
        let quiet = Slos {
            expects_chat: false,
            ..slos
        };
        r.reliable.delivered = 0;
        r.reliable.rejected = 40;
        assert!(quiet.check(&r)[0].passed, "{}", quiet.check(&r)[0].detail);
    }

    #[test]
    fn exactly_once_fails_when_no_bot_connected() {
        let mut r = report();
        let slos = Slos {
            require_exactly_once: true,
            ..Slos::default()
        };
        assert!(slos.check(&r).iter().all(|s| s.passed), "nothing lost");
        r.connected = 0;
        r.connected_not_dropped = 0;
        for result in slos.check(&r) {
            assert!(!result.passed, "{}: {}", result.name, result.detail);
            assert_eq!(
                result.detail, "no bot connected: nothing exchanged to verify",
                "{}",
                result.name
            );
        }
    }

    #[test]
    fn bots_the_server_dropped_do_not_count_as_connected() {
        let mut r = report();
        let slos = Slos {
            min_connected_ratio: Some(0.9),
            ..Slos::default()
        };
        assert!(slos.check(&r)[0].passed, "9 of 10 connected");
        r.disconnects = BTreeMap::from([("timeout".into(), 9)]);
        r.connected_not_dropped =
            connected_not_dropped(r.connected, &r.disconnects, &BTreeMap::new());
        assert_eq!(r.connected_not_dropped, 0);
        let result = &slos.check(&r)[0];
        assert!(!result.passed, "every session dropped: {}", result.detail);
        assert!(result.detail.contains("9 dropped"), "{}", result.detail);
    }

    #[test]
    fn bots_whose_reconnect_failed_do_not_count_as_connected() {
        let mut r = report();
        let slos = Slos {
            min_connected_ratio: Some(0.9),
            ..Slos::default()
        };
        r.reconnect_failures = BTreeMap::from([("connection_request_timed_out".into(), 9)]);
        r.connected_not_dropped =
            connected_not_dropped(r.connected, &r.disconnects, &r.reconnect_failures);
        assert_eq!(r.connected_not_dropped, 0);
        assert!(!slos.check(&r)[0].passed, "every reconnect failed");
    }

    #[test]
    fn the_json_has_the_documented_shape() {
        let json = serde_json::to_value(report()).unwrap();
        for key in [
            "requested",
            "connected",
            "connected_not_dropped",
            "connect_failures",
            "reconnect_failures",
            "duration_s",
            "rtt_ms",
            "rtt_ms_steady",
            "bot_lateness_ms",
            "reliable",
            "bytes_per_bot_per_s",
            "inventory",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["connect_failures"]["connect_timeout"], 1);
        assert_eq!(json["rtt_ms"]["p99"], 30.0);
        assert!(json["reliable"]["lost"].is_u64());
        assert!(json["server"]["tick_ms"]["p50"].is_null());
    }

    #[test]
    fn the_summary_names_every_section() {
        let text = report().summary();
        for word in [
            "bots",
            "rtt",
            "bots late",
            "chat",
            "movement",
            "inventory",
            "server tick",
        ] {
            assert!(text.contains(word), "{text}");
        }
    }

    #[test]
    fn the_bots_cpu_is_reported_with_its_kernel_share() {
        let mut r = report();
        r.bot_cpu_s = Some(5.0);
        r.bot_cpu_kernel_s = Some(2.0);
        let text = r.summary();
        assert!(
            text.contains("bot cpu     5.00 s (50% of one core; kernel 20%)"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["bot_cpu_kernel_s"], 2.0);

        // Spent over the run (10 s) and an 8 s drain after it.
        r.bot_cpu_wall_s = Some(18.0);
        let text = r.summary();
        assert!(
            text.contains("bot cpu     5.00 s (28% of one core; kernel 11%)"),
            "{text}"
        );
        assert_eq!(serde_json::to_value(&r).unwrap()["bot_cpu_wall_s"], 18.0);
    }

    #[test]
    fn the_steady_window_has_its_own_line_and_keys() {
        let mut r = report();
        assert!(!r.summary().contains("after ramp"));
        r.server.run.overruns = Some(3.0);
        r.server.steady = Some(SteadyWindow {
            from_s: 12.0,
            tick: TickWindow {
                tick_ms: TickPercentiles {
                    p50: Some(7.0),
                    p99: Some(15.5),
                    max: Some(22.6),
                },
                overruns: Some(0.0),
                beyond_buckets: Some(0.0),
            },
        });
        r.server.run.beyond_buckets = Some(2.0);
        assert!(
            r.summary()
                .contains("(2 above the largest bucket: max is more)"),
            "{}",
            r.summary()
        );
        let text = r.summary();
        assert!(text.contains("overruns 3"), "{text}");
        assert!(
            text.contains(
                "after ramp  p50 7.0 ms  p99 15.5 ms  max 22.6 ms  overruns 0 (from 12 s)"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["server"]["overruns"], 3.0);
        assert_eq!(json["server"]["steady"]["from_s"], 12.0);
        assert_eq!(json["server"]["steady"]["tick_ms"]["p99"], 15.5);
        assert_eq!(json["server"]["steady"]["overruns"], 0.0);
    }

    #[test]
    fn the_bots_peak_memory_is_reported() {
        let mut r = report();
        assert!(!r.summary().contains("bot memory"));
        r.bot_peak_rss_mib = Some(812.4);
        let text = r.summary();
        assert!(text.contains("bot memory  812 MiB peak resident"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["bot_peak_rss_mib"], 812.4);
    }
}
