"""The read models in memory: the real :class:`~services.adapters.read_models.ReadModels` over mongomock,
behind the part of pymongo's asyncio API the code uses (:class:`services.adapters.ports.Collection`).

mongomock (synchronous) does the queries, updates and aggregations; this module only makes
them awaitable, with pymongo's async shapes: ``find()`` returns a cursor at once and is
iterated with ``async for``; ``aggregate()`` and ``list_indexes()`` are awaited for a cursor.

One gap filled here: mongomock's bulk writer predates pymongo 4.9 (``UpdateOne`` now hands
it a ``sort``), so :meth:`MemoryCollection.bulk_write` applies the operations one by one,
in order, stopping at the first error when ``ordered`` as MongoDB does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import mongomock

from services.adapters.read_models import ReadModels
from services.projector.projections import Change


class MemoryCursor:
    def __init__(self, docs: Iterable[dict[str, Any]]) -> None:
        self._docs = docs

    def sort(self, key: Any, direction: int | None = None) -> MemoryCursor:
        self._docs = self._docs.sort(key, direction) if direction is not None else self._docs.sort(key)
        return self

    def limit(self, limit: int) -> MemoryCursor:
        self._docs = self._docs.limit(limit)
        return self

    def hint(self, index: Any) -> MemoryCursor:
        return self  # which index serves a query changes nothing in memory

    def skip(self, skip: int) -> MemoryCursor:
        self._docs = self._docs.skip(skip)
        return self

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        docs: Iterator[dict[str, Any]] = iter(self._docs)
        for doc in docs:
            yield doc

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        docs = list(self._docs)
        return docs if length is None else docs[:length]


class MemoryCollection:
    def __init__(self, collection: mongomock.Collection) -> None:
        self._c = collection

    @property
    def name(self) -> str:
        return self._c.name

    def find(self, *args: Any, **kwargs: Any) -> MemoryCursor:
        return MemoryCursor(self._c.find(*args, **kwargs))

    async def find_one(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        return self._c.find_one(*args, **kwargs)

    async def aggregate(self, pipeline: list[dict[str, Any]], **kwargs: Any) -> MemoryCursor:
        return MemoryCursor(list(self._c.aggregate(pipeline, **kwargs)))

    async def count_documents(self, filter: dict[str, Any], **kwargs: Any) -> int:
        return self._c.count_documents(filter, **kwargs)

    async def estimated_document_count(self, **kwargs: Any) -> int:
        return self._c.estimated_document_count(**kwargs)

    async def update_one(self, filter: dict[str, Any], update: Any, upsert: bool = False, **kwargs: Any) -> Any:
        return self._c.update_one(filter, update, upsert=upsert, **kwargs)

    async def replace_one(self, filter: dict[str, Any], replacement: dict[str, Any], upsert: bool = False,
                          **kwargs: Any) -> Any:
        return self._c.replace_one(filter, replacement, upsert=upsert, **kwargs)

    async def update_many(self, filter: dict[str, Any], update: Any, upsert: bool = False, **kwargs: Any) -> Any:
        return self._c.update_many(filter, update, upsert=upsert, **kwargs)

    async def insert_one(self, document: dict[str, Any], **kwargs: Any) -> Any:
        return self._c.insert_one(document, **kwargs)

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool = True, **kwargs: Any) -> Any:
        return self._c.insert_many(documents, ordered=ordered, **kwargs)

    async def delete_one(self, filter: dict[str, Any], **kwargs: Any) -> Any:
        return self._c.delete_one(filter, **kwargs)

    async def delete_many(self, filter: dict[str, Any], **kwargs: Any) -> Any:
        return self._c.delete_many(filter, **kwargs)

    async def create_index(self, keys: Any, **kwargs: Any) -> str:
        return self._c.create_index(keys, **kwargs)

    async def drop_index(self, name: str, **kwargs: Any) -> None:
        self._c.drop_index(name)

    async def list_indexes(self) -> MemoryCursor:
        return MemoryCursor(list(self._c.list_indexes()))

    async def drop(self, **kwargs: Any) -> None:
        self._c.drop()

    async def rename(self, new_name: str, **kwargs: Any) -> Any:
        return self._c.rename(new_name, **kwargs)

    async def apply_changes(self, changes: list[Change]) -> None:
        """Our changes, in order, through mongomock's public API (its ``bulk_write`` cannot take
        pymongo's current operations, and theirs keep their fields private)."""
        for change in changes:
            write = self._c.update_many if change.many else self._c.update_one
            if change.many:
                write(change.filter, change.update)
            else:
                write(change.filter, change.update, upsert=change.upsert)


class MemoryDatabase:
    def __init__(self, db: mongomock.Database) -> None:
        self._db = db

    @property
    def name(self) -> str:
        return self._db.name

    def __getitem__(self, name: str) -> MemoryCollection:
        return MemoryCollection(self._db[name])

    def get_collection(self, name: str) -> MemoryCollection:
        return self[name]

    async def list_collection_names(self, **kwargs: Any) -> list[str]:
        return self._db.list_collection_names(**kwargs)

    async def drop_collection(self, name: str) -> None:
        self._db.drop_collection(name)


def memory_read_models(db_name: str = "promptgen") -> ReadModels:
    """Fresh, empty read models in memory; ``tz_aware`` as the real client is."""
    return ReadModels(MemoryDatabase(mongomock.MongoClient(tz_aware=True)[db_name]))
