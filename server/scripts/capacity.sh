#!/usr/bin/env bash
# Capacity benchmark: one fresh server per point, N bots of a scenario, a
# markdown table on stdout.
#
#   server/scripts/capacity.sh [N ...]          (default: 500 1000 2000 5000)
#
# Environment (all optional):
#   CARGO_TARGET_DIR   where the release binaries are built [target]
#   SCENARIO           scenario file [assets/scenarios/default.toml]
#   RUN_SECS           measured seconds after the ramp [20; at least 2]
#   RUNS               runs per point, each with a fresh server [1]; the
#                      table gives each figure's median over them (the
#                      fewest connected, the most overruns); every run's
#                      own row goes to stderr as it ends
#   SERVER_CORE        core the server is pinned to [0]
#   BOT_CORE           core the bots are pinned to [1]
#   BASE_PORT          first UDP port; run i uses BASE_PORT+i [17900]
#   OUT_DIR            where reports and logs go [a fresh mktemp -d]; each
#                      run's figures are in run-N.json (run-N.K.json when
#                      RUNS > 1), beside its report, logs and data dir
#   SKIP_BUILD=1       do not run cargo build
#   SERVER_BIN         server binary [$CARGO_TARGET_DIR/release/server]
#                      (e.g. a copy of an older build, for an A/B run)
#   BOTS_BIN           bot binary [$CARGO_TARGET_DIR/release/client_headless]
#                      (idem, to compare the bots' own CPU)
#
# Per run: the server starts pinned to SERVER_CORE on loopback with a fresh
# data dir; the bots (`client_headless load`) start pinned to BOT_CORE with a
# ramp of max(5, N/500) s and a duration of ramp + RUN_SECS. Server CPU is
# utime+stime from /proc/PID/stat (and per thread from /proc/PID/task/*/stat)
# sampled when the bots start and when they exit; cores = cpu seconds / wall
# seconds of that window (ramp, run and drain); steady cores = the same over
# the run alone (end of the ramp to a second before the end), split into
# user and kernel time (utime, stime: the kernel's share is the UDP path,
# which on loopback also delivers to the receiving socket). Datagrams and
# UDP payload bytes per bot per second in (up) and out (down), as the
# server counted them over the steady window (from the answer of the
# metrics scrape that opens it to that of the one that closes it; none if
# that came after the bots stopped) per client it had connected (the mean
# of its `connected_clients` at the two ends), the datagrams the kernel
# dropped at the server's full socket buffer and net-io's wakeups per
# second (over the whole window) come from its /metrics. Tick p50/p99 and
# overruns (over the bots' whole run, and after the ramp: from the bots'
# first scrape of the server's metrics after it), RTT p99 after the ramp
# (`rtt_ms_steady`; from bots too old to report it, the whole run's
# `rtt_ms`, marked "whole run") (with, in
# brackets, how late the bots ran: `bot_lateness_ms` p99, the bot
# process's own delay, part of the RTT when large), bytes/bot/s in
# brackets (as the bots counted them, over their whole connected time,
# ramp and drain included) and connected/requested come from the bots'
# JSON report; connected counts the bots still connected through the run
# (`connected_not_dropped`: those that connected, minus the sessions the
# server or a timeout ended; the dropped ones in brackets), and the
# per-bot figures of a server too old to give `connected_clients` divide
# by it; bot cores = the bot process's CPU seconds
# / the wall time they were spent in (both from
# the report), with its kernel part. Peak RSS: the server's VmHWM when the bots are done, and
# the bot process's (`bot_peak_rss_mib` of the report).
# Every process the script starts is stopped by PID, with a bounded wait,
# also when the script is interrupted (SIGINT, SIGTERM: within a second or
# so, its waits end at once); should it die without its cleanup (SIGKILL),
# the server and the bots get a SIGTERM from the kernel (setpriv
# --pdeathsig) rather than run on.
#
# A run fails when the server exits before its metrics answer, when the
# bots exit non-zero or write no report, or when the server is gone by the
# time they exit (its CPU and counters would then read as
# garbage) or its metrics did not answer the bots' last scrape: the script says why on stderr, leaves the run out of the
# table's figures (a point whose every run failed gets a row saying so),
# and exits 1 after printing the table. Its figures still go to
# run-N.json, with the reason under "failed" (a server that exited leaves
# its CPU figures null).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SCENARIO=${SCENARIO:-assets/scenarios/default.toml}
RUN_SECS=${RUN_SECS:-20}
RUNS=${RUNS:-1}
SERVER_CORE=${SERVER_CORE:-0}
BOT_CORE=${BOT_CORE:-1}
BASE_PORT=${BASE_PORT:-17900}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/capacity.XXXXXX)}
POINTS=("$@")
[ ${#POINTS[@]} -eq 0 ] && POINTS=(500 1000 2000 5000)
CLK_TCK=$(getconf CLK_TCK)

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "capacity.sh: RUNS must be a positive integer, not '$RUNS'" >&2; exit 2; }
# The steady window ends a second before the bots stop: it needs two.
[[ "$RUN_SECS" =~ ^[0-9]+$ ]] && [ "$RUN_SECS" -ge 2 ] \
    || { echo "capacity.sh: RUN_SECS must be an integer of at least 2, not '$RUN_SECS'" >&2; exit 2; }
for tool in jq taskset timeout setpriv awk curl; do
    command -v "$tool" >/dev/null || { echo "capacity.sh: needs $tool" >&2; exit 2; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -p server -p client_headless >&2
fi
SERVER_BIN=${SERVER_BIN:-$TARGET/release/server}
BOTS_BIN=${BOTS_BIN:-$TARGET/release/client_headless}
for bin in "$SERVER_BIN" "$BOTS_BIN"; do
    [ -x "$bin" ] || { echo "capacity.sh: no $bin (set CARGO_TARGET_DIR?)" >&2; exit 2; }
done

SERVER_PID=""
BOTS_PID=""

# shellcheck source=server/scripts/lib.sh
. "$ROOT/server/scripts/lib.sh"

cleanup() {
    stop_pid "$BOTS_PID" 5
    stop_pid "$SERVER_PID" 10
    stop_pid "$PAUSE_PID" 1
    BOTS_PID=""
    SERVER_PID=""
    PAUSE_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# "comm ticks" for each thread of a process.
thread_ticks() {
    local pid=$1 f
    for f in /proc/"$pid"/task/*/stat; do
        awk '{ c = $0; sub(/^[^(]*\(/, "", c); sub(/\).*$/, "", c);
               sub(/^.*\) /, ""); print c, $12 + $13 }' "$f" 2>/dev/null || true
    done
}

now_s() { date +%s.%N; }

# "in out drops wakeups bytes_in bytes_out clients" from the server's
# metrics page (datagrams in and out, then UDP payload bytes in and out,
# then the clients connected; "-" for each it did not give: all of them
# when unreadable; drops, wakeups and clients also for a server too old to
# count them).
net_counters() {
    curl -s --max-time 2 "$1" | awk '
        function or_dash(v) { return v == "" ? "-" : v }
        $1 == "net_packets_in_total" { i = $2 }
        $1 == "net_packets_out_total" { o = $2 }
        $1 == "net_socket_receive_drops_total" { d = $2 }
        $1 == "net_io_wakeups_total" { k = $2 }
        $1 == "net_bytes_in_total" { bi = $2 }
        $1 == "net_bytes_out_total" { bo = $2 }
        $1 == "connected_clients" { c = $2 }
        END { printf "%s %s %s %s %s %s %s\n", or_dash(i), or_dash(o), or_dash(d), or_dash(k), or_dash(bi), or_dash(bo), or_dash(c) }'
}

# run_point N TAG PORT: one run of N bots against a fresh server on PORT
# (metrics on PORT+1000). Files are named by TAG. Writes the run's figures
# to OUT_DIR/run-TAG.json (see the render filter below) and prints its row
# to stderr; a failed run's reason (see the top) also goes to stderr, and
# into the JSON's "failed" (null when the run is good), and it counts in
# FAILED.
run_point() {
    local n=$1 tag=$2 port=$3 mport=$(($3 + 1000))
    local ramp=$(( n / 500 > 5 ? n / 500 : 5 ))
    local duration=$((ramp + RUN_SECS))
    local data="$OUT_DIR/data-$tag"
    local in0 drops0 wake0 drops1 wake1 cpu0 cpu1 t0 t1 su0 sk0 su1 sk1 ts0 ts1 tn0 tn1
    local sin0 sout0 sin1 sout1 bin0 bout0 bin1 bout1 c0 c1 server_rss r bots_status=0 server_status=0 failed=""
    rm -rf "$data"
    mkdir -p "$data"

    setpriv --pdeathsig TERM taskset -c "$SERVER_CORE" "$SERVER_BIN" --bind "127.0.0.1:$port" \
        --metrics-bind "127.0.0.1:$mport" --data-dir "$data" \
        --max-clients $((n + 100)) --log-filter warn \
        </dev/null >"$OUT_DIR/server-$tag.log" 2>&1 &
    SERVER_PID=$!
    remember "$SERVER_PID"
    # Wait (bounded) for the metrics page: the server is up.
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null; then break; fi
        if ! is_running "$SERVER_PID"; then
            wait "$SERVER_PID" || server_status=$?
            SERVER_PID=""
            failed="the server exited (status $server_status) before its metrics answered, see $OUT_DIR/server-$tag.log"
            jq -n --argjson n "$n" --arg failed "$failed" '{requested: $n, failed: $failed}' >"$OUT_DIR/run-$tag.json"
            report_run "$tag" "$failed"
            return 0
        fi
        sleep 0.1
    done

    read -r in0 _ drops0 wake0 _ _ _ < <(net_counters "http://127.0.0.1:$mport/metrics")
    cpu0=$(cpu_ticks "/proc/$SERVER_PID/stat")
    thread_ticks "$SERVER_PID" >"$OUT_DIR/threads0-$tag"
    t0=$(now_s)
    r="$OUT_DIR/report-$tag.json"
    # A report left by an earlier run in this OUT_DIR is not this run's.
    rm -f "$r"
    setpriv --pdeathsig TERM timeout -s INT --kill-after=10 $((duration + 40)) \
        taskset -c "$BOT_CORE" "$BOTS_BIN" load --server "127.0.0.1:$port" \
        --bots "$n" --duration "$duration" --ramp "$ramp" \
        --scenario "$SCENARIO" --metrics-url "http://127.0.0.1:$mport/metrics" \
        --report "$r" \
        >"$OUT_DIR/bots-$tag.txt" 2>"$OUT_DIR/bots-$tag.log" &
    BOTS_PID=$!
    remember "$BOTS_PID"
    # The steady state: from the end of the ramp to a second before the
    # bots stop sending (the window C ENet's reference is measured over,
    # see enet-reference.sh). Both ends are times after t0, not sleeps
    # after the scrape before them (which may take its whole timeout).
    # The server's counters are read when its metrics page answers, at the
    # end of a slow scrape: their window runs from answer to answer (tn0,
    # tn1), and if the last answer came after the bots stopped, it is not
    # the steady state's (the counters' figures are then null).
    sleep_until "$(awk -v t0="$t0" -v s="$ramp" 'BEGIN { printf "%.3f", t0 + s }')"
    read -r su0 sk0 < <(cpu_split "/proc/$SERVER_PID/stat")
    ts0=$(now_s)
    read -r sin0 sout0 _ _ bin0 bout0 c0 < <(net_counters "http://127.0.0.1:$mport/metrics")
    tn0=$(now_s)
    sleep_until "$(awk -v t0="$t0" -v s="$((ramp + RUN_SECS - 1))" 'BEGIN { printf "%.3f", t0 + s }')"
    read -r su1 sk1 < <(cpu_split "/proc/$SERVER_PID/stat")
    ts1=$(now_s)
    read -r sin1 sout1 _ _ bin1 bout1 c1 < <(net_counters "http://127.0.0.1:$mport/metrics")
    tn1=$(now_s)
    if awk -v tn1="$tn1" -v end="$t0" -v d="$duration" 'BEGIN { exit !(tn1 >= end + d) }'; then
        sin0=- bin0=-
    fi
    wait "$BOTS_PID" || bots_status=$?
    BOTS_PID=""
    t1=$(now_s)
    if ! is_running "$SERVER_PID"; then
        wait "$SERVER_PID" || server_status=$?
        # Reaped: its PID may be another process's from now on.
        SERVER_PID=""
        failed="the server exited (status $server_status) during the run, see $OUT_DIR/server-$tag.log"
    elif [ "$bots_status" -ne 0 ]; then
        failed="the bots exited with status $bots_status, see $OUT_DIR/bots-$tag.log"
    elif [ ! -s "$r" ]; then
        failed="the bots wrote no report, see $OUT_DIR/bots-$tag.log"
    elif [ "$(jq '.server.complete' "$r" 2>/dev/null)" = false ]; then
        failed="the server's metrics did not answer at the end (its tick figures stop early), see $r"
    fi
    # A server that exited has no CPU figures: its /proc entry is gone
    # (and the CPU samples taken after it died read as 0).
    cpu1=null
    : >"$OUT_DIR/threads1-$tag"
    if [ -n "$SERVER_PID" ]; then
        cpu1=$(cpu_ticks "/proc/$SERVER_PID/stat")
        thread_ticks "$SERVER_PID" >"$OUT_DIR/threads1-$tag"
    fi
    read -r _ _ drops1 wake1 _ _ _ < <(net_counters "http://127.0.0.1:$mport/metrics")
    if [ -n "$SERVER_PID" ]; then
        server_rss=$(awk '$1 == "VmHWM:" { printf "%d", $2 / 1024 }' "/proc/$SERVER_PID/status" 2>/dev/null || true)
        stop_pid "$SERVER_PID" 10
        SERVER_PID=""
    fi

    # A counter missing from a first read that did answer was not
    # registered yet (the metrics page answers while the game is still
    # starting): it was 0. A first read that did not answer leaves no
    # baseline (null), as does a counter missing from the last read (this
    # server does not count it).
    if [ "$in0" = - ]; then
        drops0=null
        wake0=null
    fi
    [ "$drops0" = - ] && drops0=0
    [ "$wake0" = - ] && wake0=0
    [ "$drops1" = - ] && drops1=null
    [ "$wake1" = - ] && wake1=null
    # Rates over the steady window are per second of it; net-io's cores,
    # its wake-ups and the totals are over the whole bot run.
    local figures
    figures=$(awk -v n="$n" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v ts0="$ts0" -v ts1="$ts1" \
        -v tn0="$tn0" -v tn1="$tn1" -v c0="$c0" -v c1="$c1" \
        -v cpu0="$cpu0" -v cpu1="$cpu1" -v su0="$su0" -v sk0="$sk0" -v su1="$su1" -v sk1="$sk1" \
        -v sin0="$sin0" -v sin1="$sin1" -v sout0="$sout0" -v sout1="$sout1" \
        -v bin0="$bin0" -v bin1="$bin1" -v bout0="$bout0" -v bout1="$bout1" \
        -v drops0="$drops0" -v drops1="$drops1" -v wake0="$wake0" -v wake1="$wake1" \
        -v rss="${server_rss:-null}" '
        NR == FNR { before[$1] += $2; next }
        { after[$1] += $2 }
        END {
            wall = t1 - t0; steady = ts1 - ts0
            printf "{\"requested\": %d, \"wall_s\": %.1f, ", n, wall
            if (cpu1 == "null")
                printf "\"cpu_s\": null, \"cores\": null, \"net_io_cores\": null, "
            else {
                printf "\"cpu_s\": %.1f, \"cores\": %.4f, ", (cpu1 - cpu0) / hz, (cpu1 - cpu0) / hz / wall
                printf "\"net_io_cores\": %.4f, ", (after["net-io"] - before["net-io"]) / hz / wall
            }
            printf "\"wakeups_per_s\": %s, ", wake0 == "null" || wake1 == "null" ? "null" : sprintf("%.1f", (wake1 - wake0) / wall)
            u = (su1 - su0) / hz / steady; k = (sk1 - sk0) / hz / steady
            if (cpu1 == "null")
                printf "\"steady_cores\": null, \"steady_user\": null, \"steady_kernel\": null, "
            else
                printf "\"steady_cores\": %.4f, \"steady_user\": %.4f, \"steady_kernel\": %.4f, ", u + k, u, k
            # Per second of the window the counters were read over; per bot below.
            counted = tn1 - tn0
            unread = sin0 == "-" || sin1 == "-" || sout0 == "-" || sout1 == "-" || counted <= 0
            printf "\"steady_datagrams_in_per_s\": %s, \"steady_datagrams_out_per_s\": %s, ", \
                unread ? "null" : sprintf("%.1f", (sin1 - sin0) / counted), \
                unread ? "null" : sprintf("%.1f", (sout1 - sout0) / counted)
            # Bytes up (into the server) and down, as the server counted them.
            unread = bin0 == "-" || bin1 == "-" || bout0 == "-" || bout1 == "-" || counted <= 0
            printf "\"steady_bytes_up_per_s\": %s, \"steady_bytes_down_per_s\": %s, ", \
                unread ? "null" : sprintf("%.1f", (bin1 - bin0) / counted), \
                unread ? "null" : sprintf("%.1f", (bout1 - bout0) / counted)
            # The clients the server had over that window: the mean of its
            # two ends (bots dropped in it sent part of it).
            printf "\"steady_clients\": %s, ", \
                c0 == "-" || c1 == "-" || c0 + c1 == 0 ? "null" : sprintf("%.1f", (c0 + c1) / 2)
            printf "\"socket_drops\": %s, \"server_rss_mib\": %s}\n", drops0 == "null" || drops1 == "null" ? "null" : drops1 - drops0, rss
        }' "$OUT_DIR/threads0-$tag" "$OUT_DIR/threads1-$tag")
    # The bots' figures from their report (null when there is none). The
    # steady per-bot figures are per client the server had over their
    # window (`steady_clients`); from a server too old to say, per bot that
    # stayed: `connected_not_dropped` of the report (a report of bots older
    # than that key: every bot that ever connected, marked in the table);
    # with neither, null.
    jq -n --argjson run "$figures" --arg report "$r" --arg log "$OUT_DIR/bots-$tag.log" \
        --arg failed "$failed" '
        (try input catch null) as $b
        | ($run.steady_clients // $b.connected_not_dropped // $b.connected) as $clients
        | def per_client: if . == null or ($clients // 0) == 0 then null
              else . / $clients end;
        $run + {
            datagrams_in: ($run.steady_datagrams_in_per_s | per_client),
            datagrams_out: ($run.steady_datagrams_out_per_s | per_client),
            steady_bytes_up: ($run.steady_bytes_up_per_s | per_client),
            steady_bytes_down: ($run.steady_bytes_down_per_s | per_client),
            failed: (if $failed == "" then null else $failed end),
            report: (if $b == null then null else $report end),
            bots_log: $log,
            connected: $b.connected,
            connected_not_dropped: $b.connected_not_dropped,
            tick_p50: $b.server.tick_ms.p50, tick_p99: $b.server.tick_ms.p99,
            overruns: $b.server.overruns,
            after_ramp_p50: $b.server.steady.tick_ms.p50,
            after_ramp_p99: $b.server.steady.tick_ms.p99,
            after_ramp_overruns: $b.server.steady.overruns,
            rtt_p99: (if $b.rtt_ms_steady == null then $b.rtt_ms.p99 else $b.rtt_ms_steady.p99 end),
            rtt_whole_run: ($b != null and $b.rtt_ms_steady == null),
            bot_late_p99: $b.bot_lateness_ms.p99,
            bytes_up: $b.bytes_per_bot_per_s.up, bytes_down: $b.bytes_per_bot_per_s.down,
            bot_cores: (if $b.bot_cpu_s == null then null else $b.bot_cpu_s / ($b.bot_cpu_wall_s // $run.wall_s) end),
            bot_kernel: (if $b.bot_cpu_kernel_s == null then null else $b.bot_cpu_kernel_s / ($b.bot_cpu_wall_s // $run.wall_s) end),
            bot_rss_mib: $b.bot_peak_rss_mib
        }' "$([ -s "$r" ] && echo "$r" || echo /dev/null)" >"$OUT_DIR/run-$tag.json"
    report_run "$tag" "$failed"
}

# report_run TAG REASON: the row of run TAG (from its run-TAG.json) to
# stderr, and REASON, when there is one, as the run's failure: on stderr
# too, and counted in FAILED.
report_run() {
    render <"$OUT_DIR/run-$1.json" >&2
    if [ -n "$2" ]; then
        echo "capacity: run $1 FAILED: $2" >&2
        FAILED=$((FAILED + 1))
    fi
}

# One table row from run figures on stdin. Several runs (one JSON object
# each): every figure is the median of the runs that have it, except
# connected (the fewest bots that stayed connected) and the overruns (the
# most). Failed runs are left out (and counted); when every run failed,
# the row says why.
render() {
    jq -rs '
        def median: map(select(. != null)) | sort
            | if length == 0 then null
              elif length % 2 == 1 then .[length / 2 | floor]
              else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        def m(k): map(.[k]) | median;
        def fixed(x; d): if x == null then "–" else
            (pow(10; d)) as $p | (x * $p | round) as $v
            | ($v / $p | floor | tostring) as $i
            | if d == 0 then $i else
                ($v % $p | tostring) as $f
                | "\($i).\(("0" * (d - ($f | length))) + $f)" end end;
        def f(x): if x == null then "–" else (x * 10 | round / 10 | tostring) end;
        def n(x): if x == null then "–" else (x | round | tostring) end;
        (map(.failed | select(. != null))) as $failures
        | (if $failures == [] then "" else "; \($failures | length) of \(length) runs failed" end) as $failed
        | .[0].requested as $requested
        | map(select(.failed == null))
        | if . == [] then
            "| \($requested) | FAILED: \($failures | unique | join("; ")) |" + (" – |" * 11)
          else
        . as $runs
        | (map(.connected) | if any(. == null) then null else min end) as $ever
        | (map(.connected_not_dropped) | if any(. == null) then null else min end) as $connected
        | (map(select(.connected_not_dropped != null) | .connected - .connected_not_dropped) | max) as $dropped
        | (map(.overruns) | map(select(. != null)) | if length == 0 then null else max end) as $overruns
        | (map(.after_ramp_overruns) | map(select(. != null)) | if length == 0 then null else max end) as $after_overruns
        | (m("steady_user")) as $user | (m("steady_kernel")) as $kernel
        | (m("wakeups_per_s")) as $wakeups
        | "| \(.[0].requested) | \(if $ever == null then "no report (see \(map(select(.report == null) | .bots_log) | join(", ")))"
              elif $connected == null then "\($ever) ever connected (drops not reported) / \(.[0].requested)"
              else "\($connected) / \(.[0].requested)\(if $dropped > 0 then " (\($dropped) dropped)" else "" end)" end)\($failed)"
          + " | \(fixed(m("cores"); 2)) (\(fixed(m("cpu_s"); 1)) s / \(fixed(m("wall_s"); 1)) s; net-io \(fixed(m("net_io_cores"); 2))\(if $wakeups == null then "" else ", \(n($wakeups)) wakeups/s" end))"
          + " | \(fixed(m("steady_cores"); 2)) (user \(fixed($user; 2)), kernel \(fixed($kernel; 2)))"
          + " | \(f(m("tick_p50"))) / \(f(m("tick_p99"))) | \($overruns // "–")"
          + " | \(if m("after_ramp_p99") == null then "–" else "\(f(m("after_ramp_p50"))) / \(f(m("after_ramp_p99"))), \($after_overruns // "–")" end)"
          + " | \(f(m("rtt_p99")))\(if any(.[]; .rtt_whole_run == true) then " whole run" else "" end)\(if m("bot_late_p99") == null then "" else " (\(f(m("bot_late_p99"))))" end) | \(n(m("steady_bytes_up"))) / \(n(m("steady_bytes_down"))) (\(n(m("bytes_up"))) / \(n(m("bytes_down"))))"
          + " | \(fixed(m("datagrams_in"); 1)) / \(fixed(m("datagrams_out"); 1)) | \(n(m("socket_drops")))"
          + " | \(if m("bot_cores") == null then "–" else fixed(m("bot_cores"); 2) + (if m("bot_kernel") == null then "" else " (kernel \(fixed(m("bot_kernel"); 2)))" end) end)"
          + " | \(n(m("server_rss_mib"))) / \(n(m("bot_rss_mib"))) |"
          end'
}

echo "capacity: $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "capacity: output in $OUT_DIR" >&2

ROWS=()
FAILED=0
i=0
for n in "${POINTS[@]}"; do
    runs=()
    for k in $(seq 1 "$RUNS"); do
        if [ "$RUNS" -gt 1 ]; then tag="$n.$k"; else tag=$n; fi
        run_point "$n" "$tag" $((BASE_PORT + i))
        runs+=("$OUT_DIR/run-$tag.json")
        i=$((i + 1))
    done
    ROWS+=("$(cat "${runs[@]}" | render)")
done

if [ "$RUNS" -gt 1 ]; then
    echo "Medians of $RUNS runs per point (connected: the fewest; dropped and overruns: the most)."
fi
echo "| bots | connected, not dropped / requested | server cores (cpu / wall) | steady cores (user, kernel) | tick p50 / p99 ms | overruns | after ramp: tick p50 / p99 ms, overruns | RTT p99 ms after ramp (bots late p99) | steady bytes/bot/s up / down (bots' count, whole run) | steady datagrams/bot/s in / out | socket drops | bot cores (kernel) | peak RSS MiB server / bots |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [ "$FAILED" -gt 0 ]; then
    echo "capacity: $FAILED run(s) FAILED (reasons above, and under \"failed\" in their run-*.json); the table leaves them out" >&2
    exit 1
fi
