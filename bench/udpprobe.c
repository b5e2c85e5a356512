/* udpprobe: UDP DNS queries at a fixed rate, and the latency of every answer.
 *
 *   udpprobe PORT QUERYFILE RATE SECONDS OUTFILE [SOCKETS]
 *
 * Why not only dnsperf: on a 2-CPU machine dnsperf's send and receive threads share one core, and its
 * own hiccups (around the moment its -q slots are all used once, and again when its first time-outs are
 * swept) show up as server latency for every server alike. This probe is one thread busy-polling
 * non-blocking sockets: it sends each query at its scheduled time (after a stall of its own it catches up
 * at once, so a slow server never slows the schedule: no coordinated omission), never waits for answers,
 * and times each answer from the moment its query was sent (clock_gettime, monotonic).
 *
 * QUERYFILE has dnsperf's format ("name TYPE" per line; A, AAAA, SRV, PTR, TXT, SOA, NS, CNAME). The
 * queries carry no EDNS, RD set, as dnsperf sends them. Answers are matched by socket and query ID, and
 * their question must be the query's (so a very late answer is never credited to a newer query).
 * OUTFILE gets one little-endian float32 per query sent, in send order: milliseconds, or -1 for a query
 * not answered within 2 s. stdout gets one line: "sent N answered M late_sends L".
 *
 * QUERYFILE "random:SUFFIX" sends a name never asked before with every query (a random-subdomain flood):
 * query number i asks "<16 hex digits from i>.SUFFIX" type A, so an answer is still matched to its question.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_QUERIES 200000
#define MAX_SOCKETS 16
#define TIMEOUT 2.0

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int qtype_of(const char *type) {
    static const struct { const char *name; int code; } types[] = {
        {"A", 1}, {"NS", 2}, {"CNAME", 5}, {"SOA", 6}, {"PTR", 12}, {"TXT", 16}, {"AAAA", 28}, {"SRV", 33},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(type, types[i].name) == 0) return types[i].code;
    return -1;
}

/* Header (ID filled in at send time, RD set, QDCOUNT 1) and question; the length, or -1 if unusable. */
static int encode(const char *name, int qtype, uint8_t *out, int room) {
    uint8_t *p = out + 12, *end = out + room - 5;
    memset(out, 0, 12);
    out[2] = 0x01;
    out[5] = 1;
    while (*name) {
        const char *dot = strchr(name, '.');
        int n = dot ? (int)(dot - name) : (int)strlen(name);
        if (n == 0 || n > 63 || p + 1 + n >= end) return n == 0 && !dot[1] ? -2 : -1;
        *p++ = (uint8_t)n;
        memcpy(p, name, (size_t)n);
        p += n;
        name += n;
        if (*name == '.') name++;
    }
    *p++ = 0;
    *p++ = (uint8_t)(qtype >> 8);
    *p++ = (uint8_t)qtype;
    *p++ = 0;
    *p++ = 1;
    return (int)(p - out);
}

typedef struct { uint8_t wire[272]; int len; } Query;

/* A 64-bit mix of the query number (splitmix64's finalizer): unique names that look random. */
static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void random_query(long seq, const char *suffix, Query *q) {
    char name[300];
    snprintf(name, sizeof name, "%016llx.%s", (unsigned long long)mix((uint64_t)seq), suffix);
    q->len = encode(name, 1, q->wire, (int)sizeof q->wire);
}
typedef struct { double sent; long seq; } Slot;

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: udpprobe PORT QUERYFILE RATE SECONDS OUTFILE [SOCKETS]\n");
        return 2;
    }
    int port = atoi(argv[1]), nsock = argc > 6 ? atoi(argv[6]) : 4;
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    if (port <= 0 || rate <= 0 || seconds <= 0 || nsock < 1 || nsock > MAX_SOCKETS) {
        fprintf(stderr, "udpprobe: bad arguments\n");
        return 2;
    }
    const char *suffix = strncmp(argv[2], "random:", 7) == 0 ? argv[2] + 7 : NULL;
    Query *queries = malloc(sizeof(Query) * MAX_QUERIES);
    int nq = 0;
    if (suffix) {
        random_query(0, suffix, &queries[0]);
        if (queries[0].len <= 0) { fprintf(stderr, "udpprobe: bad suffix %s\n", suffix); return 2; }
        nq = 1;
    } else {
        FILE *in = fopen(argv[2], "r");
        if (!in) { perror(argv[2]); return 1; }
        char line[600], name[300], type[16];
        while (nq < MAX_QUERIES && fgets(line, sizeof line, in)) {
            int qtype;
            if (sscanf(line, "%299s %15s", name, type) != 2 || (qtype = qtype_of(type)) < 0) continue;
            int len = encode(name, qtype, queries[nq].wire, (int)sizeof queries[nq].wire);
            if (len == -2) len = encode("", qtype, queries[nq].wire, (int)sizeof queries[nq].wire);  /* "." */
            if (len > 0) queries[nq++].len = len;
        }
        fclose(in);
    }
    if (nq == 0) { fprintf(stderr, "udpprobe: no usable query in %s\n", argv[2]); return 1; }

    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);
    int socks[MAX_SOCKETS], buffer = 4 << 20;
    for (int s = 0; s < nsock; s++) {
        socks[s] = socket(AF_INET, SOCK_DGRAM, 0);
        setsockopt(socks[s], SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
        if (socks[s] < 0 || connect(socks[s], (struct sockaddr *)&server, sizeof server) != 0) {
            perror("socket");
            return 1;
        }
    }
    long total = (long)(rate * seconds);
    float *latency = malloc(sizeof(float) * (size_t)total);
    Slot *slots = calloc((size_t)nsock * 65536, sizeof(Slot));
    for (long i = 0; i < total; i++) latency[i] = -1.0f;
    for (long i = 0; i < (long)nsock * 65536; i++) slots[i].seq = -1;

    long next = 0, answered = 0, late_sends = 0;
    uint8_t reply[4096];
    double start = now(), last_send_end = start + seconds;
    for (;;) {
        double t = now();
        long due = (long)((t - start) * rate) + 1;
        if (due > total) due = total;
        if (due - next > 1) late_sends += due - next - 1;  /* behind schedule: sent in a catch-up burst */
        for (; next < due; next++) {
            int s = (int)(next % nsock);
            uint16_t id = (uint16_t)(next / nsock);
            Query *q = &queries[next % nq];
            if (suffix) random_query(next, suffix, q);
            q->wire[0] = (uint8_t)(id >> 8);
            q->wire[1] = (uint8_t)id;
            Slot *slot = &slots[s * 65536 + id];
            slot->seq = next;
            slot->sent = now();
            send(socks[s], q->wire, (size_t)q->len, MSG_DONTWAIT);
        }
        for (int s = 0; s < nsock; s++) {
            ssize_t n;
            while ((n = recv(socks[s], reply, sizeof reply, MSG_DONTWAIT)) >= 12) {
                Slot *slot = &slots[s * 65536 + ((reply[0] << 8) | reply[1])];
                if (slot->seq < 0 || latency[slot->seq] >= 0) continue;
                Query *q = &queries[slot->seq % nq], fresh;
                if (suffix) { random_query(slot->seq, suffix, &fresh); q = &fresh; }
                if (n < q->len || memcmp(reply + 12, q->wire + 12, (size_t)q->len - 12) != 0) continue;
                double elapsed = now() - slot->sent;
                if (elapsed <= TIMEOUT) {
                    latency[slot->seq] = (float)(elapsed * 1000.0);
                    answered++;
                }
                slot->seq = -1;
            }
        }
        if (next >= total && (answered >= total || t > last_send_end + TIMEOUT)) break;
    }
    FILE *out = fopen(argv[5], "wb");
    if (!out || fwrite(latency, sizeof(float), (size_t)total, out) != (size_t)total || fclose(out) != 0) {
        perror(argv[5]);
        return 1;
    }
    printf("sent %ld answered %ld late_sends %ld\n", total, answered, late_sends);
    return 0;
}
