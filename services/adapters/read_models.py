"""The read-model adapter: MongoDB collections, indexes and the projector checkpoint.

Only the projector writes here; the gateway reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from services.projector.projections import (
    INTERACTIONS,
    JOB_PERSONAS,
    JOBS,
    PERSONAS,
    TEMPLATES,
    Change,
)
from services.runtime.failures import TRANSIENT_CODES, brief, kind_of
from services.runtime.settings import Settings

log = structlog.get_logger()

CHECKPOINT_ID = "checkpoint"
# The session the fold's transactions run in, recorded so that the next projector ends a
# transaction this one leaves open when it is killed (the server would hold it, and with it
# the checkpoint, for its transaction lifetime: 60 s by default). Not rebuilt with the state.
SESSIONS = "projector_sessions"
FOLD_SESSION_ID = "fold"
# Positions of consumers other than the fold (the job manager): not a read model, so a
# rebuild keeps them.
POSITIONS = "consumer_positions"
STATE = "projector_state"  # the fold's checkpoint: rebuilt with the read models
DUPLICATE_KEY = 11000
# Ids per query when documents are fetched by a list of ids. A server checks each document it
# finds against the query's whole list (SecantusDB does so linearly, in Python), so one query
# naming n ids costs in the order of n squared comparisons there: a 5,000-persona job's one
# query was 60% of that server's time in the job (bench/results/issue15-scaling.md). Fetching
# 5,000 documents took 1.4 to 1.9 s in queries of 200 ids, 0.6 to 0.8 s in queries of 50 or 25,
# 0.8 to 0.9 s in queries of 10 (bench/results/ids_per_query.txt). On MongoDB, queries of this
# size cost a few more round trips.
IDS_PER_QUERY = 50
# Earlier versions let a job's persona documents outlive its document by up to the job's deadline
# (30 minutes by default): the first start without their TTL index looks this far ahead for them.
ORPHAN_HORIZON = timedelta(days=1)
ILLEGAL_OPERATION = 20  # a standalone mongod asked for a transaction


def _id_chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    """``ids`` without repeats, in lists of at most :data:`IDS_PER_QUERY` (one query each)."""
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), IDS_PER_QUERY):
        yield unique[i:i + IDS_PER_QUERY]


async def _by_id(collection: AsyncCollection, ids: Sequence[str], projection: Sequence[str] | None = None,
                 ) -> dict[str, dict[str, Any]]:
    """The documents of ``collection`` among ``ids`` that exist, by id (queries of :func:`_id_chunks`)."""
    found: dict[str, dict[str, Any]] = {}
    for chunk in _id_chunks(ids):
        found.update({d["_id"]: d async for d in collection.find({"_id": {"$in": chunk}}, projection)})
    return found


@dataclass(frozen=True, slots=True)
class CollectionWrites:
    """A batch's writes to one collection: new documents (inserted unordered), then updates in order."""

    collection: str
    docs: list[dict[str, Any]]
    updates: list[Change]


@dataclass(slots=True)
class Transactions:
    """Whether the server takes multi-document transactions: None until asked (once), or set
    (False: write as if it had none); and the one session the fold's transactions run in."""

    available: bool | None = None
    session: AsyncClientSession | None = None


class DocumentsRefused(ValueError):
    """Documents MongoDB will not store (``refused``: document, error); the others are stored."""

    def __init__(self, refused: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        super().__init__(f"{len(refused)} documents refused: {refused[0][1].get('errmsg', '')[:200]}")
        self.refused = refused


def _moved_to(seq: int, log_id: str | None) -> dict[str, Any]:
    """A position only moves forward (a late writer cannot move it back), with its log."""
    update: dict[str, Any] = {"$max": {"seq": seq}}
    if log_id is not None:
        update["$set"] = {"log_id": log_id}
    return update


def mongo_client(settings: Settings) -> AsyncMongoClient:
    return AsyncMongoClient(
        settings.mongo_url,
        tz_aware=True,
        serverSelectionTimeoutMS=10_000,
        retryWrites=True,
        appname="promptgen",
    )


def open_read_models(settings: Settings) -> tuple[ReadModels, Callable[[], Awaitable[None]]]:
    """The read models of ``settings``' database, and how to close their connection."""
    client = mongo_client(settings)
    transactions = Transactions(available=False if settings.mongo_transactions == "off" else None)
    return ReadModels(client[settings.mongo_db], transactions=transactions), client.close


def _operations(changes: list[Change]) -> list[UpdateOne | UpdateMany]:
    return [UpdateMany(c.filter, c.update) if c.many else UpdateOne(c.filter, c.update, upsert=c.upsert)
            for c in changes]


@dataclass(frozen=True, slots=True)
class Mark:
    """A consumer's position in the event log (the last sequence it applied) and the log it
    was taken in (:attr:`services.adapters.event_log.LogState.log_id`; None: not recorded,
    as for positions stored before logs were told apart, or none stored yet)."""

    seq: int
    log_id: str | None = None


def _mark(doc: dict[str, Any] | None) -> Mark:
    return Mark(int(doc["seq"]), doc.get("log_id")) if doc else Mark(0)


@dataclass(frozen=True)
class ReadModels:
    """The collections of one generation of read models (``suffix`` is used by rebuilds)."""

    db: AsyncDatabase
    suffix: str = ""
    transactions: Transactions = field(default_factory=Transactions, compare=False)

    def _c(self, name: str) -> AsyncCollection:
        return self.db[f"{name}{self.suffix}"]

    @property
    def templates(self) -> AsyncCollection:
        return self._c(TEMPLATES)

    @property
    def personas(self) -> AsyncCollection:
        return self._c(PERSONAS)

    @property
    def jobs(self) -> AsyncCollection:
        return self._c(JOBS)

    @property
    def job_personas(self) -> AsyncCollection:
        """One document per persona of a job: its status, error, prompt length, usage."""
        return self._c(JOB_PERSONAS)

    async def personas_by_id(self, ids: Sequence[str], projection: Sequence[str] | None = None,
                             ) -> dict[str, dict[str, Any]]:
        """The persona documents of ``ids`` that exist, by id (queries of at most
        :data:`IDS_PER_QUERY` ids each)."""
        return await _by_id(self.personas, ids, projection)

    async def persona_counts(self, job_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        """How many persona documents each of ``job_ids`` has in each status, by (job, status)
        (aggregates naming at most :data:`IDS_PER_QUERY` jobs each)."""
        counts: dict[tuple[str, str], int] = {}
        for chunk in _id_chunks(job_ids):
            pipeline = [{"$match": {"job_id": {"$in": chunk}}},
                        {"$group": {"_id": {"job": "$job_id", "status": "$status"}, "n": {"$sum": 1}}}]
            async for row in await self.job_personas.aggregate(pipeline):
                counts[(row["_id"]["job"], row["_id"]["status"])] = row["n"]
        return counts

    async def job_persona_docs(self, job_id: str) -> list[dict[str, Any]]:
        return [d async for d in self.job_personas.find({"job_id": job_id}).sort("order", ASCENDING)]

    @property
    def interactions(self) -> AsyncCollection:
        return self._c(INTERACTIONS)

    @property
    def state(self) -> AsyncCollection:
        return self._c(STATE)

    def collection(self, name: str) -> AsyncCollection:
        return self._c(name)

    async def apply(self, collection: str, changes: list[Change]) -> None:
        """Write ``changes`` to ``collection``, in order (one bulk write on MongoDB)."""
        target = self.collection(collection)
        if not isinstance(target, AsyncCollection):  # an in-memory double writes them as they are
            await target.apply_changes(changes)
            return
        await target.bulk_write(_operations(changes), ordered=True)

    async def write_batch(self, writes: Sequence[CollectionWrites], seq: int, log_id: str | None = None) -> bool:
        """Store a batch's writes and the checkpoint after it in one transaction: one commit, and
        a reader sees the documents and the checkpoint move together. False, with nothing written,
        when that cannot be: the server has no transactions (asked once), a document is already
        there (the batch is replayed after a crash: a duplicate aborts a transaction) or is
        refused. A transient failure is raised, to be retried like any write."""
        if not await self._has_transactions():
            return False
        try:
            session = await self._session()
            async with await session.start_transaction():
                await self._write_in(session, writes, seq, log_id)
        except Exception as exc:
            if kind_of(exc) == "transient":
                raise
            if isinstance(exc, OperationFailure) and exc.code == ILLEGAL_OPERATION:
                self.transactions.available = False
                log.warning("mongo_transactions_unavailable", error=brief(exc))
            return False
        return True

    async def _write_in(self, session: AsyncClientSession, writes: Sequence[CollectionWrites], seq: int,
                        log_id: str | None) -> None:
        for w in writes:
            target = self.collection(w.collection)
            if w.docs:
                await target.insert_many(w.docs, ordered=False, session=session)
            if w.updates:
                await target.bulk_write(_operations(w.updates), ordered=True, session=session)
        await self.state.update_one({"_id": CHECKPOINT_ID}, _moved_to(seq, log_id), upsert=True, session=session)

    async def _session(self) -> AsyncClientSession:
        if self.transactions.session is None:
            session = self.db.client.start_session()
            await self.db[SESSIONS].replace_one({"_id": FOLD_SESSION_ID}, {"lsid": session.session_id}, upsert=True)
            self.transactions.session = session
        return self.transactions.session

    async def end_abandoned_transaction(self) -> None:
        """End the transaction a killed predecessor may have left open, by its recorded session:
        until the server reaps it, it holds the checkpoint, and every write to it waits."""
        recorded = await self.db[SESSIONS].find_one({"_id": FOLD_SESSION_ID})
        if recorded is None or not isinstance(recorded.get("lsid"), dict):
            return
        try:
            await self.db.client.admin.command({"killSessions": [recorded["lsid"]]})
            log.info("mongo_previous_session_ended")  # with whatever transaction it left open
        except PyMongoError as exc:  # not allowed, or gone: the server reaps it in its own time
            log.warning("mongo_abandoned_transaction_not_ended", error=brief(exc))

    async def _has_transactions(self) -> bool:
        """A replica set member or a mongos takes transactions; a standalone mongod (no
        ``setName`` in its hello) and the in-memory double do not."""
        if self.transactions.available is None:
            if not isinstance(self.db, AsyncDatabase):
                self.transactions.available = False
            else:
                hello = await self.db.command("hello")
                self.transactions.available = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
                log.info("mongo_transactions", available=self.transactions.available)
                if self.transactions.available:
                    await self.end_abandoned_transaction()
        return self.transactions.available

    async def insert_new(self, collection: str, docs: list[dict[str, Any]]) -> list[Any]:
        """Insert ``docs`` in one unordered write; returns the ids of those already there (left
        as they are). Raises :class:`DocumentsRefused` naming any other the server refused,
        once the rest are stored."""
        try:
            await self.collection(collection).insert_many(docs, ordered=False)
            return []
        except BulkWriteError as exc:
            errors = (exc.details or {}).get("writeErrors", [])
            if not errors or (exc.details or {}).get("writeConcernErrors") \
                    or any(e.get("code") in TRANSIENT_CODES for e in errors):
                raise  # to be retried: what was stored then comes back as already there
            present = [docs[e["index"]]["_id"] for e in errors if e.get("code") == DUPLICATE_KEY]
            refused = [(docs[e["index"]], e) for e in errors if e.get("code") != DUPLICATE_KEY]
            if refused:
                raise DocumentsRefused(refused) from exc
            return present

    async def write_differences(self, collection: str, insert: list[dict[str, Any]], replace: list[dict[str, Any]],
                                delete: list[Any]) -> None:
        """Insert the documents ``insert``, replace by ``_id`` those of ``replace`` and delete the
        ids ``delete``, in one unordered write. An insert that finds its document there (the
        write retried after it was stored) replaces it; a replacement that finds none inserts it.
        Raises :class:`DocumentsRefused` naming the documents the server refused, once the rest
        are stored."""
        target = self.collection(collection)
        if not isinstance(target, AsyncCollection):  # the in-memory double, through its generic methods
            if insert:
                await target.insert_many(insert, ordered=False)
            for doc in replace:
                await target.replace_one({"_id": doc["_id"]}, doc, upsert=True)
            if delete:
                await target.delete_many({"_id": {"$in": delete}})
            return
        docs = insert + replace
        ops: list[Any] = [InsertOne(d) for d in insert]
        ops += [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in replace]
        ops += [DeleteOne({"_id": i}) for i in delete]
        if not ops:
            return
        try:
            await target.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = (exc.details or {}).get("writeErrors", [])
            if not errors or (exc.details or {}).get("writeConcernErrors") \
                    or any(e.get("code") in TRANSIENT_CODES or e["index"] >= len(docs) for e in errors):
                raise  # to be retried, or not a document's fault (a delete)
            there = [insert[e["index"]] for e in errors if e.get("code") == DUPLICATE_KEY and e["index"] < len(insert)]
            refused = [(docs[e["index"]], e) for e in errors
                       if not (e.get("code") == DUPLICATE_KEY and e["index"] < len(insert))]
            try:
                await self.write_differences(collection, [], there, [])
            except DocumentsRefused as more:
                refused += more.refused
            if refused:
                raise DocumentsRefused(refused) from exc

    async def checkpoint(self) -> int:
        return (await self.checkpoint_mark()).seq

    async def checkpoint_mark(self) -> Mark:
        """The fold's checkpoint and the log it belongs to."""
        return _mark(await self.state.find_one({"_id": CHECKPOINT_ID}))

    async def save_checkpoint(self, seq: int, log_id: str | None = None) -> None:
        await self.state.update_one({"_id": CHECKPOINT_ID}, _moved_to(seq, log_id), upsert=True)

    async def position(self, consumer: str) -> int:
        return (await self.position_mark(consumer)).seq

    async def position_mark(self, consumer: str) -> Mark:
        return _mark(await self.db[POSITIONS].find_one({"_id": consumer}))

    async def positions(self) -> dict[str, Mark]:
        """Every consumer's stored position but the fold's."""
        return {doc["_id"]: _mark(doc) async for doc in self.db[POSITIONS].find({})}

    async def save_position(self, consumer: str, seq: int, log_id: str | None = None) -> None:
        await self.db[POSITIONS].update_one({"_id": consumer}, _moved_to(seq, log_id), upsert=True)

    async def reset_position(self, consumer: str, log_id: str | None) -> None:
        """Start ``consumer`` at the beginning of the log ``log_id`` (its position, of another
        log, says nothing about this one). The only write that moves a position back."""
        await self.db[POSITIONS].replace_one({"_id": consumer}, {"seq": 0, "log_id": log_id}, upsert=True)

    async def ensure_indexes(self) -> None:
        await self.personas.create_index([("template_id", ASCENDING)])
        await self.jobs.create_index([("created_at", DESCENDING)])
        await self.jobs.create_index([("status", ASCENDING), ("deadline", ASCENDING)])
        await self.job_personas.create_index([("job_id", ASCENDING), ("order", ASCENDING)])
        # A job's persona documents are found by job_id (the index above); an index on their status
        # made each of their updates dearer and served no query. Earlier versions created it.
        with contextlib.suppress(OperationFailure):
            await self.job_personas.drop_index("job_id_1_status_1")
        # Finished job views leave after their retention (the event log keeps the history):
        # :meth:`drop_expired_jobs` finds them by this index. Not a TTL index: the server would
        # delete a job's document without its persona documents, which would then need one of
        # their own, and every index of a job persona document makes each of its updates dearer
        # (earlier versions had both).
        await self._plain_index(self.jobs, "expire_at")
        await self._drop_ttl_of_job_personas()

    @staticmethod
    async def _plain_index(collection: AsyncCollection, field: str) -> None:
        """An ascending index on ``field`` without expiry (a TTL index of an earlier version goes)."""
        name = f"{field}_1"
        existing = {ix["name"]: ix async for ix in await collection.list_indexes()}
        if name in existing and "expireAfterSeconds" in existing[name]:
            with contextlib.suppress(OperationFailure):  # another projector dropped it first
                await collection.drop_index(name)
        await collection.create_index([(field, ASCENDING)])

    async def _drop_ttl_of_job_personas(self) -> None:
        """Drop the TTL index earlier versions gave the job persona documents. Under it they left
        up to a job's deadline after the job's document: those whose job already left go first,
        or nothing would ever find them (the sweep finds persona documents through their job)."""
        names = {ix["name"] async for ix in await self.job_personas.list_indexes()}
        if "expire_at_1" not in names:
            return
        soon = datetime.now(UTC) + ORPHAN_HORIZON
        jobs = {d["job_id"] async for d in self.job_personas.find({"expire_at": {"$lte": soon}}, {"job_id": 1})}
        present = set(await _by_id(self.jobs, sorted(jobs), ["_id"]))
        for chunk in _id_chunks(sorted(jobs - present)):
            await self.job_personas.delete_many({"job_id": {"$in": chunk}})
        with contextlib.suppress(OperationFailure):  # another projector dropped it first
            await self.job_personas.drop_index("expire_at_1")

    async def drop_expired_jobs(self, now: datetime, limit: int = 100) -> int:
        """Delete the views of up to ``limit`` jobs whose retention ended (``expire_at`` <= ``now``):
        their persona documents, then their job documents, so none outlives its job's (a sweep
        that stops half-way leaves the jobs to the next). How many jobs went."""
        expired = [d["_id"] async for d in self.jobs.find({"expire_at": {"$lte": now}}, {"_id": 1}).limit(limit)]
        if expired:
            await self.job_personas.delete_many({"job_id": {"$in": expired}})
            await self.jobs.delete_many({"_id": {"$in": expired}, "expire_at": {"$lte": now}})
        return len(expired)

