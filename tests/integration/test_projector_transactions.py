"""The fold stores each batch in one MongoDB transaction with its checkpoint, where it can.

A batch replayed after a crash meets its own documents (a duplicate aborts a transaction),
and a server may have no transactions at all (a standalone mongod, the in-memory double):
then the batch is written as before, write by write with the checkpoint last. Against the
real MongoDB-wire server; a second one with test commands injects failures.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient, monitoring

from contracts import subjects
from contracts.events import TemplateCreated
from services.adapters.event_log import EventLog, StoredEvent
from services.adapters.parked import ParkedEvents
from services.adapters.read_models import (
    CHECKPOINT_ID,
    SESSIONS,
    CollectionWrites,
    ReadModels,
    Transactions,
    open_read_models,
)
from services.cli import embedded
from services.projector.fold import Fold
from services.projector.projections import PERSONAS, READ_MODELS, TEMPLATES
from services.testing.memory_models import memory_read_models
from tests.samples import TEMPLATE, every_event
from tests.servers import stop, wait_port

ROOT = Path(__file__).resolve().parents[2]

APP = "promptgen-txn-test"


class Commands(monitoring.CommandListener):
    """The commands a client sends (name and body), as the server receives them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def writes(self) -> list[tuple[str, dict[str, Any]]]:
        """The fold's writes (not the record of its session, :data:`SESSIONS`)."""
        return [(name, body) for name, body in self.sent if name in ("insert", "update", "commitTransaction")
                and body.get(name) != SESSIONS]


@pytest.fixture(scope="module")
def test_commands_mongo_url(tmp_path_factory) -> Iterator[str]:
    """A MongoDB-wire server of its own that takes ``configureFailPoint`` (fault injection)."""
    port = embedded.free_port()
    proc = subprocess.Popen(embedded.mongo_argv(":memory:", port) + ["--enable-test-commands"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield embedded.mongo_url(port)
    finally:
        stop(proc)


async def _client(url: str, listener: Commands | None = None) -> AsyncMongoClient:
    return AsyncMongoClient(url, tz_aware=True, appname=APP, event_listeners=[listener] if listener else [])


@pytest_asyncio.fixture
async def watched(mongo_server_url) -> AsyncIterator[tuple[ReadModels, Commands]]:
    """Read models on the shared server through a client whose commands are recorded."""
    listener = Commands()
    client = await _client(mongo_server_url, listener)
    db = client[f"test_{uuid.uuid4().hex[:12]}"]
    yield ReadModels(db), listener
    await client.drop_database(db.name)
    await client.close()


async def _batch(event_log: EventLog) -> list[StoredEvent]:
    """Every sample event, published; the job's deadline ahead (the sample's is long past, and
    its documents would be within reach of the server's TTL sweep)."""
    ahead = datetime.now(UTC) + timedelta(minutes=30)
    for event in every_event():
        await event_log.publish(event.model_copy(update={"deadline": ahead}) if event.type == "job.requested"
                                else event)
    return [stored async for stored in event_log.read(subjects.ALL)]


def _fold(event_log: EventLog, models: ReadModels) -> Fold:
    return Fold(event_log, models, parked=ParkedEvents(event_log))


def _batches(fold: Fold, written: str) -> float:
    return fold.metrics.registry.get_sample_value("promptgen_projector_batches_total", {"written": written}) or 0


async def _documents(models: ReadModels) -> dict[str, list[dict[str, Any]]]:
    return {name: [d async for d in models.collection(name).find({}).sort("_id", 1)] for name in READ_MODELS}


async def test_a_batch_and_its_checkpoint_are_one_transaction(event_log, watched, models):
    target, commands = watched
    batch = await _batch(event_log)
    fold = _fold(event_log, target)
    await fold.apply(batch)

    writes = commands.writes()
    assert [name for name, _ in writes].count("commitTransaction") == 1
    assert writes[-1][0] == "commitTransaction"
    transactions = {(body["lsid"]["id"], body["txnNumber"]) for _, body in writes}
    assert len(transactions) == 1, "every write of the batch, the checkpoint's too, in the one transaction"
    assert all(body.get("autocommit") is False for _, body in writes)
    checkpoints = [body for name, body in writes if name == "update" and body["update"] == "projector_state"]
    assert len(checkpoints) == 1
    assert _batches(fold, "transaction") == 1 and _batches(fold, "separately") == 0
    assert await target.checkpoint() == batch[-1].seq

    # the same documents as the batch stored write by write (no transactions)
    one_by_one = ReadModels(models.db, transactions=Transactions(available=False))
    plain = _fold(event_log, one_by_one)
    await plain.apply(batch)
    assert _batches(plain, "separately") == 1
    assert await _documents(target) == await _documents(one_by_one)
    assert all(await _documents(target)), "every read model has documents"


async def test_an_aborted_transaction_stores_nothing_not_even_the_checkpoint(models):
    await models.templates.insert_one({"_id": "t-old", "_seq": 1})
    await models.save_checkpoint(1)
    stored = await models.write_batch([
        CollectionWrites(PERSONAS, [{"_id": "p-new", "_seq": 5}], []),
        CollectionWrites(TEMPLATES, [{"_id": "t-new", "_seq": 6}, {"_id": "t-old", "_seq": 6}], []),
    ], seq=6)
    assert stored is False  # a duplicate: the caller writes the batch one by one instead
    assert await models.personas.find_one({"_id": "p-new"}) is None
    assert await models.templates.find_one({"_id": "t-new"}) is None
    assert await models.checkpoint() == 1
    assert models.transactions.available is True  # a duplicate says nothing about the server


async def test_a_replayed_batch_meets_its_documents_and_lands_write_by_write(event_log, models):
    batch = await _batch(event_log)
    first = _fold(event_log, models)
    await first.apply(batch)
    expected = await _documents(models)
    # a predecessor stored the batch, then its checkpoint was lost (say, a restore of that one collection)
    await models.state.delete_one({"_id": CHECKPOINT_ID})

    again = _fold(event_log, models)
    await again.apply(batch)
    assert _batches(again, "transaction") == 0 and _batches(again, "separately") == 1
    assert await models.checkpoint() == batch[-1].seq
    assert await _documents(models) == expected

    # the next batch, with nothing already there, is one transaction again
    await event_log.publish(TemplateCreated(template_id="t2", scenario_document="doc", template_data=TEMPLATE))
    next_batch = [s async for s in event_log.read(subjects.ALL, batch[-1].seq + 1)]
    await again.apply(next_batch)
    assert _batches(again, "transaction") == 1
    assert await models.templates.find_one({"_id": "t2"}) is not None
    assert await models.checkpoint() == next_batch[-1].seq


async def test_the_in_memory_read_models_have_no_transactions_and_store_the_batch_all_the_same(event_log):
    models = memory_read_models()
    batch = await _batch(event_log)
    fold = _fold(event_log, models)
    await fold.apply(batch)
    assert models.transactions.available is False
    assert _batches(fold, "separately") == 1
    assert await models.checkpoint() == batch[-1].seq
    assert await models.jobs.find_one({"_id": "j1"}) is not None
    assert len(await models.job_persona_docs("j1")) == 2


async def _fail_next(client: AsyncMongoClient, command: str, code: int, labels: list[str]) -> None:
    await client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                                "data": {"failCommands": [command], "errorCode": code, "errorLabels": labels,
                                         "appName": APP}})


async def test_a_transient_transaction_error_is_retried_in_a_transaction(event_log, test_commands_mongo_url):
    commands = Commands()
    client = await _client(test_commands_mongo_url, commands)
    try:
        models = ReadModels(client[f"test_{uuid.uuid4().hex[:12]}"])
        batch = await _batch(event_log)
        await _fail_next(client, "insert", 112, ["TransientTransactionError"])  # a write conflict
        fold = _fold(event_log, models)
        await fold.apply(batch)
        assert _batches(fold, "transaction") == 1 and _batches(fold, "separately") == 0
        tried = {body["txnNumber"] for _, body in commands.writes()}
        assert len(tried) == 2, "the failed transaction, then the one retried"
        assert [name for name, _ in commands.writes()].count("commitTransaction") == 1
        assert await models.checkpoint() == batch[-1].seq
        assert len(await models.job_persona_docs("j1")) == 2
    finally:
        await client.close()


async def test_a_server_refusing_transactions_is_written_to_write_by_write_from_then_on(event_log,
                                                                                      test_commands_mongo_url):
    client = await _client(test_commands_mongo_url)
    try:
        models = ReadModels(client[f"test_{uuid.uuid4().hex[:12]}"])
        batch = await _batch(event_log)
        # what a standalone mongod answers a transaction: IllegalOperation
        await _fail_next(client, "insert", 20, [])
        fold = _fold(event_log, models)
        await fold.apply(batch[:4])
        assert models.transactions.available is False
        await fold.apply(batch[4:])
        assert _batches(fold, "transaction") == 0 and _batches(fold, "separately") == 2
        assert await models.checkpoint() == batch[-1].seq
        assert {d["_id"] for d in await models.job_persona_docs("j1")} == {"j1:p1", "j1:p2"}
        assert (await models.jobs.find_one({"_id": "j1"}))["status"] != "processing"
    finally:
        await client.close()



@pytest.mark.parametrize("setting,written", [("off", "separately"), ("auto", "transaction")])
async def test_the_setting_decides_whether_a_batch_is_one_transaction(event_log, settings, setting, written):
    models, close = open_read_models(settings.model_copy(update={"mongo_transactions": setting}))
    try:
        batch = await _batch(event_log)
        fold = _fold(event_log, models)
        await fold.apply(batch)
        other = {"transaction": "separately", "separately": "transaction"}[written]
        assert _batches(fold, written) == 1 and _batches(fold, other) == 0
        assert await models.checkpoint() == batch[-1].seq
        assert len(await models.job_persona_docs("j1")) == 2
    finally:
        await models.db.client.drop_database(models.db.name)
        await close()


ABANDONING = """
import asyncio, sys
from pymongo import AsyncMongoClient
from services.adapters.read_models import ReadModels, _moved_to, CHECKPOINT_ID

async def main():
    models = ReadModels(AsyncMongoClient(sys.argv[1], tz_aware=True)[sys.argv[2]])
    assert await models._has_transactions()
    session = await models._session()
    await session.start_transaction()
    await models.state.update_one({"_id": CHECKPOINT_ID}, _moved_to(1, None), upsert=True, session=session)
    print("inside", flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


async def test_a_transaction_a_killed_projector_left_open_is_ended_by_the_next(event_log, mongo_server_url):
    """SIGKILL mid-transaction: the server keeps the transaction (and its hold on the checkpoint)
    for its lifetime, 60 s. The next projector ends it by the session its predecessor recorded."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    child = subprocess.Popen([sys.executable, "-c", ABANDONING, mongo_server_url, name],  # noqa: ASYNC220
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            while (line := await asyncio.to_thread(child.stdout.readline)) and line.strip() != "inside":
                pass
        assert line.strip() == "inside", "the child never opened its transaction"
    finally:
        child.kill()
        child.wait()
    client = await _client(mongo_server_url)
    try:
        models = ReadModels(client[name])
        batch = await _batch(event_log)
        fold = _fold(event_log, models)
        async with asyncio.timeout(20):  # well within the abandoned transaction's lifetime
            await fold.apply(batch)
        assert _batches(fold, "transaction") == 1
        assert await models.checkpoint() == batch[-1].seq
    finally:
        await client.drop_database(name)
        await client.close()
