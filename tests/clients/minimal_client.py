#!/usr/bin/env python3
"""A minimal ipchub client written only from docs/PROTOCOL.md.

Usage: minimal_client.py SOCKET CHANNEL MESSAGE
Subscribes to CHANNEL, publishes MESSAGE to it with an ACK request, and
prints 'delivered=N' then 'data=<channel>:<payload>' (what came back).

Usage: minimal_client.py SOCKET --checks PROTOCOL.md
Checks what the document says about the handshake, fatal errors, the
control socket and channel rings against the hub, including §7's session
byte for byte as the document prints it; prints 'ok <check>' for each.
"""
import mmap
import os
import re
import select
import socket
import struct
import sys
import time

HEADER = struct.Struct("<2sBBBBHIIQ")  # magic, version, type, flags, prio, chan_len, payload_len, origin, seq
HELLO, WELCOME, SUBSCRIBE, PUBLISH, DATA, ACK, ERROR = 1, 2, 3, 5, 6, 7, 8
PING, PONG, OPEN_RING, RING = 13, 14, 15, 16


def frame(ftype, channel=b"", payload=b"", seq=0, flags=0):
    return HEADER.pack(b"IH", 1, ftype, flags, 0, len(channel), len(payload), 0, seq) + channel + payload


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""
        self.fds = []  # descriptors that came with what was read (SCM_RIGHTS)

    def take_frame(self):
        """A whole frame from the buffer, or None."""
        if len(self.buf) >= HEADER.size:
            magic, ver, ftype, flags, prio, clen, plen, origin, seq = HEADER.unpack_from(self.buf)
            assert magic == b"IH" and ver == 1, "not an ipchub frame"
            total = HEADER.size + clen + plen
            if len(self.buf) >= total:
                chan = self.buf[HEADER.size:HEADER.size + clen].decode()
                payload = self.buf[HEADER.size + clen:total]
                self.last = self.buf[:total]
                self.buf = self.buf[total:]
                return ftype, seq, origin, chan, payload
        return None

    def read_frame(self):
        while True:
            f = self.take_frame()
            if f:
                return f
            # recvmsg(2): WELCOME and RING may carry descriptors.
            chunk, fds, _, _ = socket.recv_fds(self.s, 65536, 16)
            self.fds += fds
            if not chunk:
                raise EOFError("hub closed the connection")
            self.buf += chunk

    def raw_frame(self):
        """The next frame's bytes exactly as the hub sent them."""
        self.read_frame()
        return self.last

    def hello(self, payload=b"version=1\ntransport=socket\nname=python\n"):
        self.s.sendall(frame(HELLO, payload=payload))
        ftype, seq, _, _, payload = self.read_frame()
        assert ftype == WELCOME, (ftype, payload)
        return kv(payload)

    def expect_closed(self):
        """The hub closes the connection: end of stream, nothing more."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            f = self.take_frame()
            assert f is None, f"a frame after a fatal error: {f}"
            chunk = self.s.recv(65536)
            if not chunk:
                return
            self.buf += chunk
        raise AssertionError("the hub did not close the connection")


def kv(payload):
    return dict(line.split("=", 1) for line in payload.decode().splitlines() if "=" in line)


def error_of(payload):
    return struct.unpack("<H", payload[:2])[0], payload[2:].decode()


def main():
    path, channel, message = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
    c = Conn(path)
    c.s.sendall(frame(HELLO, payload=b"version=1\ntransport=socket\nname=python\n"))
    ftype, _, _, _, payload = c.read_frame()
    assert ftype == WELCOME, payload
    fields = dict(line.split("=", 1) for line in payload.decode().splitlines() if "=" in line)
    my_id = int(fields["client"])
    c.s.sendall(frame(SUBSCRIBE, channel, seq=1))
    ftype, seq, _, _, _ = c.read_frame()
    assert (ftype, seq) == (ACK, 1)
    c.s.sendall(frame(PUBLISH, channel, message, seq=2, flags=1))
    got = {}
    while len(got) < 2:
        ftype, seq, origin, chan, payload = c.read_frame()
        if ftype == ACK and seq == 2:
            got["ack"] = struct.unpack("<I", payload[:4])[0]
        elif ftype == DATA:
            assert origin == my_id and seq == 2
            got["data"] = chan + ":" + payload.decode()
        elif ftype == ERROR:
            code = struct.unpack("<H", payload[:2])[0]
            raise SystemExit(f"error {code}: {payload[2:].decode()}")
    print(f"delivered={got['ack']}")
    print(f"data={got['data']}")


# ---- --checks: what the document says, against the hub ----------------------

def session_from_doc(doc):
    """§7's frames as the document prints them: [(direction, name, bytes)]."""
    text = open(doc, encoding="utf-8").read()
    sec = text[text.index("## 7."):]
    block = sec[sec.index("```") + 3:]
    block = block[block.index("\n") + 1:block.index("```")]
    frames = []
    for line in block.splitlines():
        m = re.match(r"(client → hub|hub → client)\s+([A-Z_]+)\s+(.*)$", line)
        if m:
            direction, name, rest = m.groups()
            if "…" in rest:
                continue  # WELCOME: its fields vary
            hexpart = re.split(r"[\"']", rest, maxsplit=1)[0]
            data = bytes.fromhex("".join(hexpart.split()))
            strings = [a or b for a, b in re.findall(r'"([^"]*)"|\'([^\']*)\'', rest)]
            data_hdr, tail = data[:HEADER.size], data[HEADER.size:]
            body = b"".join(x.encode().decode("unicode_escape").encode() for x in strings)
            frames.append([direction, name, data_hdr + body + tail])
        elif frames and line.strip().startswith('"'):
            # A payload continued on the next line (HELLO's).
            strings = re.findall(r'"([^"]*)"', line)
            frames[-1][2] += b"".join(x.encode().decode("unicode_escape").encode() for x in strings)
    return frames


def check_session_bytes(path, doc):
    """§7 byte for byte: the document's own bytes go to the hub, and what
    comes back is compared with the document's (origin aside)."""
    frames = session_from_doc(doc)
    names = [f[1] for f in frames]
    assert names == ["HELLO", "SUBSCRIBE", "ACK", "PUBLISH", "DATA", "ACK"], names
    for _, name, data in frames:
        hdr = HEADER.unpack_from(data)
        assert HEADER.size + hdr[5] + hdr[6] == len(data), f"§7 {name}: lengths in the header do not match its bytes"
    hello = frames[0][2]
    assert hello[HEADER.size:] == b"version=1\ntransport=socket\n", hello
    assert hello == frame(HELLO, payload=hello[HEADER.size:]), "§7 HELLO is not what §2 describes"
    c = Conn(path)
    c.s.sendall(hello)
    ftype, seq, _, _, payload = c.read_frame()
    assert (ftype, seq) == (WELCOME, 0), (ftype, payload)
    me = int(kv(payload)["client"])
    for i in range(1, len(frames)):
        direction, name, data = frames[i]
        if direction == "client → hub":
            c.s.sendall(data)
            continue
        got = c.raw_frame()
        want = data
        if name == "DATA":
            # The document's publisher is client 7; here it is us.
            want = data[:12] + struct.pack("<I", me) + data[16:]
        assert got == want, f"§7 {name}: hub sent {got.hex()}, document says {want.hex()}"
    print("ok session_bytes")


def check_hello_defaults(path):
    c = Conn(path)
    w = c.hello(b"")  # every key optional
    assert w["version"] == "1" and w["transport"] == "socket", w
    c.s.sendall(frame(PING, seq=1))
    assert c.read_frame()[:2] == (PONG, 1)
    c = Conn(path)
    w = c.hello(b"  transport = socket \nnot a key value line\nunknown_key=1\n")
    assert w["transport"] == "socket", w
    print("ok hello_defaults")


def check_fatal_errors(path):
    # channel_len above 255: a framing error, BAD_CHANNEL with seq 0, then close.
    c = Conn(path)
    c.hello()
    c.s.sendall(HEADER.pack(b"IH", 1, PUBLISH, 0, 0, 256, 0, 0, 9))
    ftype, seq, _, _, payload = c.read_frame()
    assert (ftype, seq) == (ERROR, 0) and error_of(payload)[0] == 5, (ftype, seq, payload)
    c.expect_closed()
    # A hub-only type: UNKNOWN_TYPE with that frame's seq, then close.
    c = Conn(path)
    c.hello()
    c.s.sendall(frame(DATA, b"a/b", b"x", seq=5))
    ftype, seq, _, _, payload = c.read_frame()
    assert (ftype, seq) == (ERROR, 5) and error_of(payload)[0] == 3, (ftype, seq, payload)
    c.expect_closed()
    # A bad OPEN_RING roles byte: MALFORMED, not fatal.
    c = Conn(path)
    c.hello()
    c.s.sendall(frame(OPEN_RING, b"a/b", b"\x09", seq=3))
    ftype, seq, _, _, payload = c.read_frame()
    assert (ftype, seq) == (ERROR, 3) and error_of(payload)[0] == 1, (ftype, seq, payload)
    c.s.sendall(frame(PING, seq=4))
    assert c.read_frame()[:2] == (PONG, 4), "the connection survives a bad OPEN_RING"
    print("ok fatal_errors")


def read_fd_frame(fd, buf, timeout=10):
    """One frame from a byte-stream descriptor (a pipe)."""
    deadline = time.monotonic() + timeout
    while True:
        if len(buf) >= HEADER.size:
            h = HEADER.unpack_from(bytes(buf))
            total = HEADER.size + h[5] + h[6]
            if len(buf) >= total:
                f = bytes(buf[:total])
                del buf[:total]
                return h[2], h[8], f
        left = deadline - time.monotonic()
        assert left > 0, "nothing arrived on the data path"
        select.select([fd], [], [], left)
        chunk = os.read(fd, 65536)
        assert chunk, "data path closed"
        buf += chunk


def check_control_socket_requests(path):
    """A pipe client's requests on its control socket are answered on its data path."""
    c = Conn(path)
    w = c.hello(b"version=1\ntransport=pipe\n")
    assert w["fds"] == "down,up" and len(c.fds) == 2, (w, c.fds)
    down, up = c.fds
    os.set_blocking(down, False)
    buf = bytearray()
    c.s.sendall(frame(PING, seq=7))
    assert read_fd_frame(down, buf)[:2] == (PONG, 7)
    c.s.sendall(frame(SUBSCRIBE, b"doc/control", seq=8))
    assert read_fd_frame(down, buf)[:2] == (ACK, 8)
    os.write(up, frame(PUBLISH, b"doc/control", b"via up", seq=9, flags=1))
    got = {}
    while len(got) < 2:
        ftype, seq, f = read_fd_frame(down, buf)
        got[ftype] = (seq, f)
    assert got[ACK][0] == 9 and struct.unpack("<I", got[ACK][1][24:28])[0] == 1, got
    assert got[DATA][1].endswith(b"doc/controlvia up"), got
    print("ok control_socket_requests")


U64_MAX = 2**64 - 1


class ChannelRing:
    """A channel ring mapped as §6.2 lays it out (reads only)."""

    def __init__(self, fd):
        size = os.fstat(fd).st_size
        self.m = mmap.mmap(fd, size)
        assert self.m[0:8] == b"IPCHBRNG" and self.u64(8) == 1, "not a channel ring"
        self.cap = self.u64(16)
        assert size == 12288 + self.cap, (size, self.cap)

    def u64(self, off):
        return struct.unpack_from("<Q", self.m, off)[0]

    def slot(self, s, field):
        return self.u64(4096 + 128 * s + {"token": 0, "read_pos": 8, "start_seq": 32}[field])

    def write_pos(self):
        return self.u64(128)

    def set_read_pos(self, s, pos):
        # Our own cursor: only we store it (an aligned 8-byte store).
        struct.pack_into("<Q", self.m, 4096 + 128 * s + 8, pos)


def wait_until(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def eventfd_id(fd):
    try:
        for line in open(f"/proc/self/fdinfo/{fd}"):
            if line.startswith("eventfd-id:"):
                return line.split()[1]
    except OSError:
        pass
    return None


def check_ring_wrap(c, p, path):
    """Read a channel ring past the end of its data area: the BPAD there
    counts the rest of the data area, its own header included."""
    c.fds = []
    c.s.sendall(frame(OPEN_RING, b"doc/wrap", b"\x01", seq=10))
    ftype, seq, _, _, payload = c.read_frame()
    assert (ftype, seq) == (RING, 10) and len(c.fds) == 2, (ftype, payload)
    slot = struct.unpack("<IB", payload)[0]
    r = ChannelRing(c.fds[0])
    pos, want_seq = r.slot(slot, "read_pos"), r.slot(slot, "start_seq")
    body = b"w" * 65536
    pads = 0
    for i in range(200):
        # One message at a time, read and consumed before the next: the ring
        # never fills, so no writer waits on us.
        p.s.sendall(frame(PUBLISH, b"doc/wrap", body, seq=100 + i, flags=1))
        ftype, seq, _, _, ack = p.read_frame()
        assert (ftype, seq) == (ACK, 100 + i), (ftype, ack)
        wait_until(lambda: r.write_pos() > pos, "message not written into the ring")
        while pos < r.write_pos():
            idx = pos % r.cap
            head = r.u64(12288 + idx)
            marker, length = head >> 32, head & 0xFFFFFFFF
            if marker == 0x44415042:  # "BPAD"
                assert idx != 0 and length == r.cap - idx, (idx, length, r.cap)
                pads += 1
                pos += length
                continue
            assert marker == 0x43455242, hex(marker)  # "BREC"
            assert r.u64(12288 + idx + 8) == want_seq
            rec = r.m[12288 + idx + 16:12288 + idx + 16 + length]
            assert rec[24:] == b"doc/wrap" + body, "a record is one whole DATA frame"
            want_seq += 1
            pos += 16 + (length + 7) // 8 * 8
        r.set_read_pos(slot, pos)
        if pads and pos % r.cap > 0:
            break
    assert pads == 1, "the ring never wrapped"


def check_client_ring_wrap(path):
    """An shm client's own down ring (§6.1), read across its wrap: the PADD
    there counts the padding after its header."""
    c = Conn(path)
    w = c.hello(b"version=1\ntransport=shm\n")
    assert w["fds"] == "up,down,hub_event,client_event" and len(c.fds) == 4, (w, c.fds)
    down_fd = c.fds[1]
    size = os.fstat(down_fd).st_size
    m = mmap.mmap(down_fd, size)
    u64 = lambda off: struct.unpack_from("<Q", m, off)[0]
    assert m[0:8] == b"IPCHRING" and u64(8) == 1
    cap = u64(16)
    assert size == 4096 + cap == 4096 + int(w["ring_size"]), (size, cap, w)
    # A request on the control socket, answered in the down ring.
    c.s.sendall(frame(SUBSCRIBE, b"doc/p2p", seq=1))
    pos = u64(256)
    p = Conn(path)
    p.hello()
    body = b"p" * 65536
    expect_ack = True
    pads = 0
    for i in range(200):
        if not expect_ack:
            p.s.sendall(frame(PUBLISH, b"doc/p2p", body, seq=100 + i, flags=1))
            ftype, seq, _, _, ack = p.read_frame()
            assert (ftype, seq) == (ACK, 100 + i), (ftype, ack)
        wait_until(lambda: u64(128) > pos, "nothing written into the down ring")
        while pos < u64(128):
            idx = pos % cap
            head = u64(4096 + idx)
            marker, length = head >> 32, head & 0xFFFFFFFF
            if marker == 0x44444150:  # "PADD"
                assert idx != 0 and length == cap - idx - 8, (idx, length, cap)
                pads += 1
                pos += 8 + length
                continue
            assert marker == 0x44434552, hex(marker)  # "RECD"
            rec = m[4096 + idx + 8:4096 + idx + 8 + length]
            h = HEADER.unpack_from(rec)
            if expect_ack:
                assert (h[2], h[8]) == (ACK, 1), h
                expect_ack = False
            else:
                assert h[2] == DATA and rec[24:] == b"doc/p2p" + body, h
            pos += 8 + (length + 7) // 8 * 8
        struct.pack_into("<Q", m, 256, pos)  # read_pos: ours to store
        if pads and pos % cap > 0:
            break
    assert pads == 1, "the ring never wrapped"
    print("ok client_ring_wrap")


def check_channel_ring(path):
    c = Conn(path)
    w = c.hello(b"version=1\ntransport=shm\n")
    me = int(w["client"])
    assert w.get("channel_rings") == "1", w
    assert len(c.fds) == 4, c.fds
    c.fds = []
    # OPEN_RING on the control socket; RING comes back there with the memfd and the ring's eventfd.
    c.s.sendall(frame(OPEN_RING, b"doc/ring", b"\x01", seq=1))
    ftype, seq, _, chan, payload = c.read_frame()
    assert (ftype, seq, chan) == (RING, 1, "doc/ring"), (ftype, payload)
    slot, roles = struct.unpack("<IB", payload)
    assert roles == 1 and 1 <= slot < 64 and len(c.fds) == 2, (slot, roles, c.fds)
    memfd, hub_event = c.fds
    c.fds = []
    r = ChannelRing(memfd)
    # Our slot: our id, a cursor where our reading starts, start_seq = the seq there.
    assert r.slot(slot, "token") == me
    start, start_seq = r.slot(slot, "read_pos"), r.slot(slot, "start_seq")
    assert start == r.write_pos() and start_seq == r.u64(152), (start, r.write_pos(), start_seq)
    # Slot 0 is the hub's: no cursor while it serves no subscriber of its own.
    assert r.slot(0, "token") != 0 and r.slot(0, "read_pos") == U64_MAX
    # What another transport publishes, the hub writes into the ring.
    p = Conn(path)
    pub = int(p.hello()["client"])
    p.s.sendall(frame(PUBLISH, b"doc/ring", b"into the ring", seq=1, flags=1))
    ftype, seq, _, _, payload = p.read_frame()
    assert (ftype, seq) == (ACK, 1) and struct.unpack("<I", payload)[0] == 1, (ftype, payload)
    wait_until(lambda: r.write_pos() > start, "nothing written into the ring")
    at = 12288 + start % r.cap
    head, rseq = r.u64(at), r.u64(at + 8)
    marker, length = head >> 32, head & 0xFFFFFFFF
    assert marker == 0x43455242, hex(marker)  # "BREC"
    assert rseq == start_seq, (rseq, start_seq)
    rec = r.m[at + 16:at + 16 + length]
    h = HEADER.unpack_from(rec)
    assert h[2] == DATA and h[7] == pub and rec[24:] == b"doc/ringinto the ring", (h, rec)
    # A subscriber of the hub's own on the channel: slot 0 becomes a cursor.
    s = Conn(path)
    s.hello()
    s.s.sendall(frame(SUBSCRIBE, b"doc/ring", seq=1))
    assert s.read_frame()[:2] == (ACK, 1)
    wait_until(lambda: r.slot(0, "read_pos") != U64_MAX, "slot 0 never got a cursor")
    assert r.u64(512) == 1, "hub_subs"
    # A second ring comes with an eventfd of its own.
    c.s.sendall(frame(OPEN_RING, b"doc/ring2", b"\x01", seq=2))
    ftype, seq, _, _, payload = c.read_frame()
    assert (ftype, seq) == (RING, 2) and len(c.fds) == 2, (ftype, payload, c.fds)
    ids = (eventfd_id(hub_event), eventfd_id(c.fds[1]))
    if None not in ids:
        assert ids[0] != ids[1], "two rings share one hub eventfd"
    check_ring_wrap(c, p, path)
    # Leaving: RING with slot 0xFFFFFFFF and roles 0.
    c.s.sendall(frame(OPEN_RING, b"doc/ring", b"\x00", seq=3))
    ftype, seq, _, _, payload = c.read_frame()
    assert (ftype, seq) == (RING, 3) and struct.unpack("<IB", payload) == (0xFFFFFFFF, 0), payload
    print("ok channel_ring")


def checks(path, doc):
    check_session_bytes(path, doc)
    check_hello_defaults(path)
    check_fatal_errors(path)
    check_control_socket_requests(path)
    check_channel_ring(path)
    check_client_ring_wrap(path)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--checks":
        checks(sys.argv[1], sys.argv[3])
    else:
        main()
