/* subscriber.c: receive messages from ipchub in a poll(2) event loop.
 *
 *   cc -o subscriber subscriber.c $(pkg-config --cflags --libs ipchub)
 *   ./subscriber [-s SOCKET] [-t TRANSPORT] [-n COUNT] [-w SECONDS] PATTERN...
 *
 * Prints "subscribed" once every pattern is, then one line per message:
 * "[channel] payload (priority P)". Exits after COUNT messages (-n), or
 * with status 3 after SECONDS without one (-w).
 */
#include <ipchub.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *socket = NULL;
    int transport = IPCHUB_TRANSPORT_SOCKET;
    long count = -1;
    int wait_ms = -1, opt;

    while ((opt = getopt(argc, argv, "s:t:n:w:")) != -1) {
        switch (opt) {
        case 's': socket = optarg; break;
        case 't':
            transport = ipchub_transport_from_name(optarg);
            if (transport < 0) {
                fprintf(stderr, "subscriber: %s\n", ipchub_last_error());
                return 2;
            }
            break;
        case 'n': count = atol(optarg); break;
        case 'w': wait_ms = atoi(optarg) * 1000; break;
        default:
            fprintf(stderr, "usage: subscriber [-s SOCKET] [-t TRANSPORT] [-n COUNT] [-w SECONDS] PATTERN...\n");
            return 2;
        }
    }
    if (optind == argc) {
        fprintf(stderr, "subscriber: no pattern\n");
        return 2;
    }

    ipchub_client *hub;
    if (ipchub_connect(socket, transport, "c-subscriber", &hub) != IPCHUB_OK) {
        fprintf(stderr, "subscriber: %s\n", ipchub_last_error());
        return 1;
    }
    for (int i = optind; i < argc; i++) {
        if (ipchub_subscribe(hub, argv[i]) != IPCHUB_OK) {
            fprintf(stderr, "subscriber: %s: %s\n", argv[i], ipchub_last_error());
            ipchub_close(hub);
            return 1;
        }
    }
    printf("subscribed\n");
    fflush(stdout);

    int status = 0;
    while (count != 0) {
        /* Take every message that is there; IPCHUB_TIMEOUT means none is
         * left and the descriptor is armed for the next one. */
        ipchub_message msg;
        int rc = ipchub_receive(hub, 0, &msg);
        if (rc == IPCHUB_OK) {
            /* msg borrows the library's memory until the next call. */
            printf("[%s] %.*s (priority %u)\n", msg.channel, (int)msg.len,
                   (const char *)msg.data, (unsigned)msg.priority);
            fflush(stdout);
            if (count > 0)
                count--;
            continue;
        }
        if (rc != IPCHUB_TIMEOUT) {
            fprintf(stderr, "subscriber: %s\n", ipchub_last_error());
            status = 1;
            break;
        }
        /* An event loop would add this descriptor to its own set. */
        struct pollfd pfd = { .fd = ipchub_fileno(hub), .events = POLLIN };
        int n = poll(&pfd, 1, wait_ms);
        if (n == 0) {
            fprintf(stderr, "subscriber: no message for %d s\n", wait_ms / 1000);
            status = 3;
            break;
        }
    }
    ipchub_close(hub);
    return status;
}
