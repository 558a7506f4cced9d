#!/usr/bin/env python3
"""A hostile local user's connections, for tests/connections.rs.

Usage: hostile_conn.py SOCKET MODE N [ARG]
Run as another uid (setpriv). Opens N connections doing MODE, prints one
line 'ready <json>' describing what it saw, then holds every connection
(and queue) until its stdin closes.

Modes:
  idle           connect and send nothing (never HELLO)
  partial-hello  send a HELLO header announcing ARG payload bytes, then as
                 much of that payload as the hub takes (never completes it)
  partial-frame  HELLO, then a PUBLISH announcing ARG payload bytes, all
                 but the last of which are sent
  flood-stats    HELLO, then STATS_REQUEST frames as fast as the hub takes
                 them for ARG seconds, never reading an answer
  mq-hoard       HELLO transport=mqueue, keep the hub's message queues open
                 (by name, as PROTOCOL.md once said, or the ones we pass),
                 close the control connection, and go again
  squat          create /ipchub.<ARG>.<id>.up and .down for client ids 1..N
                 (ARG = the hub's pid) and keep them
"""
import ctypes
import ctypes.util
import errno
import json
import os
import select
import socket
import struct
import sys
import time

HEADER = struct.Struct("<2sBBBBHIIQ")
HELLO, WELCOME, PUBLISH, ERROR, STATS_REQUEST = 1, 2, 5, 8, 11


def frame(ftype, payload=b"", seq=0, plen=None):
    n = len(payload) if plen is None else plen
    return HEADER.pack(b"IH", 1, ftype, 0, 0, 0, n, 0, seq) + payload


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def frames_in(buf):
    """Complete frames at the front of buf: [(type, payload)], rest."""
    out = []
    while len(buf) >= HEADER.size:
        _, _, ftype, _, _, clen, plen, _, _ = HEADER.unpack_from(buf)
        total = HEADER.size + clen + plen
        if len(buf) < total:
            break
        out.append((ftype, buf[HEADER.size + clen:total]))
        buf = buf[total:]
    return out, buf


def read_answer(s, timeout):
    """The first frame the hub sends within timeout: (type, text) or None."""
    s.settimeout(timeout)
    buf = b""
    try:
        while True:
            got, _ = frames_in(buf)
            if got:
                ftype, payload = got[0]
                text = payload[2:].decode(errors="replace") if ftype == ERROR else payload.decode(errors="replace")
                return ftype, text
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except (socket.timeout, OSError):
        return None
    finally:
        s.settimeout(None)


LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
try:
    LIBC.mq_open
    MQ = LIBC
except AttributeError:
    MQ = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)


class MqAttr(ctypes.Structure):
    _fields_ = [("mq_flags", ctypes.c_long), ("mq_maxmsg", ctypes.c_long),
                ("mq_msgsize", ctypes.c_long), ("mq_curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]


MQ.mq_open.restype = ctypes.c_int
MQ.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(MqAttr)]


def mq_open(name, create):
    flags = os.O_RDWR | os.O_NONBLOCK
    attr = None
    if create:
        flags |= os.O_CREAT | os.O_EXCL
        attr = ctypes.pointer(MqAttr(0, 10, 8192, 0))
    fd = MQ.mq_open(name.encode(), flags, 0o600, attr)
    if fd < 0:
        return -ctypes.get_errno()
    return fd


def hello(s, transport, fds=()):
    msg = frame(HELLO, f"version=1\ntransport={transport}\nname=hostile\n".encode())
    if fds:
        s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    else:
        s.sendall(msg)


def main():
    path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    held, report = [], {}
    if mode == "idle":
        for _ in range(n):
            try:
                held.append(connect(path))
            except OSError:
                report["connect_failed"] = report.get("connect_failed", 0) + 1
        time.sleep(0.5)
        # A refused connection got an ERROR and was closed at once.
        open_ = 0
        for s in held:
            r, _, _ = select.select([s], [], [], 0)
            open_ += 0 if r else 1
        report["open"] = open_
    elif mode == "partial-hello":
        size = int(arg)
        for _ in range(n):
            s = connect(path)
            s.setblocking(False)
            data = frame(HELLO, plen=size) + b"x" * (size - 1)
            sent = 0
            try:
                while sent < len(data):
                    sent += s.send(data[sent:sent + 65536])
            except OSError:
                pass
            held.append(s)
        # Answers within 5 s in all (a HELLO within the limit gets none).
        errors, waiting, end = [], list(held), time.time() + 5
        while waiting and time.time() < end:
            ready, _, _ = select.select(waiting, [], [], max(0, end - time.time()))
            for s in ready:
                waiting.remove(s)
                s.setblocking(True)
                a = read_answer(s, 5)
                if a and a[0] == ERROR:
                    errors.append(a[1])
        report["errors"] = len(errors)
        report["first_error"] = errors[0] if errors else ""
    elif mode == "partial-frame":
        size = int(arg)
        for _ in range(n):
            s = connect(path)
            hello(s, "socket")
            a = read_answer(s, 10)
            assert a and a[0] == WELCOME, a
            s.setblocking(False)
            held.append(s)
        # Push every frame but its last byte, as far as the hub takes them,
        # for up to 3 s.
        data = HEADER.pack(b"IH", 1, PUBLISH, 0, 0, 1, size, 0, 1) + b"c" + b"x" * (size - 1)
        sent = {s: 0 for s in held}
        end = time.time() + 3
        while time.time() < end and any(v < len(data) for v in sent.values()):
            busy = [s for s in held if sent[s] < len(data)]
            _, ready, _ = select.select([], busy, [], 0.1)
            for s in ready:
                try:
                    sent[s] += s.send(data[sent[s]:sent[s] + 65536])
                except OSError:
                    sent[s] = len(data)
        report["held"] = len(held)
        report["sent"] = sum(sent.values())
    elif mode == "flood-stats":
        for _ in range(n):
            s = connect(path)
            hello(s, "socket")
            a = read_answer(s, 10)
            assert a and a[0] == WELCOME, a
            s.setblocking(False)
            held.append(s)
        req = frame(STATS_REQUEST, seq=7) * 64
        end = time.time() + float(arg)
        sent = 0
        while time.time() < end:
            progress = False
            for s in held:
                try:
                    sent += s.send(req)
                    progress = True
                except OSError:
                    pass
            if not progress:
                time.sleep(0.01)
        report["sent"] = sent
    elif mode == "mq-hoard":
        kept, refused = 0, ""
        for i in range(n):
            s = connect(path)
            mine = []
            for d in ("up", "down"):
                name = f"/hostile.{os.getpid()}.{i}.{d}"
                fd = mq_open(name, True)
                if fd >= 0:
                    MQ.mq_unlink(name.encode())
                    mine.append(fd)
            if len(mine) == 2:
                hello(s, "mqueue", mine)
            else:
                hello(s, "mqueue")
            a = read_answer(s, 10)
            if not a or a[0] != WELCOME:
                refused = a[1] if a else "closed"
                s.close()
                continue
            fields = dict(l.split("=", 1) for l in a[1].splitlines() if "=" in l)
            for k in ("mq_up", "mq_down"):
                if k in fields:  # the hub made the queues: keep them open
                    fd = mq_open(fields[k], False)
                    if fd >= 0:
                        held.append(fd)
            held.extend(mine)
            kept += 1
            s.close()  # disconnect, keeping the queues
        report["kept"] = kept
        report["refused"] = refused
    elif mode == "squat":
        pid = int(arg)
        made = 0
        for i in range(1, n + 1):
            for d in ("up", "down"):
                fd = mq_open(f"/ipchub.{pid}.{i}.{d}", True)
                if fd >= 0:
                    held.append(fd)
                    made += 1
        report["made"] = made
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("ready " + json.dumps(report), flush=True)
    sys.stdin.read()
    if mode == "squat":
        pid = int(arg)
        for i in range(1, n + 1):
            for d in ("up", "down"):
                MQ.mq_unlink(f"/ipchub.{pid}.{i}.{d}".encode())


if __name__ == "__main__":
    main()
