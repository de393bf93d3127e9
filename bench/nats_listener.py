"""A plain NATS subscriber on every job event, the reference for SSE delivery latency.

    python -m bench.nats_listener NATS_URL

Prints "ready" once subscribed, then, on "stop" (stdin), one JSON object: ``received``, a map
event id -> [the time this process read the message, the kernel's receive time of the newest
bytes that read took], and ``unreadable``, the messages it could not take (a payload that is
not an event, a server error), each counted and passed over. It speaks the NATS text protocol
on one socket (as the light SSE clients speak HTTP: :mod:`bench.sse_clients`), so that each
read carries the kernel's receive time (``SO_TIMESTAMPNS``), as theirs do.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from bench.sse_clients import SO_TIMESTAMPNS, STAMP_SPACE, kernel_time

SUBJECT = "promptgen.job.>"


class Listener:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.buffer = bytearray()
        self.received: dict[str, list[float]] = {}
        self.unreadable: list[str] = []
        self.pongs = 0
        self.stopping = False

    @classmethod
    def connect(cls, url: str) -> Listener:
        parts = urlsplit(url)
        return cls(socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222)))

    def subscribe(self) -> None:
        self._read()  # the server's INFO
        connect = {"verbose": False, "pedantic": False, "headers": True, "lang": "python-raw", "version": "0"}
        self.sock.sendall(f"CONNECT {json.dumps(connect)}\r\nSUB {SUBJECT} 1\r\nPING\r\n".encode())
        while not self.pongs:  # the server has the subscription once it answers the PING after it
            if not self._read():
                raise ConnectionError(f"the server closed the connection: {self.unreadable or 'no reason given'}")

    def run(self) -> None:
        try:
            while self._read():
                pass
            if not self.stopping:
                self.unreadable.append("the server closed the connection before the run ended")
        except OSError as exc:
            if not self.stopping:  # (on "stop" the socket is shut down under the read)
                self.unreadable.append(f"the reads ended: {exc!r}"[:300])
        except Exception as exc:  # noqa: BLE001 - a stream it cannot frame: said, and the reads end
            self.unreadable.append(f"the reads ended: {exc!r}"[:300])

    def _read(self) -> bool:
        data, ancillary, _, _ = self.sock.recvmsg(65536, STAMP_SPACE)
        now = time.time()
        if not data:
            return False
        self.buffer += data
        self._parse(now, kernel_time(ancillary) or now)
        return True

    def _parse(self, read_at: float, arrived_at: float) -> None:
        """Every whole protocol message in the buffer; a partial one waits for the next read."""
        while (eol := self.buffer.find(b"\r\n")) >= 0:
            line = bytes(self.buffer[:eol])
            verb = line.split(b" ", 1)[0].upper()
            if verb in (b"MSG", b"HMSG"):
                total = int(line.rsplit(b" ", 1)[1])  # MSG: the payload; HMSG: headers and payload
                header_bytes = int(line.split(b" ")[-2]) if verb == b"HMSG" else 0
                end = eol + 2 + total
                if len(self.buffer) < end + 2:
                    return
                payload = bytes(self.buffer[eol + 2 + header_bytes : end])
                del self.buffer[: end + 2]
                try:
                    self.received[json.loads(payload)["event_id"]] = [read_at, arrived_at]
                except (ValueError, KeyError, TypeError) as exc:
                    self.unreadable.append(f"{line[:200]!r}: {exc!r}"[:300])
                continue
            del self.buffer[: eol + 2]
            if verb == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif verb == b"PONG":
                self.pongs += 1
            elif verb == b"-ERR":  # said, and the server may close the connection: the reads end then
                self.unreadable.append(line.decode(errors="replace")[:300])


def main(url: str) -> None:
    listener = Listener.connect(url)
    listener.subscribe()
    reader = threading.Thread(target=listener.run, daemon=True)
    reader.start()
    print("ready", flush=True)
    sys.stdin.readline()
    listener.stopping = True
    listener.sock.shutdown(socket.SHUT_RDWR)
    reader.join(10)
    print(json.dumps({"received": listener.received, "unreadable": listener.unreadable}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
