#!/usr/bin/env bash
# Checks capacity.sh's bookkeeping without a real server or real bots:
# stubs stand in for both (SERVER_BIN: a metrics page whose counters grow
# as 1,400 connected bots would make them grow; BOTS_BIN: sleeps for
# --duration, then writes a fixed report), one point per case, told apart
# by N:
#
#   2000  2,000 bots connected, the server dropped 600 of them: the table
#         shows 1400 / 2000 (600 dropped), and per-bot figures are per 1,400
#         (datagrams, and bytes over the steady window from the server's
#         counters, the bots' own whole-run bytes in brackets)
#   2001  the bots exit 1: the run failed
#   2002  the server exits 3 s into the run: the run failed
#   2003  every metrics scrape takes 1.5 s: the steady window still ends
#         before the bots stop, and its counters, read after they stopped,
#         give no figures (rather than ones diluted by the silence)
#   2004  the scrape that opens the steady window takes 1.5 s (the server
#         reads its counters as it answers): per-bot rates are still right
#   2005  the server's clients fall from 2,000 to 1,400 across the window
#         (bots dropped while measured): per-bot rates are per client it had;
#         and its bots, older, report no RTT after the ramp: the whole
#         run's, marked (the others' is after the ramp)
#   2006  the server exits at once (its port taken): the run failed, with
#         its row in the table like the others
#
# and a failed run makes capacity.sh exit 1 after its table; no process is
# signalled after capacity.sh waited for it (its PID may be another's by
# then), and the run whose server died has no negative CPU figures.
#
# Before those, lib.sh's measure_steady (udp-floor.sh's and
# enet-reference.sh's points):
#
#   - a server that exits at once fails its point
#   - udp_floor's server, stopped after the point, writes its summary
#   - clients that fail fail the point, and are not signalled once reaped
#   - stop_pid sends no SIGKILL to a process that exited in its grace
#   - a remembered PID that names another process now is neither running
#     nor signalled
#   - a process gone before it is remembered is no error, and not running
#
# After them, capacity.sh on one point with RUN_SECS=30, stopped in the
# ramp:
#
#   - by SIGTERM: its server and bots are gone within 3 s
#   - by SIGKILL (no cleanup): likewise
#
#   server/scripts/test-capacity.sh            (about 10 s per case)
#
# Needs what capacity.sh needs, python3 and cc (for udp_floor). Exits
# non-zero, naming the check, when one fails.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
STUBS=$(mktemp -d /tmp/capacity-test.XXXXXX)
command -v python3 >/dev/null || { echo "test-capacity.sh: needs python3" >&2; exit 2; }

# The server: serves /metrics on --metrics-bind until SIGINT.
cat >"$STUBS/server" <<'EOF'
#!/usr/bin/env bash
while [ $# -gt 0 ]; do
    case $1 in
        --metrics-bind) mbind=$2; shift ;;
        --max-clients) max=$2; shift ;;
        --data-dir) data=$2; shift ;;
    esac
    shift
done
# Its PID (the same after exec), for the interrupted cases.
echo $$ >"$data/pid"
if [ "$max" = 2106 ]; then
    echo "cannot bind" >&2
    exit 4
fi
exec python3 - "$mbind" "$max" "$data" <<'PY'
import http.server, os, signal, sys, threading, time
# A background job of a script starts with SIGINT ignored: take it back.
signal.signal(signal.SIGINT, lambda *args: sys.exit(0))
host, port = sys.argv[1].rsplit(":", 1)
bots = int(sys.argv[2]) - 100
scrapes = os.path.join(sys.argv[3], "scrapes")
start = time.monotonic()
if bots == 2002:
    threading.Timer(3.0, lambda: os._exit(3)).start()
# Each client sends 30 datagrams and 1,000 bytes a second, and is sent 31
# and 2,000.
PER_CLIENT = {"net_packets_in_total": 30, "net_packets_out_total": 31,
              "net_bytes_in_total": 1000, "net_bytes_out_total": 2000}
def clients(t):
    """Clients connected t s after the start: 1,400; for 2005, 2,000
    falling evenly to 1,400 from 4 s to 10 s."""
    if bots != 2005:
        return 1400
    return 2000 - 100 * min(max(t - 4, 0), 6)
def client_seconds(t):
    """The integral of clients() from 0 to t."""
    if bots != 2005:
        return 1400 * t
    falling = min(max(t - 4, 0), 6)
    return 2000 * min(t, 4) + 2000 * falling - 50 * falling ** 2 + 1400 * max(t - 10, 0)
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(scrapes, "a") as log:
            log.write(f"{time.time():.3f}\n")
        with open(scrapes) as log:
            number = sum(1 for _ in log)
        if bots == 2003 or (bots == 2004 and number == 2):
            time.sleep(1.5)
        t = time.monotonic() - start
        values = {k: v * client_seconds(t) for k, v in PER_CLIENT.items()}
        values.update({"net_socket_receive_drops_total": 0, "net_io_wakeups_total": 100 * t,
                       "connected_clients": clients(t)})
        body = "".join(f"{k} {v:.0f}\n" for k, v in values.items()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((host, int(port)), Metrics).serve_forever()
PY
EOF

# The bots: sleep for --duration, then write the report of their case.
cat >"$STUBS/bots" <<'EOF'
#!/usr/bin/env bash
while [ $# -gt 0 ]; do
    case $1 in
        --bots) n=$2; shift ;;
        --duration) duration=$2; shift ;;
        --report) report=$2; shift ;;
    esac
    shift
done
# Its PID, for the interrupted cases; stopped, it stops its sleep too.
echo $$ >"$(dirname "$report")/bots-pid-$n"
sleep "$duration" &
sleeper=$!
trap 'kill "$sleeper"; exit 143' TERM
wait "$sleeper"
date +%s.%N >"$(dirname "$report")/bots-stopped-$n"
connected=$n stayed=$n disconnects='{}' status=0
# Bots of the time before `rtt_ms_steady` for 2005.
steady_rtt='"rtt_ms_steady": {"from_s": 5.0, "p99": 12.0},'
[ "$n" = 2005 ] && steady_rtt=
case $n in
    2000 | 2005) connected=2000 stayed=1400 disconnects='{"timeout": 600}' ;;
    2001) status=1 ;;
esac
cat >"$report" <<JSON
{"requested": $n, "connected": $connected, "connected_not_dropped": $stayed,
 "disconnects": $disconnects, "connect_failures": {},
 "rtt_ms": {"p99": 20.0}, $steady_rtt "bot_lateness_ms": {"p99": 1.0},
 "bytes_per_bot_per_s": {"up": 900.0, "down": 1900.0},
 "server": {"tick_ms": {"p50": 5.0, "p99": 9.0}, "overruns": 0,
            "steady": {"tick_ms": {"p50": 5.0, "p99": 8.0}, "overruns": 0}},
 "bot_cpu_s": 1.0, "bot_cpu_kernel_s": 0.5, "bot_cpu_wall_s": 10.0, "bot_peak_rss_mib": 50.0}
JSON
exit "$status"
EOF
chmod +x "$STUBS/server" "$STUBS/bots"

failures=0
check() {
    local what=$1
    shift
    if "$@"; then
        echo "ok: $what" >&2
    else
        echo "FAILED: $what" >&2
        failures=$((failures + 1))
    fi
}

# kill and wait traced: each call appends "kill ARGS" (before it) or
# "wait ARGS" (once it returned) to $TRACE. Sourced in the lib.sh cases,
# and by capacity.sh through BASH_ENV (not by the stubs it starts).
cat >"$STUBS/trace.sh" <<'EOF'
kill() { echo "kill $*" >>"$TRACE"; builtin kill "$@"; }
wait() { local s=0; builtin wait "$@" || s=$?; echo "wait $*" >>"$TRACE"; return "$s"; }
EOF
cat >"$STUBS/trace-capacity.sh" <<EOF
case \$0 in */capacity.sh) . "$STUBS/trace.sh" ;; esac
EOF
# no_kill_after_wait TRACE: no process was signalled (or probed) after it
# was waited for: by then its PID may be another process's.
no_kill_after_wait() {
    awk '$1 == "wait" { for (i = 2; i <= NF; i++) waited[$i] = 1; next }
         $1 == "kill" && ($NF in waited) { print "signalled after its wait: " $0 >"/dev/stderr"; bad = 1 }
         END { exit bad }' "$1"
}

# lib.sh's measure_steady (udp-floor.sh's and enet-reference.sh's points),
# each case in a subshell of its own (lib.sh's globals and traps stay
# there), with RUN_SECS=1 and no ramp.
LIB_OUT=$STUBS/lib
mkdir -p "$LIB_OUT"
steady_point() {
    (
        . "$ROOT/server/scripts/lib.sh"
        trap stop_started EXIT
        OUT_DIR=$LIB_OUT SERVER_CORE=0 BOT_CORE=1 RUN_SECS=1
        measure_steady test-capacity.sh "$@"
    )
}
# A server that cannot start (its port taken): the point fails, naming the
# server's log, rather than giving 0.00 cores.
server_gone() {
    SERVER_CMD=(sh -c 'echo "cannot bind" >&2; exit 1')
    CLIENTS_CMD=(sleep 3)
    ! steady_point 1 0 2>"$LIB_OUT/gone.err" && grep -q "server-1.log" "$LIB_OUT/gone.err"
}
check "measure_steady fails a point whose server exited" server_gone
# udp_floor's server stopped after a point: it writes its summary (the
# datagrams it moved and the ones the kernel refused) before it exits.
udp_floor_summary() {
    local port=$((20000 + RANDOM % 20000))
    cc -O2 -o "$LIB_OUT/udp_floor" "$ROOT/server/scripts/udp_floor.c" || return 1
    SERVER_CMD=("$LIB_OUT/udp_floor" server "$port" 4 30 172)
    CLIENTS_CMD=("$LIB_OUT/udp_floor" clients "$port" 4 1 2 66 shared)
    steady_point 2 1 2>"$LIB_OUT/udp-floor.err" \
        && grep -q "^udp_floor server: 4 clients, " "$LIB_OUT/server-2.log"
}
check "udp_floor's server, stopped, writes its summary" udp_floor_summary
# Clients that fail: the point fails, and the cleanup does not signal the
# clients' PID that measure_steady waited for.
clients_failed() {
    (
        TRACE=$LIB_OUT/trace-3
        . "$STUBS/trace.sh"
        SERVER_CMD=(sleep 5)
        CLIENTS_CMD=(false)
        ! steady_point 3 0 2>/dev/null
    ) && no_kill_after_wait "$LIB_OUT/trace-3"
}
check "failed clients fail the point, and are not signalled once reaped" clients_failed
# stop_pid on a process that exits on its own during the grace: no SIGKILL
# after it is gone.
stop_gone() {
    (
        TRACE=$LIB_OUT/trace-4
        . "$ROOT/server/scripts/lib.sh"
        . "$STUBS/trace.sh"
        bash -c 'trap "" TERM; sleep 0.3' &
        stop_pid $! 2
    ) && ! grep -q -- "^kill -KILL" "$LIB_OUT/trace-4"
}
check "stop_pid sends no SIGKILL to a process gone in its grace" stop_gone
# A remembered PID that names another process now (the one started there
# exited, bash reaped it, and the PID was reused): not running, and
# never signalled. Played by remembering another start time.
reused_pid() {
    (
        TRACE=$LIB_OUT/trace-5
        . "$ROOT/server/scripts/lib.sh"
        . "$STUBS/trace.sh"
        local pid
        # Not this shell's child, as a stranger's process is not.
        pid=$(sh -c 'sleep 5 >/dev/null 2>&1 & echo $!')
        remember "$pid"
        is_running "$pid" || exit 1
        STARTED[$pid]=1
        ! is_running "$pid" || exit 1
        stop_pid "$pid" 1
        builtin kill -0 "$pid" || exit 1
        builtin kill "$pid"
    ) && ! grep -q -- "^kill -TERM\|^kill -KILL" "$LIB_OUT/trace-5"
}
check "a remembered PID another process holds now is neither running nor signalled" reused_pid
# A process gone before it is remembered (a server that failed at once):
# no error under `set -e`, and not running.
# (In a bash of its own: `set -e` does not act in a function `check` runs
# as a condition.)
remember_gone() {
    bash -c 'set -euo pipefail
        . "$1"
        true &
        pid=$!
        wait "$pid"
        remember "$pid"
        ! is_running "$pid"' _ "$ROOT/server/scripts/lib.sh"
}
check "a process gone before it is remembered is no error, and not running" remember_gone

status=0
TRACE=$STUBS/trace-capacity BASH_ENV=$STUBS/trace-capacity.sh \
    SKIP_BUILD=1 SERVER_BIN="$STUBS/server" BOTS_BIN="$STUBS/bots" RUN_SECS=4 \
    BASE_PORT=$((20000 + RANDOM % 20000)) OUT_DIR="$STUBS/out" \
    "$ROOT/server/scripts/capacity.sh" 2000 2001 2002 2003 2004 2005 2006 >"$STUBS/table.md" 2>"$STUBS/stderr" || status=$?
cat "$STUBS/table.md" >&2

# cell N COLUMN: a cell of the row of N (columns count from 1: bots).
cell() {
    awk -F' [|] ' -v n="$1" -v c="$2" '$1 == "| " n { print $c }' "$STUBS/table.md"
}
# between X LO HI: LO <= X <= HI. The rates' bounds are ±5 %: the stub
# counts as the scrape asks, capacity.sh stamps the time after it answers
# (a busy host's process spawns skew that by tens of milliseconds over the
# 3 s window); the errors they catch are 10 % (a slow first scrape) to
# 30 % (the wrong divisor) off.
between() {
    awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x != "" && x >= lo && x <= hi) }'
}

check "the bots that stayed connected, not those that ever did" \
    test "$(cell 2000 2)" = "1400 / 2000 (600 dropped)"
datagrams=$(cell 2000 10)
check "datagrams per bot that stayed ($datagrams)" \
    between "${datagrams%% / *}" 28.5 31.5
read -r up _ down bots_bytes <<<"$(cell 2000 9)"
steady_bytes() {
    between "$up" 950 1050 && between "$down" 1900 2100 && [ "$bots_bytes" = "(900 / 1900)" ]
}
check "steady bytes per bot that stayed, from the server ($up / $down $bots_bytes)" steady_bytes
check "the RTT p99 after the ramp ($(cell 2000 8))" test "$(cell 2000 8)" = "12 (1)"
check "the whole run's RTT p99 from bots without the steady one ($(cell 2005 8))" \
    test "$(cell 2005 8)" = "20 whole run (1)"
check "bots that exit non-zero fail their run" \
    grep -q "^| 2001 | FAILED: the bots exited with status 1, see " "$STUBS/table.md"
check "a server gone by the end fails its run" \
    grep -q "^| 2002 | FAILED: the server exited (status 3) during the run, see " "$STUBS/table.md"
check "a server that exits before its metrics answer fails its run, in the table" \
    grep -q "^| 2006 | FAILED: the server exited (status 4) before its metrics answered, see " "$STUBS/table.md"
check "no process is signalled after capacity.sh waited for it" \
    no_kill_after_wait "$STUBS/trace-capacity"
check "a server gone by the end leaves no negative CPU figures ($(jq -c '[.cores, .net_io_cores, .steady_cores]' "$STUBS/out/run-2002.json"))" \
    jq -e '[.cpu_s, .cores, .net_io_cores, .steady_cores, .steady_user, .steady_kernel] | all(. == null or . >= 0)' "$STUBS/out/run-2002.json" >/dev/null
check "the failures are told on stderr" \
    test "$(grep -c "^capacity: run 200[12] FAILED: " "$STUBS/stderr")" = 2
check "a failed run makes the script fail (exit $status)" test "$status" = 1
# Scrapes: the baseline, the window's start and end, the last. The
# window's end must come before the bots stop, however slow the scrapes.
window_end=$(sed -n 3p "$STUBS/out/data-2003/scrapes")
stopped=$(cat "$STUBS/out/bots-stopped-2003")
check "the steady window ends before the bots stop ($window_end < $stopped)" \
    awk -v a="$window_end" -v b="$stopped" 'BEGIN { exit !(a != "" && a < b) }'
check "counters read after the bots stopped give no steady rates ($(cell 2003 10))" \
    test "$(cell 2003 10)" = "– / –"
datagrams=$(cell 2004 10)
check "a slow scrape opening the window: datagrams per bot ($datagrams)" \
    between "${datagrams%% / *}" 28.5 31.5
datagrams=$(cell 2005 10)
check "bots dropped in the window: datagrams per client the server had ($datagrams)" \
    between "${datagrams%% / *}" 28.5 31.5

# interrupted SIGNAL: capacity.sh on one point (RUN_SECS=30), sent SIGNAL
# half a second after its bots start, in the wait for the end of the ramp:
# its server and bots are gone within 3 s. What is left after that (a
# failure) is stopped here, by the PIDs the stubs wrote.
interrupted() {
    local signal=$1 out=$STUBS/$1 script server="" bots="" _ gone=""
    SKIP_BUILD=1 SERVER_BIN="$STUBS/server" BOTS_BIN="$STUBS/bots" RUN_SECS=30 \
        BASE_PORT=$((20000 + RANDOM % 20000)) OUT_DIR="$out" \
        "$ROOT/server/scripts/capacity.sh" 2000 >/dev/null 2>"$out.err" &
    script=$!
    for _ in $(seq 1 100); do
        [ -s "$out/bots-pid-2000" ] && break
        sleep 0.1
    done
    server=$(cat "$out/data-2000/pid" 2>/dev/null || true)
    bots=$(cat "$out/bots-pid-2000" 2>/dev/null || true)
    sleep 0.5
    kill "-$signal" "$script"
    for _ in $(seq 1 30); do
        if ! is_running "$server" && ! is_running "$bots"; then
            gone=1
            break
        fi
        sleep 0.1
    done
    wait "$script" || true
    for pid in $server $bots; do
        is_running "$pid" && kill -TERM "$pid"
    done
    [ -n "$server" ] && [ -n "$bots" ] && [ -n "$gone" ]
}
# is_running for the interrupted cases.
. "$ROOT/server/scripts/lib.sh"
check "capacity.sh sent SIGTERM stops its server and bots at once" interrupted TERM
check "capacity.sh killed (SIGKILL) takes its server and bots with it" interrupted KILL

if [ "$failures" -gt 0 ]; then
    echo "test-capacity.sh: $failures check(s) failed; capacity.sh said (exit $status):" >&2
    cat "$STUBS/stderr" >&2
    echo "test-capacity.sh: files in $STUBS" >&2
    exit 1
fi
rm -rf "$STUBS"
echo "test-capacity.sh: all checks passed" >&2
