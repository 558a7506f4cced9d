"""The e2e test's Python client, run inside the container with the
installed python3-ipchub (tests/e2e/systemd.sh, step python-client):

    python3 client.py TRANSPORT CHANNEL

Subscribes to CHANNEL, publishes on it with confirmation until the hub
counts one subscriber (subscriptions are registered asynchronously), then
receives the message back through the hub and checks it.
"""

import sys
import time

import ipchub

transport, channel = sys.argv[1:3]
payload = b"hello from Python"
print("ipchub", ipchub.__version__, "from", ipchub.__file__)
with ipchub.connect(transport=transport, name="e2e-py") as hub:
    print("connected over", transport, "as client", hub.id)
    hub.subscribe(channel)
    delivered = 0
    for attempt in range(50):
        delivered = hub.publish(channel, payload, priority=5, confirm=True)
        print(f"publish attempt {attempt}: delivered to {delivered}")
        if delivered:
            break
        time.sleep(0.1)
    assert delivered == 1, "the hub never counted the subscription"
    msg = hub.receive(timeout=5)
    assert msg is not None, "nothing received within 5 s"
    print(f"received [{msg.channel}] {msg.payload!r} (priority {msg.priority})")
    assert (msg.channel, msg.payload, msg.priority) == (channel, payload, 5), "not the message published"
print("ok")
