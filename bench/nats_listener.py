"""A plain NATS subscriber on every job event: prints "ready", then on "stop" (stdin)
a JSON map event_id -> receipt time. The reference for SSE delivery latency."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import nats


async def main(url: str) -> None:
    nc = await nats.connect(url)
    received: dict[str, float] = {}

    async def on_msg(msg) -> None:
        received[json.loads(msg.data)["event_id"]] = time.time()

    await nc.subscribe("promptgen.job.>", cb=on_msg)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await nc.close()
    print(json.dumps(received), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
