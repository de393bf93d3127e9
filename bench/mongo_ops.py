"""What each kind of write costs the embedded MongoDB-wire server (SecantusDB, started as
`promptgen up` starts it: on disk, --sync-on-commit), for reading the benchmarks:

    python -m bench.mongo_ops [--documents 3000] > bench/results/mongo_ops.txt

Documents of the size of a job's persona entry; batches of 1,000 as the projector sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from pymongo import ASCENDING, AsyncMongoClient, UpdateOne

from tests.servers import MongoServer


def _doc(i: int) -> dict:
    return {"_id": f"id{i}", "job_id": f"j{i // 100}", "order": i, "status": "queued", "body": "x" * 400, "_seq": 1}


async def _chunks(write, items: list, size: int = 1000) -> None:
    for i in range(0, len(items), size):
        await write(items[i : i + size])


async def measure(url: str, n: int) -> list[tuple[str, float]]:
    client: AsyncMongoClient = AsyncMongoClient(url)
    db = client["bench_ops"]
    out: list[tuple[str, float]] = []

    async def timed(label: str, work) -> None:
        t = time.perf_counter()
        await work
        out.append((label, time.perf_counter() - t))

    plain, indexed, upserted = db["plain"], db["indexed"], db["upserted"]
    for keys in ([("job_id", ASCENDING), ("order", ASCENDING)], [("job_id", ASCENDING), ("status", ASCENDING)]):
        await indexed.create_index(keys)
    await indexed.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)
    docs = [_doc(i) for i in range(n)]
    await timed("insert_many, unordered, no secondary index",
                _chunks(lambda d: plain.insert_many(d, ordered=False), docs))
    await timed("insert_many, unordered, the 3 indexes of prompt_job_personas",
                _chunks(lambda d: indexed.insert_many(d, ordered=False), [_doc(i) for i in range(n)]))
    await timed("upsert $setOnInsert (bulk_write, ordered)", _chunks(
        lambda d: upserted.bulk_write(d, ordered=True),
        [UpdateOne({"_id": f"id{i}"}, {"$setOnInsert": _doc(i)}, upsert=True) for i in range(n)]))

    def guarded(seq: int) -> list:
        return [UpdateOne({"_id": f"id{i}", "_seq": {"$lt": seq}, "status": {"$nin": ["completed"]}},
                          {"$set": {"status": "processing", "_seq": seq}}) for i in range(n)]

    await timed("guarded $set update (bulk_write, ordered)", _chunks(lambda d: plain.bulk_write(d, ordered=True),
                                                                     guarded(2)))

    async def in_transaction(ops: list) -> None:
        async with client.start_session() as session, await session.start_transaction():
            await plain.bulk_write(ops, ordered=True, session=session)

    await timed("guarded $set update, 1,000 per transaction", _chunks(in_transaction, guarded(3)))
    await timed("renameCollection of the indexed collection", indexed.rename("renamed"))
    await client.drop_database("bench_ops")
    await client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=3000)
    args = parser.parse_args()
    server = MongoServer(str(Path(tempfile.mkdtemp(prefix="promptgen-ops-")) / "mongo")).start()
    try:
        results = asyncio.run(measure(server.url, args.documents))
    finally:
        server.stop()
    print(f"{args.documents} documents; load average {os.getloadavg()[0]:.2f}")
    for label, seconds in results:
        print(f"{label:65s} {seconds:7.3f} s  {1000 * seconds / args.documents:6.3f} ms/document")


if __name__ == "__main__":
    main()
