#!/usr/bin/env python3
"""Python programs over the `ipchub` module, run by tests/python_client.rs.

  py_client.py checks SOCKET TRANSPORT
      API checks; prints "ok <check>" per check, exits 1 at the first failure.
  py_client.py sub SOCKET TRANSPORT PATTERN COUNT
      prints "subscribed", then "[channel] payload (priority P)" per message.
  py_client.py pub SOCKET TRANSPORT CHANNEL PRIORITY MESSAGE...
      publishes with confirmation, prints "delivered to N" per message.
"""
import ast
import asyncio
import os
import selectors
import sys

import ipchub


def stub_matches_module():
    """The installed .pyi names exactly what the module has."""
    path = os.path.join(os.path.dirname(ipchub.__file__), "__init__.pyi")
    with open(path) as f:
        tree = ast.parse(f.read())

    def names(body):
        out = set()
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                out.add(node.target.id)
        return {n for n in out if not n.startswith("_")}

    public = lambda obj: {n for n in dir(obj) if not n.startswith("_")}
    mod_names = public(ipchub) - {"ipchub"}  # the extension module itself
    assert names(tree.body) == mod_names, (names(tree.body), mod_names)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in ("Client", "Message"):
            have = public(getattr(ipchub, node.name))
            assert names(node.body) == have, (node.name, names(node.body), have)


def checks(sock, transport):
    def ok(name):
        print("ok", name, flush=True)

    stub_matches_module()
    ok("type stub matches the module")

    try:
        ipchub.connect(transport, socket=sock + ".missing")
        raise AssertionError("connect to a missing socket succeeded")
    except ipchub.NotRunningError as e:
        assert e.code is None and "hub not running" in str(e), e
    try:
        ipchub.connect("carrier-pigeon", socket=sock)
        raise AssertionError("unknown transport accepted")
    except ValueError as e:
        assert "carrier-pigeon" in str(e)
    assert ipchub.TRANSPORTS == ["socket", "pipe", "fifo", "mqueue", "shm"]
    ok("connect errors")

    with ipchub.connect(transport, socket=sock, name="py-checks") as c:
        assert c.id > 0 and c.max_message > 0 and c.fileno() >= 0
        c.subscribe("py/#")
        assert c.publish("py/a", b"hello", priority=7, confirm=True) == 1
        m = c.receive(timeout=10)
        assert m is not None
        assert (m.channel, m.payload, m.priority, m.origin) == ("py/a", b"hello", 7, c.id), m
        assert c.receive(timeout=0) is None
        assert c.receive(0.05) is None
        ok("confirmed publish and receive")

        c.subscribe("py-ring")  # an exact channel: a channel ring on shm
        assert c.publish("py-ring", "text", confirm=True) == 1
        m = c.receive(10)
        assert (m.channel, m.payload) == ("py-ring", b"text"), m
        c.unsubscribe("py-ring")
        ok("exact channel")

        assert c.publish("py/b", b"\x00\x01\x02") is None
        assert c.publish("py/c", bytearray(b"two")) is None
        c.flush()
        got = []
        for m in c:
            got.append((m.channel, m.payload))
            if len(got) == 2:
                break
        assert got == [("py/b", b"\x00\x01\x02"), ("py/c", b"two")], got
        ok("iteration")

        sel = selectors.DefaultSelector()
        sel.register(c, selectors.EVENT_READ)
        assert c.receive(0) is None  # arms the descriptor
        c.publish("py/sel", b"x")
        c.flush()
        assert sel.select(timeout=10), "fileno never became readable"
        m = c.receive(0)
        while m is None:  # readiness may come a moment before the data
            assert sel.select(timeout=10)
            m = c.receive(0)
        assert m.payload == b"x"
        sel.close()
        ok("selectors")

        async def via_loop():
            loop = asyncio.get_running_loop()
            fut = loop.create_future()

            def readable():
                msg = c.receive(0)
                if msg is not None and not fut.done():
                    fut.set_result(msg)

            assert c.receive(0) is None
            loop.add_reader(c.fileno(), readable)
            c.publish("py/loop", b"y")
            c.flush()
            try:
                return await asyncio.wait_for(fut, 10)
            finally:
                loop.remove_reader(c.fileno())

        assert asyncio.run(via_loop()).payload == b"y"
        ok("asyncio add_reader")

        for bad in ["py//x", "py/#"]:
            try:
                c.publish(bad, b"x")
                raise AssertionError("bad channel accepted: " + bad)
            except ipchub.Error as e:
                assert e.code is None
        try:
            c.publish("py/a", b"x", priority=32)
            raise AssertionError("priority 32 accepted")
        except ipchub.Error as e:
            assert "32" in str(e)
        try:
            c.publish("py/a", 42)
            raise AssertionError("int payload accepted")
        except TypeError:
            pass
        try:
            c.unsubscribe("never/#")
            raise AssertionError("unsubscribe of nothing accepted")
        except ipchub.RefusedError as e:
            assert e.code == 12, e.code  # NOT_SUBSCRIBED
            assert "never/#" in str(e)
        ok("errors carry the hub's code")

        c.unsubscribe("py/#")
        c.publish("py/a", b"gone")
        assert c.receive(0.1) is None
        ok("unsubscribe")
    assert c.closed
    try:
        c.publish("py/a", b"x")
        raise AssertionError("publish after close")
    except ipchub.ClosedError:
        pass
    c.close()
    ok("close")


def sub(sock, transport, pattern, count):
    with ipchub.connect(transport, socket=sock, name="py-sub") as c:
        c.subscribe(pattern)
        print("subscribed", flush=True)
        for i, m in enumerate(c):
            print(f"[{m.channel}] {m.payload.decode()} (priority {m.priority})", flush=True)
            if i + 1 == count:
                break


def pub(sock, transport, channel, priority, messages):
    with ipchub.connect(transport, socket=sock, name="py-pub") as c:
        for text in messages:
            n = c.publish(channel, text, priority=priority, confirm=True)
            print(f"delivered to {n}", flush=True)


def main():
    mode, sock, transport = sys.argv[1:4]
    if mode == "checks":
        checks(sock, transport)
    elif mode == "sub":
        sub(sock, transport, sys.argv[4], int(sys.argv[5]))
    elif mode == "pub":
        pub(sock, transport, sys.argv[4], int(sys.argv[5]), sys.argv[6:])
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
