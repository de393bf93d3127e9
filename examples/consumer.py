"""Follow promptgen's event log from another service: print every generated prompt.

Needs two packages: nats-py and promptgen-contracts (`pip wheel --no-deps contracts/`).

    python examples/consumer.py                    # every prompt in the log, then new ones live
    python examples/consumer.py --from-seq 1234    # resume: start at stream sequence 1234
    python examples/consumer.py --job JOB_ID       # one job's prompts only

Each prompt is one JSON line on stdout, with `seq`, its position in the stream. The reader
keeps its own position: store the last `seq` you handled together with what you did with
it, and start again from `seq + 1`. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import nats
from nats.js import api

from contracts import subjects
from contracts.events import PersonaCompleted, UndecodableEvent, UnknownEvent, parse_event


async def follow(nats_url: str, stream: str, from_seq: int, job: str) -> None:
    connected = False

    async def said(exc: Exception) -> None:  # one line each, once connected (before: the exit says it)
        if connected:
            print(f"nats: {exc!r}", file=sys.stderr, flush=True)

    try:
        nc = await nats.connect(nats_url.split(","), name="prompt-printer", error_cb=said,
                                connect_timeout=2, max_reconnect_attempts=2)
    except (OSError, nats.errors.Error) as exc:
        sys.exit(f"cannot reach NATS at {nats_url}: {exc or type(exc).__name__} (set --nats-url or NATS_URL)")
    connected = True
    nc.options["max_reconnect_attempts"] = -1  # connected: through any outage, for as long as it runs
    js = nc.jetstream()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def on_message(msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            event = parse_event(msg.data)
        except UnknownEvent:
            return  # written by a newer producer: skip it (a tolerant reader)
        except UndecodableEvent as exc:
            print(f"skipping seq {seq}: {exc}", file=sys.stderr, flush=True)
            return
        if isinstance(event, PersonaCompleted):
            print(json.dumps({"seq": seq, "job_id": event.job_id, "persona_id": event.persona_id,
                              "persona_name": event.persona_name, "mode": event.mode,
                              "prompt_length": event.prompt_length, "prompt": event.prompt}), flush=True)

    # An ordered consumer: the server replays the subject from `from_seq`, in order, then keeps
    # sending new events. Nothing to ack; it is ephemeral, and the server drops it once we are gone.
    sub = await js.subscribe(
        subjects.job_persona(job, "*", "completed"), stream=stream, cb=on_message, ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq),
    )
    print(f"following {stream} from seq {from_seq}", file=sys.stderr, flush=True)
    await stop.wait()
    await sub.unsubscribe()
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL") or "nats://127.0.0.1:4222")
    parser.add_argument("--stream", default=os.environ.get("PROMPTGEN_STREAM") or "PROMPTGEN")
    parser.add_argument("--from-seq", type=int, default=1, help="the first stream sequence to read (default 1)")
    parser.add_argument("--job", default="*", help="one job's prompts only (default: every job)")
    args = parser.parse_args()
    if args.from_seq < 1:
        parser.error("--from-seq: a stream sequence starts at 1")
    if args.job != "*" and not subjects.is_valid_token(args.job):
        parser.error("--job: a job id is 1 to 128 letters, digits, '-' or '_'")
    asyncio.run(follow(args.nats_url, args.stream, args.from_seq, args.job))


if __name__ == "__main__":
    main()
