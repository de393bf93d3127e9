"""Many SSE clients in one process, as light as a client can be: one socket each, raw HTTP/1.1.

    python -m bench.sse_clients --base-url URL --job ID [--job ID ...] --clients-per-job N

Each client reads its stream to the end and only notes when each read arrived: when the
process read it, and the kernel's receive time of the newest bytes it took (``SO_TIMESTAMPNS``;
exact for the newest message of a read, an upper bound for those that came before it in the
same read; a client process waiting for a core delays the first time, not the second). The messages are parsed after the
stream ends, so that parsing does not slow the reads (and with them the latency measured).
Prints ``connected <n>`` once every client has its response headers, then, when all
streams have ended, one JSON object: per job, each client's message ids and the two times
of each message.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import resource
import socket
import struct
import time
from urllib.parse import urlsplit


def raise_open_files_limit() -> int:
    """As many open files as the hard limit allows: each client is a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def dechunk(raw: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """The body of a chunked HTTP response, and (body offset, raw offset) where each chunk starts."""
    body, segments, pos = bytearray(), [], 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(raw[pos:eol].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        segments.append((len(body), eol + 2))
        body += raw[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    return bytes(body), segments


def messages(raw: bytes, reads: list[tuple[int, float, float]]) -> list[tuple[str, float, float]]:
    """(id, read time, kernel receive time) of each SSE message in ``raw`` (the bytes after the
    headers), given ``reads``: (raw bytes received so far, read time, kernel time) after each read."""
    body, segments = dechunk(raw)
    ends = [n for n, _, _ in reads]
    out: list[tuple[str, float, float]] = []
    start = 0
    while (end := body.find(b"\n\n", start)) >= 0:
        block = body[start:end]
        start = end + 2
        ident = next((line[3:].strip().decode() for line in block.split(b"\n") if line.startswith(b"id:")), None)
        if ident is None:
            continue  # a comment (keep-alive) or the retry field
        k = bisect.bisect_right(segments, (end + 1, float("inf"))) - 1
        body_at, raw_at = segments[k]
        raw_end = raw_at + (end + 1 - body_at)
        _, at, kernel = reads[bisect.bisect_left(ends, raw_end + 1)]
        out.append((ident, at, kernel))
    return out


HEADERS_WITHIN = 60.0  # seconds a connected client waits for its response headers
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: each read says when its bytes reached the socket
STAMP_SPACE = socket.CMSG_SPACE(16)  # struct timespec


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The receive time the kernel gave a read (``SO_TIMESTAMPNS``), if it gave one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec + nsec / 1e9
    return None


async def client(host: str, port: int, path: str, connecting: asyncio.Semaphore, connected: asyncio.Event,
                 counter: list[int], total: int) -> dict:
    """One stream, read to its end. Each read is noted with the bytes received so far, the
    time the process read them and the kernel's receive time of the newest of them."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    raw, reads = bytearray(), []
    headed, ended = loop.create_future(), loop.create_future()

    def finish(future: asyncio.Future, exc: BaseException | None = None) -> None:
        if not future.done():
            future.set_result(None) if exc is None else future.set_exception(exc)

    def readable() -> None:
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(65536, STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                loop.remove_reader(sock)
                finish(headed, exc)
                finish(ended, exc)
                return
            now = time.time()
            if data:
                raw.extend(data)
                reads.append((len(raw), now, kernel_time(ancillary) or now))
                if not headed.done() and b"\r\n\r\n" in raw:
                    finish(headed)
            if not data or raw.endswith(b"0\r\n\r\n"):  # the peer closed, or the last chunk
                loop.remove_reader(sock)
                finish(headed, None if headed.done() else ConnectionError("no response headers"))
                finish(ended)
                return

    try:
        try:
            async with connecting:  # a connection storm the gateway's accept backlog can take
                await loop.sock_connect(sock, (host, port))
                await loop.sock_sendall(
                    sock, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
                loop.add_reader(sock, readable)
                await asyncio.wait_for(headed, HEADERS_WITHIN)
            end = raw.find(b"\r\n\r\n")
            head, body_from = bytes(raw[:end]), end + 4
            status = int(head.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError, TimeoutError):  # no stream: status 0, and the others go on
            status, body_from = 0, len(raw)
        counter[0] += 1
        if counter[0] == total:
            connected.set()
        if status == 200:
            await ended
        loop.remove_reader(sock)
    finally:
        sock.close()
    body = bytes(raw[body_from:])
    return {"status": status, "raw": body,
            "reads": [(n - body_from, at, kernel) for n, at, kernel in reads if n > body_from]}


async def run(args: argparse.Namespace) -> dict:
    url = urlsplit(args.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    total = len(args.job) * args.clients_per_job
    connected, counter = asyncio.Event(), [0]
    connecting = asyncio.Semaphore(args.connect_concurrency)
    tasks = {job_id: [asyncio.create_task(client(host, port, f"/scenario/v2/prompt-generation-status/{job_id}",
                                                 connecting, connected, counter, total))
                      for _ in range(args.clients_per_job)] for job_id in args.job}
    await connected.wait()
    print(f"connected {total} {time.time()}", flush=True)
    out: dict = {"jobs": {}, "cpu_seconds": 0.0}
    for job_id, ts in tasks.items():
        streams = await asyncio.gather(*ts)
        out["jobs"][job_id] = [{"status": s["status"], "messages": messages(s["raw"], s["reads"])} for s in streams]
    out["cpu_seconds"] = time.process_time()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--job", action="append", required=True)
    parser.add_argument("--clients-per-job", type=int, default=1)
    parser.add_argument("--connect-concurrency", type=int, default=200)
    args = parser.parse_args()
    raise_open_files_limit()
    # The instrument must not pause: a full collection of the clients' own objects (their reads
    # and buffers) would hold every read it came upon, and show as the server's latency.
    gc.disable()
    import uvloop

    report = uvloop.run(run(args))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
