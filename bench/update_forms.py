"""What one persona's guarded update costs the embedded MongoDB-wire server (SecantusDB, on
disk, as `promptgen up` starts it) in each form it could be sent in, for reading the
latency-bound benchmark (`results/issue15-latency.md`):

    python -m bench.update_forms [--documents 1000] [--rounds 3] > bench/results/update_forms.txt

Job persona documents with the (job_id, order) index; 50 updates per transaction, as a live
batch of the projector holds them; each form in turn, round after round, on its own collection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, UpdateOne

from tests.servers import MongoServer

PER_TRANSACTION = 50
OPEN = ["queued", "processing"]


def _key(i: int) -> str:
    return f"j{i // 100}:p{i}"


def _doc(i: int) -> dict[str, Any]:
    return {"_id": _key(i), "job_id": f"j{i // 100}", "persona_id": f"p{i}", "persona_name": "x" * 30,
            "mode": "learn", "status": "queued", "order": i % 100, "updated_at": 0, "_seq": 1}


def _completed(i: int, seq: int) -> dict[str, Any]:
    return {"status": "completed", "prompt_length": 1000 + i, "model": "m", "updated_at": i, "_seq": seq,
            "usage": {"prompt_tokens": i, "completion_tokens": 2 * i, "total_tokens": 3 * i}}


def _guarded(ids: range, seq: int) -> list[UpdateOne]:
    """What the projector sends: by ``_id``, guarded by ``_seq`` and an open status."""
    return [UpdateOne({"_id": _key(i), "_seq": {"$lt": seq}, "status": {"$in": OPEN}}, {"$set": _completed(i, seq)})
            for i in ids]


def _by_id(ids: range, seq: int) -> list[UpdateOne]:
    """The same values with no guard (not idempotent: for comparison only)."""
    return [UpdateOne({"_id": _key(i)}, {"$set": _completed(i, seq)}) for i in ids]


def _guard_in_pipeline(ids: range, seq: int) -> list[UpdateOne]:
    """By ``_id`` alone, the guard evaluated in an update pipeline."""
    guard = {"$and": [{"$lt": ["$_seq", seq]}, {"$in": ["$status", OPEN]}]}

    def changed(i: int) -> dict[str, Any]:
        return {"$mergeObjects": ["$$ROOT", {"$literal": _completed(i, seq)}]}

    return [UpdateOne({"_id": _key(i)}, [{"$replaceWith": {"$cond": [guard, changed(i), "$$ROOT"]}}]) for i in ids]


FORMS: dict[str, Callable[[Any, Any, range, int], Any]] = {
    "guarded $set by _id (what the projector sends)":
        lambda c, s, ids, seq: c.bulk_write(_guarded(ids, seq), ordered=True, session=s),
    "guarded $set by _id, unordered":
        lambda c, s, ids, seq: c.bulk_write(_guarded(ids, seq), ordered=False, session=s),
    "$set by _id alone, no guard":
        lambda c, s, ids, seq: c.bulk_write(_by_id(ids, seq), ordered=True, session=s),
    "by _id alone, the guard in an update pipeline":
        lambda c, s, ids, seq: c.bulk_write(_guard_in_pipeline(ids, seq), ordered=True, session=s),
    "one update_many of the 50 (_id $in, one value for all)":
        lambda c, s, ids, seq: c.update_many(
            {"_id": {"$in": [_key(i) for i in ids]}, "_seq": {"$lt": seq}, "status": {"$in": OPEN}},
            {"$set": {"status": "processing", "attempts": 1, "updated_at": ids.start, "_seq": seq}}, session=s),
}


async def measure(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    client: AsyncMongoClient = AsyncMongoClient(url)
    db = client["bench_update_forms"]
    names = {form: f"c{k}" for k, form in enumerate(FORMS)}
    for name in names.values():
        await db[name].create_index([("job_id", ASCENDING), ("order", ASCENDING)])
        await db[name].insert_many([_doc(i) for i in range(n)], ordered=False)
    out: dict[str, list[float]] = {form: [] for form in FORMS}
    for r in range(rounds):
        seq = 10 + r
        for form, write in FORMS.items():
            collection = db[names[form]]
            await collection.update_many({}, {"$set": {"status": "queued"}})
            t = time.perf_counter()
            for start in range(0, n, PER_TRANSACTION):
                async with client.start_session() as session, await session.start_transaction():
                    await write(collection, session, range(start, min(n, start + PER_TRANSACTION)), seq)
            out[form].append(time.perf_counter() - t)
    await client.drop_database("bench_update_forms")
    await client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = MongoServer(str(Path(tempfile.mkdtemp(prefix="promptgen-forms-")) / "mongo")).start()
    try:
        results = asyncio.run(measure(server.url, args.documents, args.rounds))
    finally:
        server.stop()
    print(f"{args.documents} documents, {PER_TRANSACTION} updates per transaction, {args.rounds} rounds in turns; "
          f"load average {os.getloadavg()[0]:.2f}; ms per document, each round")
    for form, seconds in results.items():
        print(f"{form:58s} " + "  ".join(f"{1000 * s / args.documents:6.3f}" for s in seconds))


if __name__ == "__main__":
    main()
