/*
 * The kernel's floor under issue 9's workload: what a server that does
 * nothing but move the datagrams costs on this host. No protocol, no
 * encryption, no game: the server reads every datagram with recvmmsg (64 a
 * call) and, 30 times a second, sends every client one datagram with
 * sendmmsg (64 a call), as our net-io thread does; the clients send one
 * datagram each per tick. The CPU this server uses is the part of any
 * server's CPU that no user-space work removes, for this many datagrams of
 * these sizes on this kernel.
 *
 *   udp_floor server PORT MAX_CLIENTS SECONDS DOWN_BYTES
 *   udp_floor clients PORT N RAMP_SECS RUN_SECS UP_BYTES shared|own
 *
 * The server learns a client from its first datagram and runs for SECONDS
 * (or until SIGINT or SIGTERM), then writes a summary line to stderr.
 * The clients start over RAMP_SECS, each at its own phase of the tick, run
 * RUN_SECS more and print one line of JSON: datagrams sent and received per
 * client per second over the run. `own`: one socket per client, as ENet's
 * clients have. `shared`: as our bot swarm against a loopback server, up to
 * 1,024 clients share a socket, each with its own source address 127.1.x.y
 * (IP_PKTINFO), and datagrams move with sendmmsg / recvmmsg. On loopback the
 * sender's system call also delivers the datagram to the receiving socket
 * and wakes its reader, so the clients' sockets change the server's kernel
 * time. Both bind loopback only.
 *
 * Build: cc -O2 -o udp_floor udp_floor.c (Linux). Driven by
 * server/scripts/udp-floor.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TICK_HZ 30
#define TICK_US (1000000u / TICK_HZ)
#define BATCH 64
#define MAX_BYTES 1200
#define SOCKET_BUFFER_BYTES (4 << 20)

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Set by SIGINT or SIGTERM: the server stops early, summary and all. */
static volatile sig_atomic_t stop_requested;

static void request_stop(int signal) {
    (void)signal;
    stop_requested = 1;
}

/* Without SA_RESTART: a signal ends epoll_wait (EINTR) at once. */
static int stop_on_signals(void) {
    struct sigaction action = {.sa_handler = request_stop};
    sigemptyset(&action.sa_mask);
    return sigaction(SIGINT, &action, NULL) == 0 && sigaction(SIGTERM, &action, NULL) == 0 ? 0
                                                                                           : -1;
}

static int wait_ms(uint64_t deadline_us) {
    uint64_t now = now_us();
    return deadline_us > now ? (int)((deadline_us - now + 999) / 1000) : 0;
}

static int loopback_socket(uint16_t port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return -1;
    }
    int size = SOCKET_BUFFER_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int server(uint16_t port, size_t max_clients, unsigned seconds, size_t down_bytes) {
    int fd = loopback_socket(port);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET};
    if (fd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        fprintf(stderr, "udp_floor: cannot bind 127.0.0.1:%u\n", port);
        return 1;
    }
    if (stop_on_signals() < 0) {
        fprintf(stderr, "udp_floor: cannot handle signals: %s\n", strerror(errno));
        return 1;
    }
    /* Clients are told apart by address and port: an open-addressing table
     * of (ip << 16 | port) + 1, 0 for free. */
    size_t table_len = 1;
    while (table_len < 2 * max_clients) {
        table_len *= 2;
    }
    uint64_t *table = calloc(table_len, sizeof *table);
    struct sockaddr_in *clients = calloc(max_clients, sizeof *clients);
    if (table == NULL || clients == NULL) {
        fprintf(stderr, "udp_floor: out of memory\n");
        return 1;
    }
    static char in_bufs[BATCH][MAX_BYTES];
    static char out_buf[MAX_BYTES];
    static struct mmsghdr in_msgs[BATCH], out_msgs[BATCH];
    static struct iovec in_iov[BATCH], out_iov[BATCH];
    static struct sockaddr_in from[BATCH];
    memset(out_buf, 7, sizeof out_buf);
    size_t count = 0;
    uint64_t received = 0, sent = 0, send_failures = 0;
    uint64_t end = now_us() + (uint64_t)seconds * 1000000u, next_tick = now_us() + TICK_US;
    for (uint64_t now = now_us(); now < end && !stop_requested; now = now_us()) {
        struct epoll_event ready;
        epoll_wait(ep, &ready, 1, wait_ms(next_tick < end ? next_tick : end));
        for (;;) {
            for (int i = 0; i < BATCH; i++) {
                in_iov[i] = (struct iovec){in_bufs[i], MAX_BYTES};
                in_msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i],
                                                     .msg_namelen = sizeof from[i],
                                                     .msg_iov = &in_iov[i],
                                                     .msg_iovlen = 1};
            }
            int got = recvmmsg(fd, in_msgs, BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0) {
                break;
            }
            received += (uint64_t)got;
            for (int i = 0; i < got; i++) {
                uint64_t key = ((uint64_t)ntohl(from[i].sin_addr.s_addr) << 16 |
                                ntohs(from[i].sin_port)) + 1;
                size_t h = (size_t)(key * 0x9e3779b97f4a7c15u >> 20) & (table_len - 1);
                while (table[h] != 0 && table[h] != key) {
                    h = (h + 1) & (table_len - 1);
                }
                if (table[h] == 0 && count < max_clients) {
                    table[h] = key;
                    clients[count++] = from[i];
                }
            }
            if (got < BATCH) {
                break;
            }
        }
        if (now_us() < next_tick) {
            continue;
        }
        /* A tick that came too late for its turn is skipped, as a game
         * server's would be: the rate then shows in the clients' report. */
        while (next_tick <= now_us()) {
            next_tick += TICK_US;
        }
        for (size_t first = 0; first < count; first += BATCH) {
            int n = count - first < BATCH ? (int)(count - first) : BATCH;
            for (int i = 0; i < n; i++) {
                out_iov[i] = (struct iovec){out_buf, down_bytes};
                out_msgs[i].msg_hdr = (struct msghdr){.msg_name = &clients[first + i],
                                                      .msg_namelen = sizeof clients[0],
                                                      .msg_iov = &out_iov[i],
                                                      .msg_iovlen = 1};
            }
            for (int done = 0; done < n;) {
                int put = sendmmsg(fd, out_msgs + done, (unsigned)(n - done), 0);
                if (put <= 0) {
                    /* Skip the datagram the kernel refused, as a game server
                     * would drop a state it cannot send. */
                    send_failures++;
                    done++;
                    continue;
                }
                sent += (uint64_t)put;
                done += put;
            }
        }
    }
    fprintf(stderr, "udp_floor server: %zu clients, %llu datagrams in, %llu out, %llu refused\n",
            count, (unsigned long long)received, (unsigned long long)sent,
            (unsigned long long)send_failures);
    return 0;
}

/* A client socket: one per client, or (shared) one per group of clients,
 * each client with its own source address set per datagram with
 * IP_PKTINFO, as our bot swarm does against a loopback server. */
struct group {
    int fd;
    unsigned queued;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    union {
        char bytes[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } cmsg[BATCH];
};

static void flush_group(struct group *g, uint64_t *sent) {
    for (unsigned done = 0; done < g->queued;) {
        int put = sendmmsg(g->fd, g->msgs + done, g->queued - done, 0);
        if (put <= 0) {
            done++;
            continue;
        }
        *sent += (uint64_t)put;
        done += (unsigned)put;
    }
    g->queued = 0;
}

static int clients(uint16_t port, size_t n, unsigned ramp, unsigned run, size_t up_bytes,
                   int shared) {
    /* Shared: 127.1.0.1 + (i % sources) for client i, on socket i / sources. */
    size_t sources = shared ? (n < 1024 ? n : 1024) : 1;
    size_t groups = shared ? (n + sources - 1) / sources : n;
    struct group *g = calloc(groups, sizeof *g);
    int ep = epoll_create1(0);
    if (g == NULL || ep < 0) {
        fprintf(stderr, "udp_floor: cannot set up the clients: %s\n", strerror(errno));
        return 1;
    }
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons(port)};
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static char buf[MAX_BYTES];
    memset(buf, 3, sizeof buf);
    for (size_t i = 0; i < groups; i++) {
        g[i].fd = shared ? socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0) : loopback_socket(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        if (g[i].fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, g[i].fd, &ev) < 0) {
            fprintf(stderr, "udp_floor: cannot open client socket %zu: %s\n", i, strerror(errno));
            return 1;
        }
        if (shared) {
            int size = SOCKET_BUFFER_BYTES;
            setsockopt(g[i].fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
            setsockopt(g[i].fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        }
    }
    uint64_t start = now_us();
    uint64_t ramp_us = (uint64_t)ramp * 1000000u;
    uint64_t run_start = start + ramp_us, end = run_start + (uint64_t)run * 1000000u;
    uint64_t sent = 0, received = 0, run_sent = 0, run_received = 0;
    static struct mmsghdr in_msgs[BATCH];
    static struct iovec in_iov[BATCH];
    static char in_bufs[BATCH][MAX_BYTES];
    struct epoll_event ready[256];
    /* Client i sends at its own phase of every tick, TICK_US * i / n, once
     * the ramp has reached it. */
    uint64_t tick_start = start;
    size_t cursor = 0;
    for (uint64_t now = now_us(); now < end; now = now_us()) {
        size_t started = now >= run_start ? n : (size_t)((now - start) * n / ramp_us);
        uint64_t before = sent;
        for (;;) {
            if (cursor == n) {
                cursor = 0;
                tick_start += TICK_US;
            }
            if (tick_start + TICK_US * cursor / n > now) {
                break;
            }
            if (cursor < started && !shared) {
                if (sendto(g[cursor].fd, buf, up_bytes, 0, (struct sockaddr *)&server,
                           sizeof server) > 0) {
                    sent++;
                }
            } else if (cursor < started) {
                struct group *q = &g[cursor / sources];
                if (q->queued == BATCH) {
                    flush_group(q, &sent);
                }
                unsigned k = q->queued++;
                q->iov[k] = (struct iovec){buf, up_bytes};
                struct cmsghdr *c = (struct cmsghdr *)q->cmsg[k].bytes;
                c->cmsg_level = IPPROTO_IP;
                c->cmsg_type = IP_PKTINFO;
                c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
                struct in_pktinfo info = {0};
                info.ipi_spec_dst.s_addr = htonl((127u << 24 | 1u << 16 | 1u) + cursor % sources);
                memcpy(CMSG_DATA(c), &info, sizeof info);
                q->msgs[k].msg_hdr = (struct msghdr){.msg_name = &server,
                                                     .msg_namelen = sizeof server,
                                                     .msg_iov = &q->iov[k],
                                                     .msg_iovlen = 1,
                                                     .msg_control = c,
                                                     .msg_controllen = sizeof q->cmsg[k].bytes};
            }
            cursor++;
        }
        for (size_t i = 0; shared && i < groups; i++) {
            if (g[i].queued > 0) {
                flush_group(&g[i], &sent);
            }
        }
        if (now >= run_start) {
            run_sent += sent - before;
        }
        int got = epoll_wait(ep, ready, 256, wait_ms(tick_start + TICK_US * cursor / n));
        for (int r = 0; r < got; r++) {
            int fd = g[ready[r].data.u64].fd;
            for (;;) {
                for (int i = 0; i < BATCH; i++) {
                    in_iov[i] = (struct iovec){in_bufs[i], MAX_BYTES};
                    in_msgs[i].msg_hdr = (struct msghdr){.msg_iov = &in_iov[i], .msg_iovlen = 1};
                }
                int read = recvmmsg(fd, in_msgs, BATCH, MSG_DONTWAIT, NULL);
                if (read <= 0) {
                    break;
                }
                received += (uint64_t)read;
                if (now_us() >= run_start) {
                    run_received += (uint64_t)read;
                }
                if (read < BATCH) {
                    break;
                }
            }
        }
    }
    printf("{\"clients\": %zu, \"sockets\": %zu, \"sent\": %llu, \"received\": %llu, "
           "\"up_per_client_per_s\": %.1f, \"down_per_client_per_s\": %.1f}\n",
           n, groups, (unsigned long long)sent, (unsigned long long)received,
           (double)run_sent / (double)n / run, (double)run_received / (double)n / run);
    return 0;
}

static size_t datagram_bytes(const char *arg) {
    long bytes = atol(arg);
    return bytes >= 1 && bytes <= MAX_BYTES ? (size_t)bytes : 0;
}

int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "server") == 0 && datagram_bytes(argv[5]) > 0 &&
        atol(argv[3]) > 0) {
        return server((uint16_t)atoi(argv[2]), (size_t)atol(argv[3]), (unsigned)atoi(argv[4]),
                      datagram_bytes(argv[5]));
    }
    if (argc == 8 && strcmp(argv[1], "clients") == 0 && datagram_bytes(argv[6]) > 0 &&
        atol(argv[3]) > 0 && atoi(argv[4]) > 0 && atoi(argv[5]) > 0 &&
        (strcmp(argv[7], "shared") == 0 || strcmp(argv[7], "own") == 0)) {
        return clients((uint16_t)atoi(argv[2]), (size_t)atol(argv[3]), (unsigned)atoi(argv[4]),
                       (unsigned)atoi(argv[5]), datagram_bytes(argv[6]),
                       strcmp(argv[7], "shared") == 0);
    }
    fprintf(stderr,
            "usage: udp_floor server PORT MAX_CLIENTS SECONDS DOWN_BYTES\n"
            "       udp_floor clients PORT N RAMP_SECS RUN_SECS UP_BYTES shared|own\n"
            "(datagrams of 1 to %d bytes; counts and seconds above 0)\n",
            MAX_BYTES);
    return 2;
}
