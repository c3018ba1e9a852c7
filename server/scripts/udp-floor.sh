#!/usr/bin/env bash
# The kernel's floor under issue 9's workload on this host: the server CPU
# of a server that only moves the datagrams (see udp_floor.c: recvmmsg and
# sendmmsg, no protocol, no encryption, no game), per number of clients, so
# that capacity.sh's and enet-reference.sh's figures can be read against
# what no user-space work removes.
#
#   server/scripts/udp-floor.sh [N ...]     (default: 500 1000 2000 5000)
#
# Needs a C compiler (cc). Environment (all optional):
#   RUN_SECS      measured seconds after the ramp [20]
#   SERVER_CORE   core the server is pinned to [0]
#   BOT_CORE      core the clients are pinned to [1]
#   BASE_PORT     first UDP port; point i uses BASE_PORT+i [19900]
#   UP_BYTES      bytes of each client datagram [66]
#   DOWN_BYTES    bytes of each server datagram [172]
#   SOCKETS       the clients' sockets: `shared` (as our bot swarm: up to
#                 1,024 clients a socket, each with its own source address)
#                 or `own` (one a client, as ENet's clients) [shared]
#   OUT_DIR       where the binary and logs go [a fresh mktemp -d]
#
# The default sizes are our server's average datagrams at 2,000 bots of
# default.toml (BENCHMARKS.md: bytes per bot per second / datagrams per bot
# per second, up and down); both sides send 30 per client per second.
# Per point: a fresh server pinned to SERVER_CORE, N clients in one process
# pinned to BOT_CORE, started over max(5, N/500) s. Server cores =
# utime+stime from /proc/PID/stat over the RUN_SECS after the ramp / wall
# time, split into user and kernel time as capacity.sh does; the clients'
# process likewise (total only). µs per datagram = server CPU / datagrams in
# and out. Every process the script starts is stopped by PID, with a
# bounded wait.
set -euo pipefail

cd "$(dirname "$0")"
RUN_SECS=${RUN_SECS:-20}
SERVER_CORE=${SERVER_CORE:-0}
BOT_CORE=${BOT_CORE:-1}
BASE_PORT=${BASE_PORT:-19900}
UP_BYTES=${UP_BYTES:-66}
DOWN_BYTES=${DOWN_BYTES:-172}
SOCKETS=${SOCKETS:-shared}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/udp-floor.XXXXXX)}
POINTS=("$@")
[ ${#POINTS[@]} -eq 0 ] && POINTS=(500 1000 2000 5000)

for tool in cc jq taskset awk; do
    command -v "$tool" >/dev/null || { echo "udp-floor.sh: needs $tool" >&2; exit 2; }
done
mkdir -p "$OUT_DIR"
BIN=$OUT_DIR/udp_floor
cc -O2 -Wall -Wextra -o "$BIN" udp_floor.c

# shellcheck source=server/scripts/lib.sh
. ./lib.sh
trap stop_started EXIT

echo "UDP floor ($UP_BYTES B up, $DOWN_BYTES B down, 30 Hz, client sockets: $SOCKETS) on $(uname -m) $(uname -r), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| clients (sockets) | server cores, steady (user, kernel) | µs per datagram | client process cores | datagrams/client/s up / down |"
echo "|---|---|---|---|---|"
for i in "${!POINTS[@]}"; do
    n=${POINTS[$i]}
    port=$((BASE_PORT + i))
    ramp=$(( n / 500 > 5 ? n / 500 : 5 ))
    SERVER_CMD=("$BIN" server "$port" "$n" "$((ramp + RUN_SECS + 10))" "$DOWN_BYTES")
    # The clients run 2 s past the measured window, so they are still there
    # when it closes.
    CLIENTS_CMD=("$BIN" clients "$port" "$n" "$ramp" "$((RUN_SECS + 2))" "$UP_BYTES" "$SOCKETS")
    measure_steady udp-floor.sh "$n" "$ramp" || exit 1
    per=$(jq -r --arg cpu "$SERVER_CPU_SECS" --arg s "$STEADY_SECS" \
        '($cpu|tonumber) / (($s|tonumber) * .clients * (.up_per_client_per_s + .down_per_client_per_s))
         * 1e6 | . * 100 | round / 100' "$OUT_DIR/clients-$n.json")
    jq -r --arg server "$SERVER_CORES" --arg clients "$CLIENT_CORES" --arg per "$per" \
        '"| \(.clients) (\(.sockets)) | \($server) | \($per) | \($clients) | \(.up_per_client_per_s) / \(.down_per_client_per_s) |"' \
        "$OUT_DIR/clients-$n.json"
done
echo
echo "Logs: $OUT_DIR"
