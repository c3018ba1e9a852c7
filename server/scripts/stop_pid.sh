# Sourced by the benchmark scripts beside it.
#
# stop_pid PID GRACE: stops one process the script started, by its PID:
# SIGINT, then SIGKILL after GRACE seconds; reaps it either way.
stop_pid() {
    local pid=$1 grace=$2
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
