/*
 * The reference workload of issue 9 on the C ENet 1.3 library, so that our
 * server's CPU can be compared with ENet's on the same host, the same day.
 *
 *   enet_reference server PORT MAX_PEERS SECONDS
 *   enet_reference clients PORT N RAMP_SECS RUN_SECS
 *
 * The workload (no encryption, 30 Hz): every client sends a 24-byte
 * unreliable input each tick and a 64-byte reliable chat message once a
 * second; the server echoes each chat message to its sender (reliable) and
 * sends every client a 128-byte unreliable state each tick.
 *
 * The server runs for SECONDS (or until SIGINT or SIGTERM), writes the chat
 * messages it echoed to stderr and exits. The clients connect over RAMP_SECS,
 * run RUN_SECS more, and print one line of JSON: connected clients, chat
 * echoes sent and received, the chat round trip (p50, p99, max, in ms, with
 * the echo seen at the client's next 30 Hz turn, as a game client would),
 * and states received per client per second. Both bind loopback only.
 *
 * Build: gcc -O2 -o enet_reference enet_reference.c -lenet (Debian's
 * libenet-dev is ENet 1.3.17). Driven by server/scripts/enet-reference.sh.
 */
#include <enet/enet.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_HZ 30
#define INPUT_BYTES 24
#define CHAT_BYTES 64
#define STATE_BYTES 128
#define CHANNEL_MOVEMENT 0
#define CHANNEL_CHAT 1
#define SOCKET_BUFFER_BYTES (4 << 20)

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Set by SIGINT or SIGTERM: the server stops early, summary and all
 * (enet_host_service keeps waiting through a signal, to the end of its
 * timeout: at most a tick). */
static volatile sig_atomic_t stop_requested;

static void request_stop(int signal) {
    (void)signal;
    stop_requested = 1;
}

static int stop_on_signals(void) {
    struct sigaction action = {.sa_handler = request_stop};
    sigemptyset(&action.sa_mask);
    return sigaction(SIGINT, &action, NULL) == 0 && sigaction(SIGTERM, &action, NULL) == 0 ? 0
                                                                                           : -1;
}

static void sleep_until(uint64_t deadline_us) {
    uint64_t now = now_us();
    if (deadline_us > now) {
        uint64_t wait = deadline_us - now;
        struct timespec ts = {(time_t)(wait / 1000000u), (long)(wait % 1000000u) * 1000};
        nanosleep(&ts, NULL);
    }
}

static int server(enet_uint16 port, size_t max_peers, unsigned seconds) {
    ENetAddress address;
    enet_address_set_host(&address, "127.0.0.1");
    address.port = port;
    ENetHost *host = enet_host_create(&address, max_peers, 2, 0, 0);
    if (host == NULL) {
        fprintf(stderr, "enet_reference: cannot bind 127.0.0.1:%u\n", port);
        return 1;
    }
    if (stop_on_signals() < 0) {
        fprintf(stderr, "enet_reference: cannot handle signals: %s\n", strerror(errno));
        return 1;
    }
    /* The same 4 MiB socket buffers our server asks for (ENet's default is
     * 256 KiB, which overflows while a tick's states are being sent). */
    enet_socket_set_option(host->socket, ENET_SOCKOPT_RCVBUF, SOCKET_BUFFER_BYTES);
    enet_socket_set_option(host->socket, ENET_SOCKOPT_SNDBUF, SOCKET_BUFFER_BYTES);
    uint8_t state[STATE_BYTES];
    memset(state, 0x5a, sizeof state);
    const uint64_t tick_us = 1000000u / TICK_HZ;
    const uint64_t end = now_us() + (uint64_t)seconds * 1000000u;
    uint64_t next_tick = now_us() + tick_us;
    uint64_t echoed = 0;
    while (now_us() < end && !stop_requested) {
        uint64_t now = now_us();
        /* Rounded up: rounded down, the last part of every tick's millisecond
         * was spent polling with a zero wait (each call walking every peer),
         * up to ~3 % of a core counted as ENet's work. */
        enet_uint32 wait_ms =
            next_tick > now ? (enet_uint32)((next_tick - now + 999u) / 1000u) : 0;
        ENetEvent event;
        int got = enet_host_service(host, &event, wait_ms);
        while (got > 0) {
            if (event.type == ENET_EVENT_TYPE_RECEIVE) {
                if (event.channelID == CHANNEL_CHAT) {
                    ENetPacket *echo = enet_packet_create(event.packet->data, event.packet->dataLength,
                                                          ENET_PACKET_FLAG_RELIABLE);
                    enet_peer_send(event.peer, CHANNEL_CHAT, echo);
                    echoed++;
                }
                enet_packet_destroy(event.packet);
            }
            got = enet_host_check_events(host, &event);
        }
        if (now_us() >= next_tick) {
            next_tick += tick_us;
            for (size_t i = 0; i < host->peerCount; i++) {
                ENetPeer *peer = &host->peers[i];
                if (peer->state != ENET_PEER_STATE_CONNECTED) {
                    continue;
                }
                enet_peer_send(peer, CHANNEL_MOVEMENT,
                               enet_packet_create(state, sizeof state, 0));
            }
            enet_host_flush(host);
        }
    }
    fprintf(stderr, "enet_reference server: %llu chat messages echoed\n",
            (unsigned long long)echoed);
    enet_host_destroy(host);
    return 0;
}

struct client {
    ENetHost *host;
    ENetPeer *peer;
    int connected;
    int ever_connected;
    uint64_t next_chat_us;
};

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int clients(enet_uint16 port, size_t n, unsigned ramp, unsigned run) {
    struct client *c = calloc(n, sizeof *c);
    size_t rtt_cap = n * (ramp + run + 1) + 16;
    uint32_t *rtt_us = malloc(rtt_cap * sizeof *rtt_us);
    if (c == NULL || rtt_us == NULL) {
        fprintf(stderr, "enet_reference: out of memory\n");
        return 1;
    }
    ENetAddress server;
    enet_address_set_host(&server, "127.0.0.1");
    server.port = port;
    const uint64_t tick_us = 1000000u / TICK_HZ;
    const uint64_t start = now_us();
    const uint64_t run_start = start + (uint64_t)ramp * 1000000u;
    const uint64_t end = run_start + (uint64_t)run * 1000000u;
    size_t started = 0, rtts = 0;
    uint64_t chats_sent = 0, echoes = 0, states_in_run = 0, dropped = 0;
    uint8_t input[INPUT_BYTES], chat[CHAT_BYTES];
    memset(input, 0x11, sizeof input);
    memset(chat, 0x22, sizeof chat);
    uint64_t next_tick = start;
    while (now_us() < end) {
        sleep_until(next_tick);
        next_tick += tick_us;
        uint64_t now = now_us();
        size_t due = now >= run_start ? n : (size_t)((now - start) * n / ((uint64_t)ramp * 1000000u + 1));
        for (; started < due; started++) {
            c[started].host = enet_host_create(NULL, 1, 2, 0, 0);
            if (c[started].host == NULL) {
                fprintf(stderr, "enet_reference: client %zu: no socket\n", started);
                return 1;
            }
            c[started].peer = enet_host_connect(c[started].host, &server, 2, 0);
            c[started].next_chat_us = now + (uint64_t)(started % 1000) * 1000u;
        }
        for (size_t i = 0; i < started; i++) {
            struct client *cl = &c[i];
            ENetEvent event;
            while (enet_host_service(cl->host, &event, 0) > 0) {
                if (event.type == ENET_EVENT_TYPE_CONNECT) {
                    cl->connected = 1;
                    cl->ever_connected = 1;
                } else if (event.type == ENET_EVENT_TYPE_DISCONNECT) {
                    if (cl->connected) {
                        dropped++;
                    }
                    cl->connected = 0;
                } else if (event.type == ENET_EVENT_TYPE_RECEIVE) {
                    if (event.channelID == CHANNEL_CHAT && event.packet->dataLength == CHAT_BYTES) {
                        uint64_t sent;
                        memcpy(&sent, event.packet->data, sizeof sent);
                        echoes++;
                        if (rtts < rtt_cap) {
                            rtt_us[rtts++] = (uint32_t)(now_us() - sent);
                        }
                    } else if (now >= run_start) {
                        states_in_run++;
                    }
                    enet_packet_destroy(event.packet);
                }
            }
            if (!cl->connected) {
                continue;
            }
            enet_peer_send(cl->peer, CHANNEL_MOVEMENT, enet_packet_create(input, sizeof input, 0));
            if (now >= cl->next_chat_us) {
                cl->next_chat_us += 1000000u;
                uint64_t stamp = now_us();
                memcpy(chat, &stamp, sizeof stamp);
                enet_peer_send(cl->peer, CHANNEL_CHAT,
                               enet_packet_create(chat, sizeof chat, ENET_PACKET_FLAG_RELIABLE));
                chats_sent++;
            }
            enet_host_flush(cl->host);
        }
    }
    size_t connected = 0, never = 0;
    for (size_t i = 0; i < started; i++) {
        connected += (size_t)c[i].connected;
        never += (size_t)!c[i].ever_connected;
    }
    qsort(rtt_us, rtts, sizeof *rtt_us, cmp_u32);
    double p50 = rtts ? rtt_us[rtts / 2] / 1000.0 : 0;
    double p99 = rtts ? rtt_us[rtts * 99 / 100] / 1000.0 : 0;
    double max = rtts ? rtt_us[rtts - 1] / 1000.0 : 0;
    printf("{\"requested\": %zu, \"connected\": %zu, \"never_connected\": %zu, "
           "\"disconnected\": %llu, \"chat_sent\": %llu, \"chat_echoed\": %llu, "
           "\"chat_rtt_ms\": {\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f}, "
           "\"states_per_client_per_s\": %.1f}\n",
           n, connected, never, (unsigned long long)dropped, (unsigned long long)chats_sent, (unsigned long long)echoes, p50, p99, max,
           connected && run ? (double)states_in_run / (double)connected / run : 0.0);
    for (size_t i = 0; i < started; i++) {
        enet_host_destroy(c[i].host);
    }
    free(c);
    free(rtt_us);
    return 0;
}

int main(int argc, char **argv) {
    if (enet_initialize() != 0) {
        fprintf(stderr, "enet_reference: enet_initialize failed\n");
        return 1;
    }
    int rc = 2;
    if (argc == 5 && strcmp(argv[1], "server") == 0) {
        rc = server((enet_uint16)atoi(argv[2]), (size_t)atol(argv[3]), (unsigned)atoi(argv[4]));
    } else if (argc == 6 && strcmp(argv[1], "clients") == 0) {
        rc = clients((enet_uint16)atoi(argv[2]), (size_t)atol(argv[3]), (unsigned)atoi(argv[4]),
                     (unsigned)atoi(argv[5]));
    } else {
        fprintf(stderr,
                "usage: enet_reference server PORT MAX_PEERS SECONDS\n"
                "       enet_reference clients PORT N RAMP_SECS RUN_SECS\n");
    }
    enet_deinitialize();
    return rc;
}
