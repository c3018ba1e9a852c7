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
