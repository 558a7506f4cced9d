#!/usr/bin/env python3
"""One end of an `ipchub-bench --bindings` throughput session, written
against the `ipchub` module as any Python program would be.

    bench_client.py sub SOCKET TRANSPORT CHANNEL SIZE COUNT
    bench_client.py pub SOCKET TRANSPORT CHANNEL SIZE COUNT

Same behaviour and output lines as bindings/c/bench/ipchub_bench_client.c:
the publisher sends COUNT messages of SIZE bytes, sequence number
little-endian in the first 8 bytes; the subscriber counts them and checks
presence, order and size.

    sub:  "ready" once subscribed, then
          "result received=N out_of_order=N bad_size=N last_ns=T"
    pub:  "result sent=N first_ns=T end_ns=T"

Times are CLOCK_MONOTONIC nanoseconds (time.monotonic_ns on Linux). On
failure: "error TEXT", exit 1. IPCHUB_BENCH_PROFILE=FILE writes a cProfile
of the loop to FILE.
"""

import os
import struct
import sys
import time

import ipchub

IDLE_S = 10.0


def subscriber(c, channel, size, count):
    c.subscribe(channel)
    print("ready", flush=True)
    received = out_of_order = bad_size = expected = last_ns = 0
    receive = c.receive
    now = time.monotonic_ns
    unpack = struct.Struct("<Q").unpack_from
    while received < count:
        m = receive(IDLE_S)
        if m is None:
            break
        last_ns = now()
        received += 1
        p = m.payload
        if len(p) != size:
            bad_size += 1
            continue
        (seq,) = unpack(p)
        if seq < expected:
            out_of_order += 1
        else:
            expected = seq + 1
    print(
        f"result received={received} out_of_order={out_of_order} "
        f"bad_size={bad_size} last_ns={last_ns}",
        flush=True,
    )


def publisher(c, channel, size, count):
    # bytes, built per message as a program would: the module copies bytes
    # straight in, while a bytearray is converted element by element.
    tail = b"\x5a" * (size - 8)
    pack = struct.Struct("<Q").pack
    publish = c.publish
    first_ns = time.monotonic_ns()
    for seq in range(count):
        publish(channel, pack(seq) + tail)
    c.flush()
    end_ns = time.monotonic_ns()
    print(f"result sent={count} first_ns={first_ns} end_ns={end_ns}", flush=True)


def main():
    if len(sys.argv) != 7 or sys.argv[1] not in ("sub", "pub"):
        print(
            "usage: bench_client.py sub|pub SOCKET TRANSPORT CHANNEL SIZE COUNT",
            file=sys.stderr,
        )
        return 2
    role, socket, transport, channel = sys.argv[1:5]
    size, count = int(sys.argv[5]), int(sys.argv[6])
    try:
        with ipchub.connect(
            transport=transport, socket=socket, name=f"bench-py-{role}"
        ) as c:
            body = subscriber if role == "sub" else publisher
            profile = os.environ.get("IPCHUB_BENCH_PROFILE")
            if profile:
                import cProfile

                cProfile.runctx(
                    "body(c, channel, size, count)", globals(), locals(), profile
                )
            else:
                body(c, channel, size, count)
    except ipchub.Error as e:
        print(f"error {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
