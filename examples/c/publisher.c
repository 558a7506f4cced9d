/* publisher.c: publish messages on an ipchub channel from C.
 *
 *   cc -o publisher publisher.c $(pkg-config --cflags --libs ipchub)
 *   ./publisher [-s SOCKET] [-t TRANSPORT] [-p PRIORITY] [-c] CHANNEL MESSAGE...
 *
 * -c waits for each message's confirmation and prints how many subscribers
 * it was delivered to. Exit status 0 when every message was published.
 */
#include <ipchub.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: publisher [-s SOCKET] [-t TRANSPORT] [-p PRIORITY] [-c] CHANNEL MESSAGE...\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *socket = NULL; /* NULL: $IPCHUB_SOCKET, else the default hub */
    int transport = IPCHUB_TRANSPORT_SOCKET;
    int priority = 0, confirm = 0, opt;

    while ((opt = getopt(argc, argv, "s:t:p:c")) != -1) {
        switch (opt) {
        case 's': socket = optarg; break;
        case 't':
            transport = ipchub_transport_from_name(optarg);
            if (transport < 0) {
                fprintf(stderr, "publisher: %s\n", ipchub_last_error());
                return 2;
            }
            break;
        case 'p': priority = atoi(optarg); break;
        case 'c': confirm = 1; break;
        default: return usage();
        }
    }
    if (argc - optind < 2 || priority < 0 || priority > 255)
        return usage();
    const char *channel = argv[optind];

    ipchub_client *hub;
    int rc = ipchub_connect(socket, transport, "c-publisher", &hub);
    if (rc != IPCHUB_OK) {
        fprintf(stderr, "publisher: %s\n", ipchub_last_error());
        return 1;
    }
    for (int i = optind + 1; i < argc; i++) {
        uint32_t delivered = 0;
        rc = ipchub_publish(hub, channel, argv[i], strlen(argv[i]), (uint8_t)priority,
                            confirm ? &delivered : NULL);
        if (rc != IPCHUB_OK) {
            fprintf(stderr, "publisher: %s (%s)\n", ipchub_last_error(), ipchub_strerror(rc));
            ipchub_close(hub);
            return 1;
        }
        if (confirm)
            printf("delivered to %u\n", delivered);
    }
    /* Close writes what is still buffered before it disconnects. */
    if (ipchub_close(hub) != IPCHUB_OK) {
        fprintf(stderr, "publisher: %s\n", ipchub_last_error());
        return 1;
    }
    return 0;
}
