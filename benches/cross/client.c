/* A second, independent load generator for the small-file comparison (BENCHMARKS.md,
 * "Which CPU figure is right"). Plain blocking sockets, one thread per concurrent client,
 * nothing shared with the Rust bench: each transfer is
 *   socket, connect, send the whole request, recv until EOF (or, with -k, until
 *   Content-Length), close
 * and the body's byte count is checked. Traffic goes only to the address given.
 *
 *   cc -O2 -pthread -o /tmp/client benches/cross/client.c
 *   /tmp/client ADDR PORT PROTO CONC SECS SIZE [PATH] [FLAGS]
 *     PROTO: native | http10 | http11 (keep-alive, 100 requests per connection)
 *     FLAGS: early   close as soon as SIZE body bytes are in, without waiting for EOF
 *            rst     close with SO_LINGER 0 (a reset instead of a FIN)
 *            trunc   discard body bytes with recv(MSG_TRUNC) instead of copying them
 * Prints: transfers, bad, seconds, transfers/s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;
static char req[512];
static size_t req_len;
static long long size;
static int proto_native, keepalive, early, rst, trunc_reads;
static double deadline;
static atomic_llong ok_count, bad_count;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one response. Returns 1 when it had exactly `size` body bytes, 0 otherwise;
 * *eof says whether the server closed. */
static int one_response(int fd, char *buf, size_t cap, int *eof) {
    size_t have = 0;
    long long head = -1, body = 0;
    *eof = 0;
    for (;;) {
        int flags = (head >= 0 && trunc_reads) ? MSG_TRUNC : 0;
        size_t room = head >= 0 ? cap : cap - have;
        ssize_t n = recv(fd, head >= 0 ? buf : buf + have, room, flags);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return 0;
        if (n == 0) {
            *eof = 1;
            return head >= 0 && body == size;
        }
        if (head < 0) {
            have += (size_t)n;
            if (proto_native) {
                /* The response magic F0 'X' 'F' 'R' and status 0 (ok), then the body. */
                if (have >= 48) {
                    head = 48;
                    if (memcmp(buf, "\xF0XFR", 4) != 0 || buf[5] != 0) return 0;
                }
            } else {
                char *e = memmem(buf, have, "\r\n\r\n", 4);
                if (e) {
                    head = (e - buf) + 4;
                    /* Only a 200 carries the file. */
                    if (head < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || memcmp(buf + 8, " 200", 4) != 0) return 0;
                }
            }
            if (head < 0) {
                if (have == cap) return 0;
                continue;
            }
            body = (long long)have - head;
        } else {
            body += n;
        }
        if (body > size) return 0;
        if (body == size && (keepalive || early)) return 1;
    }
}

static void *worker(void *arg) {
    (void)arg;
    char *buf = malloc(1 << 20);
    while (now() < deadline) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { atomic_fetch_add(&bad_count, 1); continue; }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
            atomic_fetch_add(&bad_count, 1);
            close(fd);
            continue;
        }
        int per_conn = keepalive ? 100 : 1;
        for (int i = 0; i < per_conn && now() < deadline; i++) {
            int eof = 0;
            if (send_all(fd, req, req_len) != 0 || !one_response(fd, buf, 1 << 20, &eof)) {
                atomic_fetch_add(&bad_count, 1);
                break;
            }
            atomic_fetch_add(&ok_count, 1);
            if (eof) break;
        }
        if (rst) {
            struct linger l = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        close(fd);
    }
    free(buf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s ADDR PORT native|http10|http11 CONC SECS SIZE [PATH] [early|rst|trunc]...\n", argv[0]);
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) return 2;
    const char *proto = argv[3];
    int conc = atoi(argv[4]);
    double secs = atof(argv[5]);
    size = atoll(argv[6]);
    const char *path = argc > 7 ? argv[7] : "file";
    for (int i = 8; i < argc; i++) {
        if (!strcmp(argv[i], "early")) early = 1;
        else if (!strcmp(argv[i], "rst")) rst = 1;
        else if (!strcmp(argv[i], "trunc")) trunc_reads = 1;
    }
    if (!strcmp(proto, "native")) {
        /* The native request (docs/PROTOCOL.md): magic F0 'X' 'F' 'Q', version 1, flags 0,
         * 2 reserved bytes, offset 0 (u64), 32 bytes of token (all zero: none). */
        proto_native = 1;
        memset(req, 0, 48);
        memcpy(req, "\xF0XFQ\x01", 5);
        req_len = 48;
    } else if (!strcmp(proto, "http10")) {
        req_len = (size_t)snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\n\r\n", path);
    } else if (!strcmp(proto, "http11")) {
        keepalive = 1;
        req_len = (size_t)snprintf(req, sizeof req, "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    } else {
        return 2;
    }
    pthread_t *t = calloc((size_t)conc, sizeof *t);
    double t0 = now();
    deadline = t0 + secs;
    for (int i = 0; i < conc; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < conc; i++) pthread_join(t[i], NULL);
    double el = now() - t0;
    long long ok = atomic_load(&ok_count), bad = atomic_load(&bad_count);
    printf("%lld %lld %.3f %.0f\n", ok, bad, el, ok / el);
    return bad > ok / 100 ? 1 : 0;
}
