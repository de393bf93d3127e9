"""The rebuild's scratch store (a SQLite file on local disk), alone."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.projector.memory_fold import BatchFold
from services.projector.projections import Change
from services.projector.scratch import MAX_DOCUMENT_BYTES, READ_CHUNK, UNLOCKED_GRACE_SECONDS, Scratch, sweep_abandoned


async def _all(scratch: Scratch, name: str) -> list[dict]:
    return [d async for d in scratch.documents(name)]


# A fold as this process made it, and as a rebuild's worker process hands it over (pickled, its
# history unpickled only when read).
HANDED_OVER = pytest.mark.parametrize("handed", [lambda fold: fold, lambda fold: pickle.loads(pickle.dumps(fold))],
                                      ids=["folded here", "from a worker process"])


async def test_documents_come_in_mongodbs_id_order_across_pages(tmp_path):
    """Numbers before strings, strings by code point (UTF-8 bytes), as MongoDB orders them."""
    ids = ["b", "a", "Z", "é", "ab", "\U0001f600", "a\x7f", 3, 1.5, -2, *(f"k{i:05d}" for i in range(READ_CHUNK + 5))]
    async with Scratch(tmp_path) as scratch:
        assert await scratch.put("c", [{"_id": i} for i in ids]) == []
        got = [d["_id"] for d in await _all(scratch, "c")]
        assert got == [-2, 1.5, 3, *sorted(i for i in ids if isinstance(i, str))]
        assert await scratch.count("c") == len(ids) and await scratch.count("other") == 0


async def test_documents_come_back_as_mongodb_would_return_them(tmp_path):
    at = datetime(2026, 11, 27, 1, 2, 3, 456789, tzinfo=UTC)
    async with Scratch(tmp_path) as scratch:
        await scratch.put("c", [{"_id": "x", "at": at, "nested": {"$odd": [1, "two"]}}])
        (doc,) = await _all(scratch, "c")
    assert doc == {"_id": "x", "at": at.replace(microsecond=456000), "nested": {"$odd": [1, "two"]}}  # BSON: ms
    assert doc["at"].tzinfo is not None


async def test_what_mongodb_cannot_hold_is_refused_by_the_sequence_that_wrote_it(tmp_path):
    async with Scratch(tmp_path) as scratch:
        refused = await scratch.put("c", [{"_id": "nul", "a\x00b": 1, "_seq": 7},
                                          {"_id": "big", "blob": "x" * MAX_DOCUMENT_BYTES, "_seq": 8},
                                          {"_id": "fine", "_seq": 9}])
        assert [seq for seq, _ in refused] == [7, 8] and "larger than" in refused[1][1]
        assert [d["_id"] for d in await _all(scratch, "c")] == ["fine"]


@HANDED_OVER
async def test_a_batch_takes_changes_to_earlier_batches_documents_and_a_creation_stored_twice(tmp_path, handed):
    def created(_id: str, seq: int, **fields) -> Change:
        return Change({"_id": _id}, {"$setOnInsert": {**fields, "_seq": seq}}, upsert=True)

    def newer(_id: str, seq: int, **fields) -> Change:
        return Change({"_id": _id, "_seq": {"$lt": seq}}, {"$set": {**fields, "_seq": seq}})

    first, second = BatchFold(), BatchFold()
    first.apply("c", created("a", 1, name="A"), 1)
    first.apply("c", newer("a", 2, prompt="one"), 2)
    second.apply("c", newer("a", 3, prompt="two"), 3)  # a document of the batch before
    second.apply("c", created("a", 4, name="stored again"), 4)  # a creation stored twice: changes nothing
    second.apply("c", newer("a", 5, prompt="three"), 5)
    second.apply("c", created("b", 6, name="B"), 6)
    async with Scratch(tmp_path) as scratch:
        assert await scratch.write(handed(first)) == []
        assert await scratch.write(handed(second)) == []
        docs = await _all(scratch, "c")
    assert docs == [{"_id": "a", "name": "A", "prompt": "three", "_seq": 5}, {"_id": "b", "name": "B", "_seq": 6}]


async def test_the_file_is_gone_after_use_and_after_a_failed_open(tmp_path, monkeypatch):
    async with Scratch(tmp_path) as scratch:
        assert scratch.path is not None and scratch.path.exists()
    assert list(tmp_path.iterdir()) == []

    def broken(self) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(Scratch, "_open", broken)
    with pytest.raises(OSError):
        async with Scratch(tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


async def test_a_change_to_a_stored_document_compares_as_mongodb_would_store_it(tmp_path):
    """A time without an offset is UTC, as MongoDB stores it: a `$min` of one against a stored
    time with an offset works across batches."""
    first, second = BatchFold(), BatchFold()
    first.apply("jobs", Change({"_id": "j"}, {"$setOnInsert": {"expire_at": datetime(2026, 12, 1, tzinfo=UTC),
                                                               "_seq": 1}}, upsert=True), 1)
    second.apply("jobs", Change({"_id": "j"}, {"$min": {"expire_at": datetime(2026, 11, 30, 12)}}), 2)  # naive
    async with Scratch(tmp_path) as scratch:
        await scratch.write(first)
        assert await scratch.write(second) == []
        (doc,) = await _all(scratch, "jobs")
    assert doc["expire_at"] == datetime(2026, 11, 30, 12, tzinfo=UTC)


@HANDED_OVER
async def test_one_change_mongodb_cannot_hold_is_refused_and_the_documents_other_changes_kept(tmp_path, handed):
    """As MongoDB refuses one update and applies the others: the change is named by its own
    sequence, and the document takes every change before and after it."""
    def newer(seq: int, **fields) -> Change:
        return Change({"_id": "j:p", "_seq": {"$lt": seq}}, {"$set": {**fields, "_seq": seq}})

    first, second = BatchFold(), BatchFold()
    first.apply("job_personas", Change({"_id": "j:p"}, {"$setOnInsert": {"status": "queued", "_seq": 1}},
                                       upsert=True), 1)
    second.apply("job_personas", newer(10, status="processing", attempts=1), 10)
    second.apply("job_personas", newer(11, attempts=2**70), 11)  # more than BSON's 64 bits
    second.apply("job_personas", newer(12, status="completed"), 12)
    third = BatchFold()  # and a document created with such a value is not created at all
    third.apply("job_personas", Change({"_id": "j:q"}, {"$setOnInsert": {"n": 2**70, "_seq": 13}}, upsert=True), 13)
    third.apply("job_personas", Change({"_id": "j:q", "_seq": {"$lt": 14}}, {"$set": {"status": "completed"}}), 14)
    async with Scratch(tmp_path) as scratch:
        await scratch.write(handed(first))
        refused = await scratch.write(handed(second))
        assert [seq for seq, _ in refused] == [11] and "BSON" in refused[0][1]
        assert [seq for seq, _ in await scratch.write(handed(third))] == [13]
        docs = await _all(scratch, "job_personas")
    assert docs == [{"_id": "j:p", "status": "completed", "attempts": 1, "_seq": 12}]


KILLED_REBUILD = """
import asyncio, sys, time
from services.projector.scratch import Scratch

async def main():
    async with Scratch(sys.argv[1]) as scratch:
        print(scratch.path, flush=True)
        time.sleep(60)

asyncio.run(main())
"""


async def test_what_a_killed_rebuild_left_goes_with_the_next_one_and_a_running_ones_stays(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", KILLED_REBUILD, str(tmp_path)],  # noqa: ASYNC220
                             stdout=subprocess.PIPE, text=True)
    try:
        left = Path(child.stdout.readline().strip())  # its SQLite file
        assert left.exists()  # noqa: ASYNC240
        async with Scratch(tmp_path) as running:
            assert left.exists()  # noqa: ASYNC240 - its rebuild still runs (holds its lock)
            child.kill()
            child.wait()
            assert sweep_abandoned(tmp_path) == [left.parent]  # killed: nothing holds it now
            assert running.path.exists() and sweep_abandoned(tmp_path) == []  # a running one is never swept
    finally:
        child.kill()
        child.wait()
    assert list(tmp_path.iterdir()) == []


def test_a_scratch_without_a_lock_is_swept_only_once_it_is_old(tmp_path):
    young, old = tmp_path / "promptgen-rebuild-young", tmp_path / "promptgen-rebuild-old"
    other = tmp_path / "not-ours"
    for path in (young, old, other):
        path.mkdir()
    past = time.time() - UNLOCKED_GRACE_SECONDS - 60
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert sweep_abandoned(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-ours", "promptgen-rebuild-young"]
    assert sweep_abandoned(tmp_path / "missing") == []


def test_a_sweep_touches_no_link_and_no_lock_that_is_not_a_plain_file(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    root = tmp_path / "scratch"
    root.mkdir()
    (root / "promptgen-rebuild-link").symlink_to(elsewhere)  # a link named like a scratch
    linked = root / "promptgen-rebuild-linked-lock"  # a scratch whose lock is a link to another file
    linked.mkdir()
    (linked / "owner.lock").symlink_to(elsewhere / "keep")
    fifo = root / "promptgen-rebuild-fifo"  # a lock that is a FIFO: opening it must not hang
    fifo.mkdir()
    os.mkfifo(fifo / "owner.lock")
    assert sweep_abandoned(root) == []
    assert (elsewhere / "keep").read_text() == "x" and linked.exists() and fifo.exists()


def test_a_lock_file_is_never_found_unlocked_while_its_rebuild_lives(tmp_path, monkeypatch):
    """The rebuild locks its lock file before it has that name: a sweep between the two finds no
    lock file (and a young directory), never an unlocked one."""
    from services.projector import scratch as scratch_module

    seen: list[list[Path]] = []
    rename = os.rename

    def sweeping_between(src, dst):
        seen.append(sweep_abandoned(tmp_path))  # another process's sweep, just before the rename
        rename(src, dst)

    monkeypatch.setattr(scratch_module.os, "rename", sweeping_between)
    directory = tmp_path / "promptgen-rebuild-new"
    directory.mkdir()
    fd = scratch_module._claim(directory)
    try:
        assert seen == [[]] and (directory / "owner.lock").exists()
        assert sweep_abandoned(tmp_path) == []  # held
    finally:
        os.close(fd)
    assert sweep_abandoned(tmp_path) == [directory]  # its process let go: abandoned
