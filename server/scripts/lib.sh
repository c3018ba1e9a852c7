# Sourced by the benchmark scripts beside it.
#
# stop_pid PID GRACE: stops one process the script started, by its PID:
# SIGTERM, then SIGKILL if it is still there after GRACE seconds; reaps it
# either way (the caller then forgets PID: it may be reused). Not
# SIGINT: a script's background job starts with SIGINT ignored, and a
# program that does not take it back (udp_floor's and enet_reference's
# clients, the bots under timeout) would sit out the grace and be killed.
# The server shuts down gracefully on either (see server/src/shutdown.rs),
# and the C reference servers write their summary on either.
stop_pid() {
    local pid=$1 grace=$2
    [ -n "$pid" ] || return 0
    if ! is_ours "$pid" || ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 10))); do
        # Gone (bash has reaped it): its PID may be another's from now on.
        if ! is_ours "$pid" || ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
    { is_ours "$pid" && kill -KILL "$pid"; } 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# remember PID: notes when the process the script just started as PID
# began (field 22 of /proc/PID/stat, clock ticks since boot). Bash reaps a
# background child that exited as soon as the script waits for any other
# (every `$(...)` does), and its PID may then be another process's:
# is_running and stop_pid touch a remembered PID only while it is still
# the process that began then.
declare -gA STARTED=()
start_ticks() {
    awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null
}
remember() {
    # Gone already (empty): is_ours says so; not an error to `set -e`.
    STARTED[$1]=$(start_ticks "$1") || true
}

# is_ours PID: PID is not remembered, or is still the process remembered.
is_ours() {
    [ -z "${STARTED[$1]+set}" ] && return 0
    [ -n "${STARTED[$1]}" ] && [ "$(start_ticks "$1")" = "${STARTED[$1]}" ]
}

# is_running PID: the process is there and has not exited (one that
# exited but is not reaped yet, a zombie, counts as gone), and is the one
# remembered (see remember).
is_running() {
    local state
    is_ours "$1" || return 1
    state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# pause SECONDS: sleeps in a child and waits for it, so that a signal the
# script traps ends the pause at once (bash runs a trap only once the
# foreground command it waits for has ended: a plain sleep would hold the
# cleanup back, the processes it stops running, for up to its whole
# length). PAUSE_PID names the sleep meanwhile, for the cleanup trap.
PAUSE_PID=""
pause() {
    sleep "$1" &
    PAUSE_PID=$!
    wait "$PAUSE_PID"
    PAUSE_PID=""
}

# sleep_until T: pauses until T, in seconds since the epoch as `date
# +%s.%N` prints them; returns at once when T has passed. Pacing to
# absolute times keeps a slow step (a metrics scrape that takes its whole
# timeout) from pushing the steps after it later.
sleep_until() {
    pause "$(awk -v t="$1" -v now="$(date +%s.%N)" 'BEGIN { d = t - now; printf "%.3f", (d > 0 ? d : 0) }')"
}

# cpu_split STATFILE: "utime stime" in clock ticks of a /proc stat file
# (/proc/PID/stat; the comm field may hold spaces); "0 0" once it is gone.
cpu_split() {
    awk '{ sub(/^.*\) /, ""); print $12, $13 }' "$1" 2>/dev/null || echo "0 0"
}

# cpu_ticks STATFILE: utime + stime in clock ticks; 0 once it is gone.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$1" 2>/dev/null || echo 0
}

# split_cores U0 K0 U1 K1 SECONDS: the cores two cpu_split samples SECONDS
# apart stand for, as "total (user U, kernel K)". The kernel share is the
# part no user-space change removes: the UDP path of every datagram.
split_cores() {
    awk -v u0="$1" -v k0="$2" -v u1="$3" -v k1="$4" -v s="$5" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        u = (u1 - u0) / hz / s; k = (k1 - k0) / hz / s
        printf "%.2f (user %.2f, kernel %.2f)", u + k, u, k }'
}

# The server and clients measure_steady runs, while they run.
SERVER_PID=""
CLIENTS_PID=""

# stop_started: stops them (the EXIT trap of the scripts that measure with
# measure_steady).
stop_started() {
    stop_pid "$CLIENTS_PID" 5
    stop_pid "$SERVER_PID" 5
    stop_pid "$PAUSE_PID" 1
}

# measure_steady NAME N RAMP: one point of a reference benchmark. Runs
# "${SERVER_CMD[@]}" pinned to SERVER_CORE (stderr to OUT_DIR/server-N.log)
# and, half a second later, "${CLIENTS_CMD[@]}" pinned to BOT_CORE (stdout
# to OUT_DIR/clients-N.json, stderr to clients-N.log); samples both
# processes' CPU once RAMP seconds have passed and again RUN_SECS later,
# waits for the clients (they must outlive that window) and stops the
# server. Sets STEADY_SECS (the window), SERVER_CORES ("total (user U,
# kernel K)"), SERVER_CPU_SECS and CLIENT_CORES. SERVER_PID and CLIENTS_PID
# name the processes while they run, for the caller's cleanup trap. Fails
# (naming NAME) when the clients do, or when the server is gone at either
# end of the window (it could not start, e.g. its port was taken, or it
# died): its CPU would read as 0.
measure_steady() {
    local name=$1 n=$2 ramp=$3 su0 sk0 su1 sk1 c0 c1 w0 w1 hz clients_status=0
    hz=$(getconf CLK_TCK)
    taskset -c "$SERVER_CORE" "${SERVER_CMD[@]}" 2>"$OUT_DIR/server-$n.log" &
    SERVER_PID=$!
    remember "$SERVER_PID"
    pause 0.5
    taskset -c "$BOT_CORE" "${CLIENTS_CMD[@]}" \
        >"$OUT_DIR/clients-$n.json" 2>"$OUT_DIR/clients-$n.log" &
    CLIENTS_PID=$!
    remember "$CLIENTS_PID"
    pause "$ramp"
    read -r su0 sk0 < <(cpu_split "/proc/$SERVER_PID/stat")
    c0=$(cpu_ticks "/proc/$CLIENTS_PID/stat"); w0=$(date +%s.%N)
    steady_server_runs "$name" "$n" || return 1
    pause "$RUN_SECS"
    read -r su1 sk1 < <(cpu_split "/proc/$SERVER_PID/stat")
    c1=$(cpu_ticks "/proc/$CLIENTS_PID/stat"); w1=$(date +%s.%N)
    steady_server_runs "$name" "$n" || return 1
    wait "$CLIENTS_PID" || clients_status=$?
    CLIENTS_PID=""
    if [ "$clients_status" -ne 0 ]; then
        echo "$name: clients failed (status $clients_status) at $n (see $OUT_DIR)" >&2
        return 1
    fi
    stop_pid "$SERVER_PID" 5
    SERVER_PID=""
    STEADY_SECS=$(awk -v s="$w0" -v e="$w1" 'BEGIN { print e - s }')
    SERVER_CORES=$(split_cores "$su0" "$sk0" "$su1" "$sk1" "$STEADY_SECS")
    SERVER_CPU_SECS=$(awk -v u0="$su0" -v k0="$sk0" -v u1="$su1" -v k1="$sk1" -v hz="$hz" \
        'BEGIN { print (u1 - u0 + k1 - k0) / hz }')
    CLIENT_CORES=$(awk -v a="$c0" -v b="$c1" -v s="$STEADY_SECS" -v hz="$hz" \
        'BEGIN { printf "%.2f", (b - a) / hz / s }')
}

# steady_server_runs NAME N: whether measure_steady's server still runs.
# If not, says so on stderr (naming NAME and the server's log), reaps it
# and clears SERVER_PID.
steady_server_runs() {
    local status=0
    is_running "$SERVER_PID" && return 0
    wait "$SERVER_PID" || status=$?
    SERVER_PID=""
    echo "$1: the server exited (status $status) at $2, see $OUT_DIR/server-$2.log" >&2
    return 1
}
