"""How many ids one query of documents by id should name (``IDS_PER_QUERY``):

    python -m bench.ids_per_query [--documents 5000] [--sizes 200,50,25,10]

Starts `promptgen up` (its MongoDB-wire server), inserts ``--documents`` persona-like documents
(1.5 KB each) into a scratch database, then fetches 320 of them and all of them with
``ReadModels.personas_by_id`` in queries of each size, twice, and prints the times. The server
checks each document it finds against the query's whole list, so a query's cost grows with
the square of its ids; more queries cost more round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import services.adapters.read_models as read_models
from bench import harness
from services.adapters.read_models import ReadModels


async def measure(mongo_url: str, documents: int, sizes: list[int]) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient = AsyncMongoClient(mongo_url, tz_aware=True)
    db = client[f"ids_per_query_{uuid.uuid4().hex[:8]}"]
    models = ReadModels(db)
    try:
        docs = [{"_id": f"persona-{i:05d}-{uuid.uuid4().hex[:12]}", "template_id": "t", "name": f"N{i}",
                 "pad": "x" * 1500} for i in range(documents)]
        await models.personas.insert_many(docs)
        for count in (320, documents):
            ids = [d["_id"] for d in docs[:count]]
            for round_ in (1, 2):
                for size in sizes:
                    read_models.IDS_PER_QUERY = size
                    started = time.perf_counter()
                    found = await models.personas_by_id(ids)
                    elapsed = time.perf_counter() - started
                    assert len(found) == count
                    print(f"{count} ids in queries of {size}: {elapsed * 1000:.0f} ms (round {round_})")
    finally:
        await client.drop_database(db.name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--sizes", default="200,50,25,10")
    args = parser.parse_args()
    d = harness.start(env={"PROMPTGEN_PROVIDER": "offline"})
    try:
        asyncio.run(measure(d.mongo_url, args.documents, [int(s) for s in args.sizes.split(",")]))
    finally:
        d.stop()


if __name__ == "__main__":
    main()
