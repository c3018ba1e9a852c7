#!/usr/bin/env bash
# Capacity benchmark: one fresh server per point, N bots of a scenario, a
# markdown table on stdout.
#
#   server/scripts/capacity.sh [N ...]          (default: 500 1000 2000 5000)
#
# Environment (all optional):
#   CARGO_TARGET_DIR   where the release binaries are built [target]
#   SCENARIO           scenario file [assets/scenarios/default.toml]
#   RUN_SECS           measured seconds after the ramp [20]
#   SERVER_CORE        core the server is pinned to [0]
#   BOT_CORE           core the bots are pinned to [1]
#   BASE_PORT          first UDP port; point i uses BASE_PORT+i [17900]
#   OUT_DIR            where reports and logs go [a fresh mktemp -d]
#   SKIP_BUILD=1       do not run cargo build
#   SERVER_BIN         server binary [$CARGO_TARGET_DIR/release/server]
#                      (e.g. a copy of an older build, for an A/B run)
#   BOTS_BIN           bot binary [$CARGO_TARGET_DIR/release/client_headless]
#                      (idem, to compare the bots' own CPU)
#
# Per point: the server starts pinned to SERVER_CORE on loopback with a fresh
# data dir; the bots (`client_headless load`) start pinned to BOT_CORE with a
# ramp of max(5, N/500) s and a duration of ramp + RUN_SECS. Server CPU is
# utime+stime from /proc/PID/stat (and per thread from /proc/PID/task/*/stat)
# sampled when the bots start and when they exit; cores = cpu seconds / wall
# seconds of that window (ramp, run and drain); steady cores = the same over
# the run alone (end of the ramp to a second before the end), split into
# user and kernel time (utime, stime: the kernel's share is the UDP path,
# which on loopback also delivers to the receiving socket). Datagrams per bot
# per second in and out (as the server counted them, over the steady
# window), the datagrams the kernel dropped at the server's full socket
# buffer and net-io's wakeups per second (over the whole window) come from
# its /metrics. Tick p50/p99 and overruns (over the bots' whole run, and
# after the ramp: from the bots' first scrape of the server's metrics after
# it), RTT p99, bytes/bot/s and connected/requested come from the bots' JSON
# report; bot cores = the bot
# process's CPU seconds (from the report) / the same wall time, with its
# kernel part. Peak RSS: the server's VmHWM when the bots are done, and
# the bot process's (`bot_peak_rss_mib` of the report).
# Every process the script starts is stopped by PID, with a bounded wait.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SCENARIO=${SCENARIO:-assets/scenarios/default.toml}
RUN_SECS=${RUN_SECS:-20}
SERVER_CORE=${SERVER_CORE:-0}
BOT_CORE=${BOT_CORE:-1}
BASE_PORT=${BASE_PORT:-17900}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/capacity.XXXXXX)}
POINTS=("$@")
[ ${#POINTS[@]} -eq 0 ] && POINTS=(500 1000 2000 5000)
CLK_TCK=$(getconf CLK_TCK)

for tool in jq taskset timeout awk curl; do
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
    BOTS_PID=""
    SERVER_PID=""
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

# "in out drops wakeups" from the server's metrics page (0 0 - - when
# unreadable; drops and wakeups "-" also for a server too old to count them).
net_counters() {
    curl -s --max-time 2 "$1" | awk '
        $1 == "net_packets_in_total" { i = $2 }
        $1 == "net_packets_out_total" { o = $2 }
        $1 == "net_socket_receive_drops_total" { d = $2 }
        $1 == "net_io_wakeups_total" { k = $2 }
        END { printf "%d %d %s %s\n", i, o, (d == "" ? "-" : d), (k == "" ? "-" : k) }'
}

echo "capacity: $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "capacity: output in $OUT_DIR" >&2

ROWS=()
i=0
for n in "${POINTS[@]}"; do
    port=$((BASE_PORT + i))
    mport=$((BASE_PORT + 1000 + i))
    i=$((i + 1))
    ramp=$(( n / 500 > 5 ? n / 500 : 5 ))
    duration=$((ramp + RUN_SECS))
    data="$OUT_DIR/data-$n"
    mkdir -p "$data"

    taskset -c "$SERVER_CORE" "$SERVER_BIN" --bind "127.0.0.1:$port" \
        --metrics-bind "127.0.0.1:$mport" --data-dir "$data" \
        --max-clients $((n + 100)) --log-filter warn \
        </dev/null >"$OUT_DIR/server-$n.log" 2>&1 &
    SERVER_PID=$!
    # Wait (bounded) for the metrics page: the server is up.
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null; then break; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited, see $OUT_DIR/server-$n.log" >&2; exit 1; }
        sleep 0.1
    done

    read -r _ _ drops0 wake0 < <(net_counters "http://127.0.0.1:$mport/metrics")
    cpu0=$(cpu_ticks "/proc/$SERVER_PID/stat")
    thread_ticks "$SERVER_PID" >"$OUT_DIR/threads0-$n"
    t0=$(now_s)
    timeout -s INT --kill-after=10 $((duration + 40)) \
        taskset -c "$BOT_CORE" "$BOTS_BIN" load --server "127.0.0.1:$port" \
        --bots "$n" --duration "$duration" --ramp "$ramp" \
        --scenario "$SCENARIO" --metrics-url "http://127.0.0.1:$mport/metrics" \
        --report "$OUT_DIR/report-$n.json" \
        >"$OUT_DIR/bots-$n.txt" 2>"$OUT_DIR/bots-$n.log" &
    BOTS_PID=$!
    # The steady state: from the end of the ramp to a second before the
    # bots stop sending (the window C ENet's reference is measured over,
    # see enet-reference.sh).
    sleep "$ramp"
    read -r su0 sk0 < <(cpu_split "/proc/$SERVER_PID/stat")
    ts0=$(now_s)
    read -r sin0 sout0 _ _ < <(net_counters "http://127.0.0.1:$mport/metrics")
    sleep $((RUN_SECS - 1))
    read -r su1 sk1 < <(cpu_split "/proc/$SERVER_PID/stat")
    ts1=$(now_s)
    read -r sin1 sout1 _ _ < <(net_counters "http://127.0.0.1:$mport/metrics")
    wait "$BOTS_PID" || true
    BOTS_PID=""
    t1=$(now_s)
    cpu1=$(cpu_ticks "/proc/$SERVER_PID/stat")
    thread_ticks "$SERVER_PID" >"$OUT_DIR/threads1-$n"
    read -r _ _ drops1 wake1 < <(net_counters "http://127.0.0.1:$mport/metrics")
    server_rss=$(awk '$1 == "VmHWM:" { printf "%d", $2 / 1024 }' "/proc/$SERVER_PID/status" 2>/dev/null || true)
    stop_pid "$SERVER_PID" 10
    SERVER_PID=""

    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) / hz }')
    cores=$(awk -v c="$cpu" -v w="$wall" 'BEGIN { printf "%.2f", c / w }')
    steady_secs=$(awk -v s="$ts0" -v e="$ts1" 'BEGIN { print e - s }')
    steady=$(split_cores "$su0" "$sk0" "$su1" "$sk1" "$steady_secs")
    # Cores of the net-io thread alone over the same window.
    netio=$(awk -v hz="$CLK_TCK" -v w="$wall" '
        NR == FNR { before[$1] += $2; next }
        { after[$1] += $2 }
        END { printf "%.2f", (after["net-io"] - before["net-io"]) / hz / w }' \
        "$OUT_DIR/threads0-$n" "$OUT_DIR/threads1-$n")

    # Over the steady window, like the steady cores.
    datagrams=$(awk -v a="$sin0" -v b="$sin1" -v c="$sout0" -v d="$sout1" -v w="$steady_secs" -v n="$n" \
        'BEGIN { printf "%.1f / %.1f", (b - a) / w / n, (d - c) / w / n }')
    # A counter missing from the first read was not registered yet (the
    # metrics page answers while the game is still starting): it was 0.
    [ "$drops0" = - ] && drops0=0
    [ "$wake0" = - ] && wake0=0
    if [ "$drops1" = - ]; then drops="–"; else drops=$((drops1 - drops0)); fi
    if [ "$wake1" != - ]; then
        netio="$netio, $(awk -v a="$wake0" -v b="$wake1" -v w="$wall" 'BEGIN { printf "%d", (b - a) / w }') wakeups/s"
    fi

    r="$OUT_DIR/report-$n.json"
    if [ -s "$r" ]; then
        row=$(jq -r --arg cpu "$cpu" --arg wall "$wall" --arg cores "$cores" --arg netio "$netio" --arg steady "$steady" \
            --arg datagrams "$datagrams" --arg drops "$drops" --arg srss "${server_rss:-–}" '
            def f(x): if x == null then "–" else (x * 10 | round / 10 | tostring) end;
            def c(x): x / ($wall | tonumber) * 100 | round / 100 | tostring;
            "| \(.requested) | \(.connected) / \(.requested) | \($cores) (\($cpu) s / \($wall) s; net-io \($netio)) | \($steady) | \(f(.server.tick_ms.p50)) / \(f(.server.tick_ms.p99)) | \(.server.overruns // "–") | \(if .server.steady == null then "–" else "\(f(.server.steady.tick_ms.p50)) / \(f(.server.steady.tick_ms.p99)), \(.server.steady.overruns // "–")" end) | \(f(.rtt_ms.p99)) | \(.bytes_per_bot_per_s.up | round) / \(.bytes_per_bot_per_s.down | round) | \($datagrams) | \($drops) | \(if .bot_cpu_s == null then "–" else c(.bot_cpu_s) + (if .bot_cpu_kernel_s == null then "" else " (kernel \(c(.bot_cpu_kernel_s)))" end) end) | \($srss) / \(if .bot_peak_rss_mib == null then "–" else (.bot_peak_rss_mib | round | tostring) end) |"' "$r")
    else
        row="| $n | no report (see $OUT_DIR/bots-$n.log) | $cores ($cpu s / $wall s; net-io $netio) | $steady | – | – | – | – | – | $datagrams | $drops | – | ${server_rss:-–} / – |"
    fi
    ROWS+=("$row")
    echo "$row" >&2
done

echo "| bots | connected / requested | server cores (cpu / wall) | steady cores (user, kernel) | tick p50 / p99 ms | overruns | after ramp: tick p50 / p99 ms, overruns | RTT p99 ms | bytes/bot/s up / down | steady datagrams/bot/s in / out | socket drops | bot cores (kernel) | peak RSS MiB server / bots |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
