"""A third-party WebSocket client for kgate's deflate and delta tests: the `websockets`
package (PyPI), with and without permessage-deflate and deltas (applied as
docs/protocol.md describes them), plus a raw-socket reader that reports which frames
arrived compressed. Prints one JSON object on stdout.

  read URL CHANNEL COUNT [--deflate] [--delta]
                                         subscribe from offset 0, print the events
                                         (and how many came as deltas, in how many bytes)
  raw HOST PORT CHANNEL COUNT            the same over a bare socket: RSV1 per frame
  send URL SIZE KIND                     send a compressed message (KIND: bomb, text),
                                         print the close code that ends the connection
"""

import asyncio
import base64
import json
import os
import random
import socket
import struct
import sys
import zlib

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def subscribe(channel, delta=False):
    # From offset 0 rather than "earliest": a replay the memory ring serves carries the
    # deltas ingest made (one read from Kafka decodes afresh, without them).
    command = {"type": "subscribe", "id": "s", "channel": channel, "from": {"offsets": {"0": 0}}}
    if delta:
        command["delta"] = True
    return json.dumps(command)


class Deltas:
    """The last event frame of each key of one topic, and the delta frames applied to them."""

    def __init__(self, topic):
        self.topic, self.topic_id = topic, None
        self.by_key, self.frames = {}, {}

    def frame(self, text):
        if text.startswith("["):
            delta = json.loads(text)
            topic_id, partition, offset = delta[:3]
            if topic_id != self.topic_id or (partition, offset) not in self.frames:
                raise ValueError(f"no frame held for the base of {text}")
            base, out, at, i = self.frames[(partition, offset)], [], 0, 3
            while i < len(delta):
                copy = delta[i]
                i += 1
                remove = None
                if not isinstance(delta[i], str):
                    remove = delta[i]
                    i += 1
                insert = delta[i]
                i += 1
                out.append(base[at : at + copy] + insert)
                at += copy + (len(insert) if remove is None else remove)
            text = "".join(out) + base[at:]
        frame = json.loads(text)
        if frame["type"] == "subscribed" and frame.get("delta"):
            # The gateway counts the frames it sends from here on: hold them from here too.
            self.topic_id = frame["topic_id"]
        elif frame["type"] == "event" and frame["topic"] == self.topic:
            key = ("k", frame["key"]) if "key" in frame else ("b", frame.get("key_b64"))
            if key[1] is not None:
                self.frames.pop(self.by_key.get(key), None)
                self.by_key[key] = (frame["partition"], frame["offset"])
                self.frames[self.by_key[key]] = text
        return frame


async def read(url, channel, count, deflate, delta):
    deltas = Deltas(channel.split(":")[0])
    async with connect(url, compression="deflate" if deflate else None, max_size=None) as ws:
        await ws.send(subscribe(channel, delta))
        events, delta_frames, event_bytes = [], 0, 0
        while len(events) < count:
            text = await asyncio.wait_for(ws.recv(), 30)
            frame = deltas.frame(text)
            if frame["type"] == "event":
                events.append(frame)
                event_bytes += len(text)
                delta_frames += text.startswith("[")
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        return {"extensions": extensions, "events": events, "deltas": delta_frames, "bytes": event_bytes}


def raw(host, port, channel, count):
    """Reads frames off the socket itself, so the test sees RSV1 and the compressed bytes."""
    sock = socket.create_connection((host, int(port)), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    head, buf = buf.split(b"\r\n\r\n", 1)
    extensions = [
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-extensions:")
    ]
    payload = subscribe(channel).encode()
    mask = os.urandom(4)
    sock.sendall(
        bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )

    def take(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("the gateway closed the socket")
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    events, compressed, plain, sizes = [], 0, 0, []
    while len(events) < count:
        b0, b1 = take(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", take(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", take(8))
        data = take(length)
        if b0 & 0x0F != 0x1:
            continue
        if b0 & 0x40:
            compressed += 1
            text = zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")
        else:
            plain += 1
            text = data
        frame = json.loads(text)
        if frame["type"] == "event":
            events.append(frame)
            sizes.append({"wire": length, "frame": len(text)})
    sock.close()
    return {"extensions": extensions, "compressed": compressed, "plain": plain, "events": events, "sizes": sizes}


async def send(url, size, kind):
    """Sends one message that the client compresses; reports how the gateway answers."""
    if kind == "bomb":
        # Spaces compress about 1000:1: a small frame that inflates far past the limit.
        message = " " * size
    else:
        # JSON-ish text that compresses only a little, so its frame stays within
        # the frame limit while inflating past the message limit.
        rng = random.Random(7)
        message = json.dumps({"type": "ping", "pad": "".join(rng.choice("abcdefghij") for _ in range(size))})
    async with connect(url, compression="deflate", max_size=None) as ws:
        try:
            await ws.send(message)
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed as closed:
            return {"close_code": closed.rcvd.code if closed.rcvd else None, "sent": len(message)}


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "read":
        result = asyncio.run(read(args[0], args[1], int(args[2]), "--deflate" in args, "--delta" in args))
    elif command == "raw":
        result = raw(args[0], args[1], args[2], int(args[3]))
    elif command == "send":
        result = asyncio.run(send(args[0], int(args[1]), args[2]))
    else:
        sys.exit(f"unknown command {command!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
