/* client.c: the e2e test's C client, built inside the container against
 * the installed libipchub-dev (tests/e2e/systemd.sh, step c-client):
 *
 *   gcc -Wall -Werror -o client client.c $(pkg-config --cflags --libs ipchub)
 *   ./client TRANSPORT CHANNEL
 *
 * Subscribes to CHANNEL, publishes on it with confirmation until the hub
 * counts one subscriber (the subscription is registered asynchronously),
 * then receives the message back through the hub and checks it.
 * Exit status 0 on success; every failure says what it was.
 */
#include <ipchub.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: client TRANSPORT CHANNEL\n");
        return 2;
    }
    int transport = ipchub_transport_from_name(argv[1]);
    if (transport < 0) {
        fprintf(stderr, "client: %s\n", ipchub_last_error());
        return 2;
    }
    const char *channel = argv[2];
    const char payload[] = "hello from C";

    printf("libipchub %s\n", ipchub_version());
    ipchub_client *hub;
    if (ipchub_connect(NULL, transport, "e2e-c", &hub) != IPCHUB_OK) {
        fprintf(stderr, "client: connect: %s\n", ipchub_last_error());
        return 1;
    }
    printf("connected over %s as client %u\n", argv[1], (unsigned)ipchub_client_id(hub));
    if (ipchub_subscribe(hub, channel) != IPCHUB_OK) {
        fprintf(stderr, "client: subscribe: %s\n", ipchub_last_error());
        return 1;
    }
    uint32_t delivered = 0;
    for (int i = 0; i < 50 && delivered == 0; i++) {
        if (ipchub_publish(hub, channel, payload, strlen(payload), 3, &delivered) != IPCHUB_OK) {
            fprintf(stderr, "client: publish: %s\n", ipchub_last_error());
            return 1;
        }
        printf("publish attempt %d: delivered to %u\n", i, (unsigned)delivered);
        if (delivered == 0)
            usleep(100000);
    }
    if (delivered != 1) {
        fprintf(stderr, "client: the hub never counted the subscription\n");
        return 1;
    }
    ipchub_message msg;
    int rc = ipchub_receive(hub, 5000, &msg);
    if (rc != IPCHUB_OK) {
        fprintf(stderr, "client: receive: %s\n",
                rc == IPCHUB_TIMEOUT ? "nothing within 5 s" : ipchub_last_error());
        return 1;
    }
    printf("received [%s] %.*s (priority %u)\n", msg.channel, (int)msg.len,
           (const char *)msg.data, (unsigned)msg.priority);
    if (strcmp(msg.channel, channel) != 0 || msg.len != strlen(payload) ||
        memcmp(msg.data, payload, msg.len) != 0 || msg.priority != 3) {
        fprintf(stderr, "client: not the message published\n");
        return 1;
    }
    if (ipchub_close(hub) != IPCHUB_OK) {
        fprintf(stderr, "client: close: %s\n", ipchub_last_error());
        return 1;
    }
    printf("ok\n");
    return 0;
}
