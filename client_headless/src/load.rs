//! `client_headless load`: run the swarm, watch it once per second, stop,
//! drain, report.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use shared::protocol::channels;
use shared::sim::LinkConfig;

use crate::bot::{BotContext, WorkerStats, new_micros_histogram};
use crate::chart::{self, Sample};
use crate::prom::{self, MetricsTarget, ServerSample};
use crate::report::{
    Bandwidth, MovementReport, Percentiles, Report, ServerReport, Slos, SteadyRtt, SteadyWindow,
    TickPercentiles, TickWindow, connected_not_dropped,
};
use crate::scenario::Scenario;
use crate::swarm::{self, SourceIps, WorkerHandle};
use crate::token::TokenMinter;
use crate::verify::ReliableStats;

/// Most worker threads (`--threads`).
pub(crate) const MAX_THREADS: u64 = 64;
/// Timeout of each metrics scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the metrics host's name may take to resolve before the run
/// (a scrape waits for it only within its own timeout).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A p99 lateness of the bots above this (ms) gets a note in the report.
const LATE_NOTE_MS: f64 = 5.0;

/// Everything `load` needs, resolved from the command line.
pub(crate) struct LoadPlan {
    /// The server.
    pub(crate) server: SocketAddr,
    /// Bots.
    pub(crate) bots: u64,
    /// Seconds from the first start to the stop signal.
    pub(crate) duration: Duration,
    /// Bots start evenly spread over this.
    pub(crate) ramp: Duration,
    /// The scenario.
    pub(crate) scenario: Scenario,
    /// Tokens.
    pub(crate) minter: TokenMinter,
    /// The conditioner, if any flag asked for one.
    pub(crate) link: Option<LinkConfig>,
    /// The server's metrics page.
    pub(crate) metrics_url: String,
    /// Worker threads, 1 to [`MAX_THREADS`].
    pub(crate) threads: usize,
    /// Source addresses.
    pub(crate) sources: SourceIps,
    /// Account id of the first bot.
    pub(crate) first_account: u64,
    /// Longest wait for in-flight chat at the end.
    pub(crate) drain_timeout: Duration,
    /// JSON report file.
    pub(crate) report: Option<PathBuf>,
    /// SVG chart file.
    pub(crate) chart: Option<PathBuf>,
    /// SLOs.
    pub(crate) slos: Slos,
    /// Seed of the conditioners and behaviours.
    pub(crate) seed: u64,
}

/// Runs the test; `Ok(true)` when every SLO held.
/// Longest the run waits before it notices an interrupt.
const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

/// Set by the first SIGINT or SIGTERM: the run stops early, draining and
/// saying goodbye as at its end, and writes its report; a second one ends
/// the process at once (exit 128 + the signal). Without handlers (they
/// could not be installed) the signals keep their default action.
fn interrupt_flag() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // The exit check first: it must see the flag the previous signal set.
        let installed =
            flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&interrupted))
                .and_then(|_| flag::register(signal, Arc::clone(&interrupted)));
        if let Err(error) = installed {
            eprintln!("warning: cannot handle signal {signal} ({error}): it ends the run at once");
        }
    }
    interrupted
}

pub(crate) fn run(plan: LoadPlan) -> Result<bool, String> {
    // A URL that is no `http://` one fails each scrape, like a server
    // that does not answer.
    let mut metrics = MetricsTarget::new(&plan.metrics_url);
    if let Ok(target) = &mut metrics {
        target.resolve_within(RESOLVE_TIMEOUT);
    }
    let baseline = scrape(&mut metrics);
    let mut notes = Vec::new();
    // Why the last scrape failed, while none has answered.
    let mut unanswered = baseline.as_ref().err().cloned();
    if let Some(error) = &unanswered {
        eprintln!("warning: server metrics unavailable ({error}); trying again every second");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = interrupt_flag();
    let start = Instant::now();
    let ctx = Arc::new(BotContext {
        server: plan.server,
        minter: plan.minter.clone(),
        scenario: plan.scenario.clone(),
        link: plan.link.clone(),
        first_account: plan.first_account,
        bots: plan.bots,
        drain_timeout: plan.drain_timeout,
        transport: Arc::new(channels::transport_config()),
        steady_from: start + plan.ramp,
    });
    let threads = plan.threads;
    let mut shares: Vec<Vec<(u64, Instant)>> = vec![Vec::new(); threads];
    for i in 0..plan.bots {
        let offset = if plan.bots > 1 {
            plan.ramp.mul_f64(i as f64 / plan.bots as f64)
        } else {
            Duration::ZERO
        };
        shares[(i as usize) % threads].push((plan.first_account + i, start + offset));
    }
    let mut workers = Vec::with_capacity(threads);
    for (index, share) in shares.into_iter().enumerate() {
        let worker = swarm::spawn_worker(
            index,
            Arc::clone(&ctx),
            share,
            plan.sources,
            Arc::clone(&stop),
            plan.seed,
        )
        .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        workers.push(worker);
    }

    let progress = Progress::new(plan.bots, plan.duration);
    let mut samples = Vec::new();
    // The first scrape that answered, and how far into the run it came
    // (0: the baseline, before the first bot): the server's figures start
    // there.
    let mut first_scrape: Option<(f64, ServerSample)> = baseline.ok().map(|b| (0.0, b));
    let mut previous_scrape = first_scrape.as_ref().map(|(_, b)| b.clone());
    let mut last_scrape = previous_scrape.clone();
    // Seconds into the run of `last_scrape`.
    let mut last_scrape_t = 0.0;
    // The first scrape after the ramp, and how far into the run it came.
    let mut after_ramp: Option<(f64, ServerSample)> = None;
    let mut window = new_micros_histogram();
    let end = start + plan.duration;
    let mut next_sample = start + Duration::from_secs(1);
    while Instant::now() < end && !interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(
            next_sample
                .saturating_duration_since(Instant::now())
                .min(end.saturating_duration_since(Instant::now()))
                .min(INTERRUPT_CHECK),
        );
        let now = Instant::now();
        if now < next_sample {
            continue;
        }
        next_sample += Duration::from_secs(1);
        let (connected, errors) = collect_live(&workers, &mut window);
        let mut sample = Sample {
            t: now.duration_since(start).as_secs_f64(),
            connected: connected as f64,
            rtt: [0.5, 0.95, 0.99].map(|q| quantile_ms(&window, q)),
            tick: [None, None],
        };
        window.reset();
        match scrape(&mut metrics) {
            Ok(current) => {
                if let (Some(now_tick), Some(before)) = (
                    current.tick.as_ref(),
                    previous_scrape.as_ref().and_then(|p| p.tick.as_ref()),
                ) {
                    let delta = now_tick.since(before);
                    sample.tick = [0.5, 0.99].map(|q| delta.quantile(q).map(|s| s * 1000.0));
                }
                if first_scrape.is_none() {
                    first_scrape = Some((sample.t, current.clone()));
                }
                // Without a ramp the whole run is its steady state: no
                // window of its own (as `rtt_ms_steady`).
                if after_ramp.is_none() && !plan.ramp.is_zero() && now >= start + plan.ramp {
                    after_ramp = Some((sample.t, current.clone()));
                }
                previous_scrape = Some(current.clone());
                last_scrape = Some(current);
                last_scrape_t = sample.t;
            }
            Err(error) => {
                if first_scrape.is_none() {
                    unanswered = Some(error);
                }
            }
        }
        progress.update(&sample, errors);
        samples.push(sample);
    }
    let duration_s = start.elapsed().as_secs_f64();
    let interrupted = interrupted.load(Ordering::Relaxed);
    if interrupted {
        let note = format!(
            "interrupted {duration_s:.1} s into a run of {} s: the figures cover that much",
            plan.duration.as_secs_f64()
        );
        progress.message(&note);
        notes.push(note);
    }
    // The last scrape before the stop: the server's figures end while
    // every bot still plays, not in the tick that takes their goodbyes.
    let mut server_complete = false;
    let final_scrape = match scrape(&mut metrics) {
        Ok(last) => {
            server_complete = true;
            if first_scrape.is_none() {
                first_scrape = Some((duration_s, last.clone()));
            }
            Some(last)
        }
        Err(error) => {
            if let Some((from, _)) = &first_scrape {
                let note = format!(
                    "the server's metrics did not answer at the end ({error}); its figures \
                     cover {from:.0} s to {last_scrape_t:.0} s of {duration_s:.0} s"
                );
                eprintln!("warning: {note}");
                notes.push(note);
            } else {
                unanswered = Some(error);
            }
            last_scrape
        }
    };
    progress.message("stopping: waiting for in-flight chat, then leaving");
    stop.store(true, Ordering::Relaxed);
    match (&first_scrape, &unanswered) {
        (None, Some(error)) => {
            notes.push(format!(
                "server metrics unavailable ({error}); server figures are null"
            ));
        }
        (Some((from, _)), Some(error)) => {
            notes.push(format!(
                "the server's metrics first answered {from:.0} s into the run (before: \
                 {error}); its figures start there, not at the run's start"
            ));
        }
        _ => {}
    }
    let mut stats = WorkerStats::new();
    let mut reliable = ReliableStats::default();
    let mut failures = Vec::new();
    for worker in workers {
        // Every worker is joined (each drains and says goodbye), and the
        // report written, whichever of them panicked.
        let Ok(result) = worker.thread.join() else {
            let failure = "a worker thread panicked".to_owned();
            notes.push(format!("{failure}: its bots' figures are missing"));
            failures.push(failure);
            continue;
        };
        merge(&mut stats, result.stats);
        reliable.add(&result.reliable);
        if let Some(failure) = result.failure {
            notes.push(format!(
                "a bot worker stopped early ({failure}): its bots ended there"
            ));
            failures.push(failure);
        }
    }
    progress.finish();

    // None when no bot connected: no rate to report.
    let connected_secs = Some(stats.connected_time.as_secs_f64()).filter(|s| *s > 0.0);
    let rtt_ms = percentiles_ms(&stats.rtt_us);
    let rtt_ms_steady = (!plan.ramp.is_zero()).then(|| SteadyRtt {
        from_s: plan.ramp.as_secs_f64(),
        rtt: percentiles_ms(&stats.rtt_steady_us),
    });
    let bot_lateness_ms = percentiles_ms(&stats.lateness_us);
    if let Some(late) = bot_lateness_ms.p99.filter(|&p99| p99 > LATE_NOTE_MS) {
        notes.push(format!(
            "the bots ran up to {late:.1} ms behind their schedule (p99): the bot process was \
             short of CPU, so replies also waited to be read, and the RTT carries that delay"
        ));
    }
    let server = ServerReport {
        complete: server_complete,
        ..server_report(
            &plan.metrics_url,
            first_scrape.as_ref().map(|(t, sample)| (*t, sample)),
            after_ramp.as_ref().map(|(t, sample)| (*t, sample)),
            final_scrape.as_ref(),
        )
    };
    if plan.scenario.chat.is_some() && reliable.delivered == 0 {
        notes.push(format!(
            "no chat line came back to its speaker ({} said, {} refused, {} other lines \
             received): exactly-once delivery could not be verified",
            reliable.sent, reliable.rejected, reliable.lines_received
        ));
    }
    let chat_skipped = format!(
        "chat slots skipped: {} lines of the bot were still unanswered",
        crate::verify::MAX_IN_FLIGHT
    );
    let counted: [(u64, &str); 7] = [
        (
            stats.inventory.inconsistent,
            "inventory states contradicted one seen before (two inventories with one \
             version): a server bug",
        ),
        (
            stats.inventory.regressed,
            "inventory states were older than one an earlier session of the bot was sent \
             (an acknowledged change lost between sessions): a server bug",
        ),
        (
            stats.no_snapshots,
            "sessions sent movement input but never received a snapshot",
        ),
        (stats.chat_skipped, &chat_skipped),
        (
            stats.decode_errors,
            "messages from the server could not be decoded",
        ),
        (
            stats.send_drops,
            "datagrams refused by the bots' sockets (send buffer full): the server never \
             saw them, and their bytes are not in bytes up",
        ),
        (
            stats.send_errors,
            "messages refused by the transport (queue full)",
        ),
    ];
    for (count, what) in counted {
        if count > 0 {
            notes.push(format!("{count} {what}"));
        }
    }
    let cpu = process_cpu();
    let cpu_wall_s = start.elapsed().as_secs_f64();
    let mut report = Report {
        scenario: plan.scenario.name.clone(),
        server_address: plan.server.to_string(),
        requested: plan.bots,
        connected: stats.ever_connected,
        connected_not_dropped: connected_not_dropped(
            stats.ever_connected,
            &stats.disconnects,
            &stats.reconnect_failures,
        ),
        connect_failures: stats.connect_failures.clone(),
        reconnect_failures: stats.reconnect_failures.clone(),
        disconnects: stats.disconnects.clone(),
        duration_s,
        rtt_ms,
        rtt_ms_steady,
        bot_lateness_ms,
        reliable,
        chat_rejected: stats.chat_rejected.clone(),
        chat_skipped: stats.chat_skipped,
        movement: MovementReport {
            inputs_sent: stats.moves_sent,
            inputs_skipped: stats.moves_skipped,
            snapshots_applied: stats.snapshots_applied,
            snapshot_errors: stats.snapshot_errors.clone(),
            sessions_without_snapshots: stats.no_snapshots,
            max_correction_m: f64::from(stats.max_correction_m),
        },
        bytes_per_bot_per_s: Bandwidth {
            up: connected_secs.map(|s| stats.bytes_up as f64 / s),
            down: connected_secs.map(|s| stats.bytes_down as f64 / s),
        },
        inventory: stats.inventory.clone(),
        server,
        bot_cpu_s: cpu.map(|c| c.user_s + c.kernel_s),
        bot_cpu_kernel_s: cpu.map(|c| c.kernel_s),
        bot_cpu_wall_s: cpu.map(|_| cpu_wall_s),
        bot_peak_rss_mib: peak_rss_mib(),
        slo: Vec::new(),
        notes,
    };
    report.slo = plan.slos.check(&report);
    say(format_args!("{}", report.summary()));
    if let Some(path) = &plan.report {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        say(format_args!("report written to {}\n", path.display()));
    }
    if let Some(path) = &plan.chart {
        let title = format!(
            "{} bots, scenario '{}', {}",
            plan.bots, plan.scenario.name, plan.server
        );
        std::fs::write(path, chart::render(&title, &samples))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        say(format_args!("chart written to {}\n", path.display()));
    }
    if !failures.is_empty() {
        return Err(format!(
            "the run is incomplete: a bot worker stopped early ({})",
            failures.join("; ")
        ));
    }
    if interrupted {
        return Err(format!(
            "interrupted after {duration_s:.1} s: the run did not complete"
        ));
    }
    if report.connected == 0 {
        // Nothing was measured: no SLO can hold, asked for or not (a smoke
        // test against a server that is down must not pass).
        let why: Vec<String> = (report.connect_failures.iter())
            .map(|(reason, bots)| format!("{bots} {reason}"))
            .collect();
        return Err(format!(
            "no bot connected to {} ({}): the run measured nothing",
            plan.server,
            why.join(", ")
        ));
    }
    Ok(report.slo.iter().all(|s| s.passed))
}

fn scrape(metrics: &mut Result<MetricsTarget, String>) -> Result<ServerSample, String> {
    let target = metrics.as_mut().map_err(|e| e.clone())?;
    let sample = prom::parse_sample(&target.fetch(SCRAPE_TIMEOUT)?);
    // A page without the server's tick is no measurement of it (another
    // exporter on the port, node_exporter's default 9100 among them).
    match sample.tick {
        Some(_) => Ok(sample),
        None => Err(format!(
            "the page has no {}: not the game server's metrics?",
            prom::TICK_DURATION
        )),
    }
}

/// The server's figures over the run (`first`, the first scrape that
/// answered, taken `from_s` seconds in, to `last`) and over its steady
/// state (`after_ramp`, idem).
fn server_report(
    url: &str,
    first: Option<(f64, &ServerSample)>,
    after_ramp: Option<(f64, &ServerSample)>,
    last: Option<&ServerSample>,
) -> ServerReport {
    let mut out = ServerReport {
        metrics_url: url.to_owned(),
        ..ServerReport::default()
    };
    let (Some((from_s, first)), Some(last)) = (first, last) else {
        return out;
    };
    out.from_s = Some(from_s);
    out.run = tick_window(first, last);
    out.steady = after_ramp.map(|(from_s, first)| SteadyWindow {
        from_s,
        tick: tick_window(first, last),
    });
    out
}

/// The tick between two scrapes of the server's metrics: nothing when it
/// counted no tick in between (the same scrape twice, or a server that
/// stopped ticking), not zero overruns.
fn tick_window(first: &ServerSample, last: &ServerSample) -> TickWindow {
    let mut out = TickWindow::default();
    if let Some(tick) = &last.tick {
        let run = first
            .tick
            .as_ref()
            .map_or_else(|| tick.clone(), |f| tick.since(f));
        if run.count() <= 0.0 {
            return out;
        }
        let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
        out.tick_ms = TickPercentiles {
            p50: ms(run.quantile(0.5)),
            p99: ms(run.quantile(0.99)),
            max: ms(run.max()),
        };
        out.beyond_buckets = Some(run.beyond_finite());
    }
    // A counter that went down is a restarted server's: all of it is new,
    // as the histogram's `since` reads it.
    out.overruns = last.overruns.map(|o| match first.overruns {
        Some(before) if before <= o => o - before,
        _ => o,
    });
    out
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

/// The percentiles of a histogram of microseconds, in milliseconds.
fn percentiles_ms(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: quantile_ms(h, 0.5),
        p95: quantile_ms(h, 0.95),
        p99: quantile_ms(h, 0.99),
        max: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
    }
}

fn collect_live(workers: &[WorkerHandle], window: &mut Histogram<u64>) -> (u64, u64) {
    let mut connected = 0;
    let mut errors = 0;
    for worker in workers {
        let mut live = worker.live.lock().unwrap_or_else(PoisonError::into_inner);
        connected += live.connected_now;
        errors += live.errors;
        let _ = window.add(&live.rtt_window_us);
        live.rtt_window_us.reset();
    }
    (connected, errors)
}

fn merge_map(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

fn merge(into: &mut WorkerStats, from: WorkerStats) {
    into.connected_now += from.connected_now;
    into.ever_connected += from.ever_connected;
    merge_map(&mut into.connect_failures, from.connect_failures);
    merge_map(&mut into.reconnect_failures, from.reconnect_failures);
    merge_map(&mut into.disconnects, from.disconnects);
    let _ = into.rtt_us.add(&from.rtt_us);
    let _ = into.rtt_steady_us.add(&from.rtt_steady_us);
    let _ = into.lateness_us.add(&from.lateness_us);
    into.bytes_up += from.bytes_up;
    into.bytes_down += from.bytes_down;
    into.connected_time += from.connected_time;
    into.inventory.add(&from.inventory);
    merge_map(&mut into.chat_rejected, from.chat_rejected);
    into.chat_skipped += from.chat_skipped;
    into.moves_sent += from.moves_sent;
    into.moves_skipped += from.moves_skipped;
    into.snapshots_applied += from.snapshots_applied;
    merge_map(&mut into.snapshot_errors, from.snapshot_errors);
    into.max_correction_m = into.max_correction_m.max(from.max_correction_m);
    into.no_snapshots += from.no_snapshots;
    into.send_errors += from.send_errors;
    into.send_drops += from.send_drops;
    into.decode_errors += from.decode_errors;
}

/// CPU seconds this process used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessCpu {
    /// In user space.
    pub(crate) user_s: f64,
    /// In the kernel on its behalf: for a bot swarm mostly the UDP path of
    /// every datagram, which no change to the bots removes.
    pub(crate) kernel_s: f64,
}

/// This process's CPU time from `/proc/self/stat` (Linux; `None` elsewhere).
pub(crate) fn process_cpu() -> Option<ProcessCpu> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every mainstream Linux configuration.
    Some(ProcessCpu {
        user_s: utime / 100.0,
        kernel_s: stime / 100.0,
    })
}

/// This process's peak resident set, MiB, from `VmHWM` in
/// `/proc/self/status` (Linux; `None` elsewhere).
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm_mib(&status)
}

fn parse_vm_hwm_mib(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The progress display: a bar on a terminal, one plain line per second
/// otherwise (CI logs, pipes).
struct Progress {
    bar: Option<ProgressBar>,
}

/// A second of the run, as the progress line shows it: bots connected,
/// their RTT, the server's tick (when its metrics are read) and errors.
fn progress_line(sample: &Sample, errors: u64) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    format!(
        "{:.0} connected  rtt p50 {} p99 {} ms  server tick p50 {} p99 {} ms  errors {}",
        sample.connected,
        ms(sample.rtt[0]),
        ms(sample.rtt[2]),
        ms(sample.tick[0]),
        ms(sample.tick[1]),
        errors
    )
}

/// Writes `text` to stdout. A reader that went away (`load ... | head`)
/// is not the run's end: the bots run on, say goodbye and the report is
/// written; only the printing stops (`print!` would panic, leaving the
/// server holding every bot's slot and no report).
fn say(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_fmt(text);
}

impl Progress {
    fn new(bots: u64, duration: Duration) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(duration.as_secs().max(1));
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("0/{bots} connected"));
            bar
        });
        Self { bar }
    }

    fn update(&self, sample: &Sample, errors: u64) {
        let line = progress_line(sample, errors);
        match &self.bar {
            Some(bar) => {
                bar.set_position(sample.t as u64);
                bar.set_message(line);
            }
            None => say(format_args!("[{:>5.0} s] {line}\n", sample.t)),
        }
    }

    fn message(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(text.to_owned()),
            None => say(format_args!("{text}\n")),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// The text of a metrics page whose tick histogram holds `fast` ticks
    /// under 1 ms and `slow` over 32 ms, `overruns` of them counted.
    fn page_text(fast: u32, slow: u32, overruns: u32) -> String {
        let all = fast + slow;
        format!(
            "server_tick_duration_seconds_bucket{{le=\"0.001\"}} {fast}\n\
             server_tick_duration_seconds_bucket{{le=\"0.032\"}} {fast}\n\
             server_tick_duration_seconds_bucket{{le=\"0.064\"}} {all}\n\
             server_tick_duration_seconds_bucket{{le=\"+Inf\"}} {all}\n\
             server_tick_duration_seconds_count {all}\n\
             server_tick_overruns_total {overruns}\n"
        )
    }

    /// [`page_text`], parsed.
    fn page(fast: u32, slow: u32, overruns: u32) -> ServerSample {
        prom::parse_sample(&page_text(fast, slow, overruns))
    }

    /// A metrics server that takes connections but answers none for
    /// `silent`, then serves a page with 100 more fast ticks each time.
    fn metrics_silent_for(silent: Duration) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let opened = Instant::now();
        std::thread::spawn(move || {
            let mut unanswered = Vec::new();
            for (scrape, stream) in (1..).zip(listener.incoming()) {
                let Ok(mut stream) = stream else { return };
                if opened.elapsed() < silent {
                    unanswered.push(stream);
                    continue;
                }
                prom::tests::read_request(&mut stream);
                let page = page_text(100 * scrape, 0, 0);
                let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{page}");
            }
        });
        url
    }

    /// A metrics server that always serves `page`.
    fn metrics_serving(page: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                prom::tests::read_request(&mut stream);
                let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{page}");
            }
        });
        url
    }

    /// A plan of one bot for `duration` against a game address nothing
    /// answers on (the bot never connects), its report in `report`.
    fn plan_without_server(
        metrics_url: String,
        duration: Duration,
        report: &std::path::Path,
    ) -> LoadPlan {
        let server = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        LoadPlan {
            server,
            bots: 1,
            duration,
            ramp: Duration::ZERO,
            scenario: Scenario::parse(crate::scenario::DEFAULT_TOML, "default.toml").unwrap(),
            minter: TokenMinter::dev(server),
            link: None,
            metrics_url,
            threads: 1,
            sources: SourceIps::Any,
            first_account: 1,
            drain_timeout: Duration::from_secs(1),
            report: Some(report.to_owned()),
            chart: None,
            slos: Slos::default(),
            seed: 1,
        }
    }

    /// A page that answers without the server's series (another exporter
    /// on the port) is no measurement of the server: the report says so
    /// and is incomplete (it read as a full measurement with null figures).
    #[test]
    fn a_metrics_page_without_the_servers_series_is_no_measurement() {
        let dir = std::env::temp_dir().join(format!("load-other-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        let url = metrics_serving("node_load1 0.5\n");
        // No server answers: the run fails, and its report still says why.
        let error = run(plan_without_server(url, Duration::from_secs(2), &report)).unwrap_err();
        assert!(error.contains("no bot connected"), "{error}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let server = &json["server"];
        assert_eq!(server["complete"], false, "{server}");
        let notes = json["notes"].to_string();
        assert!(
            notes.contains(prom::TICK_DURATION),
            "the notes do not say why: {notes}"
        );
    }

    /// The server's metrics answer nothing for 1.5 s, so the scrape
    /// before the run times out: those that answer later still measure
    /// the server, from the first of them.
    #[test]
    fn metrics_that_answer_late_still_give_the_servers_figures() {
        let dir = std::env::temp_dir().join(format!("load-late-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        let url = metrics_silent_for(Duration::from_millis(1_500));
        let plan = plan_without_server(url, Duration::from_secs(3), &report);
        let error = run(plan).unwrap_err();
        assert!(error.contains("no bot connected"), "{error}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let server = &json["server"];
        assert!(server["tick_ms"]["p50"].is_number(), "{server}");
        assert_eq!(server["overruns"], 0.0, "{server}");
        assert_eq!(server["complete"], true, "{server} {}", json["notes"]);
        let from = server["from_s"].as_f64().unwrap();
        assert!((0.5..3.0).contains(&from), "{server}");
        let notes = json["notes"].to_string();
        assert!(notes.contains("first answered"), "{notes}");
        // No ramp: no window after it.
        assert!(server["steady"].is_null(), "{server}");
    }

    /// The run's last scrape of the server's metrics is answered before
    /// any bot leaves: the run's figures, the steady window's too, end
    /// before the tick that takes the goodbyes (it went out after the
    /// bots were told to stop, and a slow answer counted them in). The
    /// stand-in page counts every goodbye the server has seen as an
    /// overrun, and answers 100 ms after each request.
    #[test]
    fn the_last_scrape_is_answered_before_the_bots_leave() {
        use std::sync::atomic::AtomicU32;

        use shared::endpoint::{EndpointEvent, ServerEndpoint, ServerEndpointConfig};
        use shared::io::{system_rng, unix_secs};
        use shared::netcode::{MAX_PACKET_BYTES, ServerConfig};
        use shared::protocol::{PROTOCOL_ID, channels};

        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let server = socket.local_addr().unwrap();
        let goodbyes = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let game = std::thread::spawn({
            let (goodbyes, done) = (Arc::clone(&goodbyes), Arc::clone(&done));
            move || {
                let netcode = ServerConfig::new(PROTOCOL_ID, shared::keys::dev_key(), vec![server]);
                let config = ServerEndpointConfig::new(netcode, channels::transport_config());
                let mut endpoint = ServerEndpoint::new(config, &mut system_rng()).unwrap();
                let mut buf = vec![0; MAX_PACKET_BYTES + 1];
                while !done.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = socket.recv_from(&mut buf) {
                        endpoint.handle_datagram(
                            Instant::now(),
                            unix_secs(),
                            from,
                            &mut buf[..len],
                        );
                    }
                    let now = Instant::now();
                    if endpoint.poll_timeout().is_some_and(|t| t <= now) {
                        endpoint.handle_timeout(now);
                    }
                    while let Some(event) = endpoint.poll_event() {
                        if let EndpointEvent::Disconnected { .. } = event {
                            goodbyes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    while let Some(transmit) = endpoint.poll_transmit(now, &mut buf) {
                        let _ = socket.send_to(&buf[..transmit.len], transmit.destination);
                    }
                }
            }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
        std::thread::spawn({
            let goodbyes = Arc::clone(&goodbyes);
            move || {
                for (scrape, stream) in (1..).zip(listener.incoming()) {
                    let Ok(mut stream) = stream else { return };
                    prom::tests::read_request(&mut stream);
                    std::thread::sleep(Duration::from_millis(100));
                    let page = page_text(100 * scrape, 0, goodbyes.load(Ordering::Relaxed));
                    let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{page}");
                }
            }
        });
        let dir = std::env::temp_dir().join(format!("load-last-scrape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        let walk = "name = \"walk\"\n[wander]\nhz = 10.0\nspeed = 1.0\nturn_every_s = 1.0\n";
        let plan = LoadPlan {
            server,
            minter: TokenMinter::dev(server),
            scenario: Scenario::parse(walk, "walk.toml").unwrap(),
            ..plan_without_server(metrics_url, Duration::from_secs(2), &report)
        };
        run(plan).unwrap();
        // The goodbye may still be on its way to the game thread.
        let deadline = Instant::now() + Duration::from_secs(5);
        while goodbyes.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Relaxed);
        game.join().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(goodbyes.load(Ordering::Relaxed), 1, "the bot left");
        assert_eq!(json["connected"], 1, "{json}");
        let server = &json["server"];
        assert_eq!(server["complete"], true, "{server}");
        assert_eq!(server["overruns"], 0.0, "{server}");
    }

    #[test]
    fn each_second_shows_the_servers_tick() {
        let mut sample = Sample {
            t: 3.0,
            connected: 120.0,
            rtt: [Some(12.34), None, Some(30.0)],
            tick: [None, None],
        };
        assert_eq!(
            progress_line(&sample, 2),
            "120 connected  rtt p50 12.3 p99 30.0 ms  server tick p50 - p99 - ms  errors 2"
        );
        sample.tick = [Some(6.9), Some(15.55)];
        assert!(
            progress_line(&sample, 0).contains("server tick p50 6.9 p99 15.6 ms"),
            "{}",
            progress_line(&sample, 0)
        );
    }

    #[test]
    fn the_steady_window_leaves_out_what_the_ramp_did() {
        let baseline = page(0, 0, 0);
        // The ramp: 100 ticks, 5 of them overran.
        let after_ramp = page(95, 5, 5);
        // Then 1,000 fast ticks.
        let last = page(1095, 5, 5);
        let report = server_report(
            "url",
            Some((0.0, &baseline)),
            Some((10.0, &after_ramp)),
            Some(&last),
        );
        assert_eq!(report.run.overruns, Some(5.0));
        assert!(report.run.tick_ms.max.is_some_and(|m| m > 32.0));
        let steady = report.steady.expect("a steady window");
        assert_eq!(steady.from_s, 10.0);
        assert_eq!(steady.tick.overruns, Some(0.0));
        assert!(
            steady.tick.tick_ms.max.is_some_and(|m| m <= 1.0),
            "{steady:?}"
        );
        let none = server_report("url", Some((0.0, &baseline)), None, Some(&last));
        assert_eq!(none.steady, None);
    }

    /// The end-of-run scrape failed and none came after the baseline: the
    /// window is empty, which is no measurement (capacity.sh printed "0"
    /// overruns next to no tick figures).
    #[test]
    fn an_empty_window_measures_nothing() {
        let baseline = page(100, 0, 0);
        let report = server_report("url", Some((0.0, &baseline)), None, Some(&baseline));
        assert_eq!(report.run, TickWindow::default());
        assert_eq!(report.run.overruns, None);
        assert_eq!(report.run.beyond_buckets, None);
    }

    #[test]
    fn a_server_restarted_during_the_run_counts_its_new_overruns() {
        let before = page(1000, 10, 10);
        let restarted = page(500, 3, 3);
        let report = server_report("url", Some((0.0, &before)), None, Some(&restarted));
        assert_eq!(report.run.overruns, Some(3.0));
        assert!(report.run.tick_ms.max.is_some_and(|m| m > 32.0));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let total = || process_cpu().map(|c| c.user_s + c.kernel_s).unwrap();
        let before = total();
        assert!((0.0..3600.0).contains(&before), "{before}");
        // Spin until the counters show 50 ms more (10 ms ticks), for at
        // most 20 s of wall time on a loaded host.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut spun = 0u64;
        while total() < before + 0.05 {
            assert!(
                std::time::Instant::now() < deadline,
                "20 s of spinning did not show in /proc: {before} s before, {} s now",
                total()
            );
            for i in 0..100_000u64 {
                spun = std::hint::black_box(spun.wrapping_add(i * i));
            }
        }
    }

    #[test]
    fn the_peak_resident_set_is_read_from_vm_hwm() {
        let status =
            "Name:\tclient_headless\nVmPeak:\t 9000 kB\nVmHWM:\t  51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm_mib(status), Some(50.0));
        assert_eq!(parse_vm_hwm_mib("VmRSS:\t 40000 kB\n"), None);
        assert_eq!(parse_vm_hwm_mib("VmHWM:\t lots\n"), None);
        // This process: at least the 8 MiB just touched.
        let touched = std::hint::black_box(vec![1u8; 8 << 20]);
        assert!(peak_rss_mib().unwrap() >= 8.0);
        drop(touched);
    }
}
