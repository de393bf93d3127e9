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

from pymongo import ASCENDING, AsyncMongoClient, DeleteOne, ReplaceOne, UpdateOne

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
    await timed("insert_many, unordered, 3 secondary indexes (what prompt_job_personas had before 2026-11-27)",
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

    # What a rebuild's switch could be made of: reading both generations, writing differences,
    # dropping, renaming over a collection that holds as many documents.
    async def read_all(collection, **sort) -> None:
        async for _ in collection.find({}, batch_size=10_000, **sort):
            pass

    await timed("find all, sorted by _id, no secondary index", read_all(plain, sort=[("_id", ASCENDING)]))
    await timed("find all, natural order", read_all(plain))
    renamed = db["renamed"]
    await timed("find all, sorted by _id, the 3 indexes", read_all(renamed, sort=[("_id", ASCENDING)]))
    await timed("replace_one (bulk_write, unordered), the 3 indexes", _chunks(
        lambda d: renamed.bulk_write(d, ordered=False),
        [ReplaceOne({"_id": f"id{i}"}, {**_doc(i), "status": "completed"}) for i in range(n)]))
    await timed("delete_one by _id (bulk_write, unordered), the 3 indexes", _chunks(
        lambda d: renamed.bulk_write(d, ordered=False), [DeleteOne({"_id": f"id{i}"}) for i in range(n)]))
    await _chunks(lambda d: renamed.insert_many(d, ordered=False), [_doc(i) for i in range(n)])
    await timed("delete_many({}), the 3 indexes", renamed.delete_many({}))
    await _chunks(lambda d: renamed.insert_many(d, ordered=False), [_doc(i) for i in range(n)])
    await timed("drop, the 3 indexes", renamed.drop())
    await timed("delete_many({}), no secondary index", plain.delete_many({}))
    await _chunks(lambda d: plain.insert_many(d, ordered=False), [_doc(i) for i in range(n)])
    await timed("drop, no secondary index", plain.drop())
    source, target = db["source"], db["target"]
    for collection in (source, target):
        for keys in ([("job_id", ASCENDING), ("order", ASCENDING)], [("job_id", ASCENDING), ("status", ASCENDING)]):
            await collection.create_index(keys)
        await _chunks(lambda d, c=collection: c.insert_many(d, ordered=False), [_doc(i) for i in range(n)])
    await timed("renameCollection over a target as large, 2 indexes each", source.rename("target", dropTarget=True))
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
