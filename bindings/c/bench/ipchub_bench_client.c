/*
 * ipchub_bench_client: one end of an `ipchub-bench --bindings` throughput
 * session, written against ipchub.h as any C program would be.
 *
 *   ipchub_bench_client sub SOCKET TRANSPORT CHANNEL SIZE COUNT
 *   ipchub_bench_client pub SOCKET TRANSPORT CHANNEL SIZE COUNT
 *
 * The publisher sends COUNT messages of SIZE bytes, each carrying its
 * sequence number (0, 1, ...) little-endian in its first 8 bytes, as fast
 * as it can. The subscriber counts them and checks presence, order and
 * size. Both print one line on stdout the bench parses (the same lines as
 * bindings/python/bench_client.py and the bench's own Rust client):
 *
 *   sub:  "ready" once subscribed, then
 *         "result received=N out_of_order=N bad_size=N last_ns=T"
 *   pub:  "result sent=N first_ns=T end_ns=T"
 *
 * Times are CLOCK_MONOTONIC in nanoseconds: first_ns just before the first
 * publish, last_ns at the last receipt. On failure: "error TEXT", exit 1.
 *
 * Build: cc -O2 -o ipchub_bench_client ipchub_bench_client.c \
 *            $(pkg-config --cflags --libs ipchub)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ipchub.h>

/* A subscriber that hears nothing this long gives up (lost messages). */
#define IDLE_MS 10000

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int fail(const char *what, int rc)
{
    printf("error %s: %s (%s)\n", what, ipchub_last_error(), ipchub_strerror(rc));
    fflush(stdout);
    return 1;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int subscriber(ipchub_client *c, const char *channel, size_t size, uint64_t count)
{
    int rc = ipchub_subscribe(c, channel);
    if (rc != IPCHUB_OK)
        return fail("subscribe", rc);
    printf("ready\n");
    fflush(stdout);
    uint64_t received = 0, out_of_order = 0, bad_size = 0, expected = 0, last_ns = 0;
    while (received < count) {
        ipchub_message m;
        rc = ipchub_receive(c, IDLE_MS, &m);
        if (rc == IPCHUB_TIMEOUT)
            break;
        if (rc != IPCHUB_OK)
            return fail("receive", rc);
        last_ns = now_ns();
        received++;
        if (m.len != size || m.len < 8) {
            bad_size++;
            continue;
        }
        uint64_t seq = get_le64(m.data);
        if (seq < expected)
            out_of_order++;
        else
            expected = seq + 1;
    }
    printf("result received=%llu out_of_order=%llu bad_size=%llu last_ns=%llu\n",
           (unsigned long long)received, (unsigned long long)out_of_order,
           (unsigned long long)bad_size, (unsigned long long)last_ns);
    fflush(stdout);
    return 0;
}

static int publisher(ipchub_client *c, const char *channel, size_t size, uint64_t count)
{
    uint8_t *buf = malloc(size);
    if (!buf) {
        printf("error out of memory\n");
        return 1;
    }
    memset(buf, 0x5a, size);
    uint64_t first_ns = now_ns();
    for (uint64_t seq = 0; seq < count; seq++) {
        put_le64(buf, seq);
        int rc = ipchub_publish(c, channel, buf, size, 0, NULL);
        if (rc != IPCHUB_OK) {
            free(buf);
            return fail("publish", rc);
        }
    }
    int rc = ipchub_flush(c);
    uint64_t end_ns = now_ns();
    free(buf);
    if (rc != IPCHUB_OK)
        return fail("flush", rc);
    printf("result sent=%llu first_ns=%llu end_ns=%llu\n", (unsigned long long)count,
           (unsigned long long)first_ns, (unsigned long long)end_ns);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7 || (strcmp(argv[1], "sub") != 0 && strcmp(argv[1], "pub") != 0)) {
        fprintf(stderr, "usage: %s sub|pub SOCKET TRANSPORT CHANNEL SIZE COUNT\n", argv[0]);
        return 2;
    }
    int transport = ipchub_transport_from_name(argv[3]);
    size_t size = strtoull(argv[5], NULL, 10);
    uint64_t count = strtoull(argv[6], NULL, 10);
    if (transport < 0 || size < 8) {
        printf("error bad transport or size\n");
        return 2;
    }
    int is_sub = argv[1][0] == 's';
    ipchub_client *c = NULL;
    int rc = ipchub_connect(argv[2], transport, is_sub ? "bench-c-sub" : "bench-c-pub", &c);
    if (rc != IPCHUB_OK)
        return fail("connect", rc);
    int status = is_sub ? subscriber(c, argv[4], size, count) : publisher(c, argv[4], size, count);
    rc = ipchub_close(c);
    if (status == 0 && rc != IPCHUB_OK)
        return fail("close", rc);
    return status;
}
