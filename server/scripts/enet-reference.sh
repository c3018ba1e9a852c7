#!/usr/bin/env bash
# The C ENet 1.3.17 reference of issue 9, measured on this host: the server
# CPU ENet needs for the issue's echo workload (see enet_reference.c), per
# number of clients, so that capacity.sh's figures can be compared with
# ENet's on the same machine and day.
#
#   server/scripts/enet-reference.sh [N ...]     (default: 500 1000 2000 3000 4000)
#
# Needs gcc and Debian's libenet-dev (`apt-get install libenet-dev`: ENet
# 1.3.17). Environment (all optional):
#   RUN_SECS      measured seconds after the ramp [20]
#   SERVER_CORE   core the ENet server is pinned to [0]
#   BOT_CORE      core the ENet clients are pinned to [1]
#   BASE_PORT     first UDP port; point i uses BASE_PORT+i [18900]
#   OUT_DIR       where the binary and logs go [a fresh mktemp -d]
#
# Per point: a fresh server pinned to SERVER_CORE, N clients in one process
# pinned to BOT_CORE, connecting over max(5, N/500) s. Server cores =
# utime+stime from /proc/PID/stat over the RUN_SECS after the ramp / wall
# time (steady state only: capacity.sh's window also holds the ramp and the
# drain), split into user and kernel time as capacity.sh does; the
# clients' process likewise (total only). Chat RTT and states per client per second come from the clients.
# Every process the script starts is stopped by PID, with a bounded wait.
set -euo pipefail

cd "$(dirname "$0")"
RUN_SECS=${RUN_SECS:-20}
SERVER_CORE=${SERVER_CORE:-0}
BOT_CORE=${BOT_CORE:-1}
BASE_PORT=${BASE_PORT:-18900}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/enet-reference.XXXXXX)}
POINTS=("$@")
[ ${#POINTS[@]} -eq 0 ] && POINTS=(500 1000 2000 3000 4000)

for tool in gcc jq taskset awk; do
    command -v "$tool" >/dev/null || { echo "enet-reference.sh: needs $tool" >&2; exit 2; }
done
[ -f /usr/include/enet/enet.h ] || {
    echo "enet-reference.sh: needs ENet 1.3 headers (apt-get install libenet-dev)" >&2
    exit 2
}
mkdir -p "$OUT_DIR"
BIN=$OUT_DIR/enet_reference
gcc -O2 -Wall -Wextra -o "$BIN" enet_reference.c -lenet

# shellcheck source=server/scripts/lib.sh
. ./lib.sh
trap stop_started EXIT

echo "ENet 1.3.17 ($(dpkg-query -W -f='${Version}' libenet-dev 2>/dev/null || echo '?')) on $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| clients | connected / requested (never connected, dropped) | server cores, steady (user, kernel) | client process cores | chat echo RTT p50 / p99 ms | states/client/s | chat echoed / sent |"
echo "|---|---|---|---|---|---|---|"
for i in "${!POINTS[@]}"; do
    n=${POINTS[$i]}
    port=$((BASE_PORT + i))
    ramp=$(( n / 500 > 5 ? n / 500 : 5 ))
    SERVER_CMD=("$BIN" server "$port" "$((n + 16))" "$((ramp + RUN_SECS + 10))")
    # The clients run 2 s past the measured window, so they are still there
    # when it closes.
    CLIENTS_CMD=("$BIN" clients "$port" "$n" "$ramp" "$((RUN_SECS + 2))")
    measure_steady enet-reference.sh "$n" "$ramp" || exit 1
    jq -r --arg server "$SERVER_CORES" --arg clients "$CLIENT_CORES" \
        '"| \(.requested) | \(.connected) / \(.requested) (\(.never_connected), \(.disconnected)) | \($server) | \($clients) | \(.chat_rtt_ms.p50) / \(.chat_rtt_ms.p99) | \(.states_per_client_per_s) | \(.chat_echoed) / \(.chat_sent) |"' \
        "$OUT_DIR/clients-$n.json"
done
echo
echo "Logs and reports: $OUT_DIR"
