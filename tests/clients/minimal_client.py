#!/usr/bin/env python3
"""A minimal ipchub client written only from docs/PROTOCOL.md.

Usage: minimal_client.py SOCKET CHANNEL MESSAGE
Subscribes to CHANNEL, publishes MESSAGE to it with an ACK request, and
prints 'delivered=N' then 'data=<channel>:<payload>' (what came back).
"""
import socket
import struct
import sys

HEADER = struct.Struct("<2sBBBBHIIQ")  # magic, version, type, flags, prio, chan_len, payload_len, origin, seq
HELLO, WELCOME, SUBSCRIBE, PUBLISH, DATA, ACK, ERROR = 1, 2, 3, 5, 6, 7, 8


def frame(ftype, channel=b"", payload=b"", seq=0, flags=0):
    return HEADER.pack(b"IH", 1, ftype, flags, 0, len(channel), len(payload), 0, seq) + channel + payload


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""

    def read_frame(self):
        while True:
            if len(self.buf) >= HEADER.size:
                magic, ver, ftype, flags, prio, clen, plen, origin, seq = HEADER.unpack_from(self.buf)
                assert magic == b"IH" and ver == 1, "not an ipchub frame"
                total = HEADER.size + clen + plen
                if len(self.buf) >= total:
                    chan = self.buf[HEADER.size:HEADER.size + clen].decode()
                    payload = self.buf[HEADER.size + clen:total]
                    self.buf = self.buf[total:]
                    return ftype, seq, origin, chan, payload
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("hub closed the connection")
            self.buf += chunk


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


if __name__ == "__main__":
    main()
