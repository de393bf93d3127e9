"""Where a rebuild keeps the read models it folds until it merges them into the live ones: a
SQLite file of BSON documents in a temporary directory on local disk, deleted at the end.
A rebuild killed before its end leaves its directory behind: the next rebuild, and a projector
as it starts, delete those no living rebuild holds (:func:`sweep_abandoned`).

Kept out of MongoDB on purpose: a rebuild that inserted its documents into collections beside
the live ones paid for every insert, and again to delete them once merged (on a server that
deletes row by row, more than the merge itself: ``bench/results/issue15-rebuildsw.md``). Here
they cost a local write, and a file deletion.

Documents are stored as MongoDB would store them (BSON, so times to the millisecond) and read
back with the live collections' codec options: a rebuilt document equals its live copy exactly
when MongoDB would hold the same. SQLite orders their ``_id`` as MongoDB does for the ids read
models use (numbers before strings, strings by their UTF-8 bytes), so the merge walks both in
one order. One thread does all SQLite work, so the fold's Python goes on beside it.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import bson
import structlog
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument

from services.projector.memory_fold import BatchFold, MemoryFold
from services.projector.projections import Change

T = TypeVar("T")
log = structlog.get_logger()

PREFIX = "promptgen-rebuild-"
LOCK_FILE = "owner.lock"  # held (flock) by the rebuild whose directory it is, for as long as it runs
UNLOCKED_GRACE_SECONDS = 3600  # a directory without a lock file is left alone this long (it may be being made)

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # MongoDB's limit on one document
IDS_PER_LOOKUP = 500  # under SQLite's smallest limit on a statement's parameters (999)
READ_CHUNK = 1000  # documents handed from the SQLite thread to the merge at a time

Refusal = tuple[int | None, str]  # what could not be stored: the sequence of the change that made it so, and why


def _key(_id: Any) -> str | int | float:
    if isinstance(_id, bool) or not isinstance(_id, str | int | float):
        raise ValueError(f"a rebuild cannot keep a document whose _id is not a string or a number: {_id!r}")
    return _id


def _claim(directory: Path) -> int:
    """Lock a new scratch directory for this process: the lock file is made and locked under
    another name, then renamed, so a sweep never finds ``owner.lock`` unlocked while the
    rebuild lives. Returns the lock's descriptor (closed once the directory is gone)."""
    making = directory / f".{LOCK_FILE}.new"
    fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: no one else can hold it
        os.rename(making, directory / LOCK_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _abandoned_lock(directory: Path) -> int | None:
    """The directory's lock, locked for this process when no living rebuild holds it (the
    kernel releases a dead process's), else None. Only a regular file that is still the
    directory's lock file counts: not a link, a FIFO or a file the rebuild deleted meanwhile."""
    lock = directory / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # none (yet, or any more), or a link: not ours to judge
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.lstat(lock).st_ino:
                return fd
    except OSError:  # held by a running rebuild (BlockingIOError), or gone
        pass
    os.close(fd)
    return None


def _ours(path: Path) -> bool:
    """A real directory (not a link) of this process's user: nothing else is swept."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def sweep_abandoned(directory: str | Path | None = None) -> list[Path]:
    """Delete the scratch directories in ``directory`` (the system's temporary directory when
    None) that no running rebuild holds: a rebuild killed before its end (SIGKILL, a crash, a
    lost machine) leaves one of about the size of the read models. A rebuild holds an
    ``flock`` on its directory's lock file while it runs (the kernel lets go of it when the
    process dies); a directory without a lock file is left alone for an hour (a rebuild may
    be making it). Only real directories of this process's user are looked at. Returns what
    was deleted."""
    parent = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(PREFIX) and _ours(p)]
    except OSError:  # no such directory (yet), or not ours to read: the rebuild says so when it makes its own
        return []
    swept: list[Path] = []
    for path in candidates:
        try:
            fd = _abandoned_lock(path)
            if fd is not None:
                try:
                    shutil.rmtree(path)
                finally:
                    os.close(fd)
            elif not (path / LOCK_FILE).exists() and time.time() - path.stat().st_mtime > UNLOCKED_GRACE_SECONDS:
                shutil.rmtree(path)
            else:
                continue  # a rebuild runs there, or may be starting
        except OSError as exc:  # gone meanwhile, or not ours to delete: the next sweep tries again
            log.warning("rebuild_scratch_not_swept", path=str(path), error=str(exc))
            continue
        log.info("rebuild_scratch_swept", path=str(path))
        swept.append(path)
    return swept


class Scratch:
    """Read models being rebuilt, by collection name. Use as ``async with Scratch() as s``."""

    def __init__(self, directory: str | Path | None = None,
                 codec_options: CodecOptions = CodecOptions(tz_aware=True)) -> None:
        self._parent = directory
        self.codec_options = codec_options
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="rebuild-scratch")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None  # the lock file's descriptor, held while the scratch exists

    @property
    def path(self) -> Path | None:
        """The SQLite file, while it exists."""
        return Path(self._tmp.name) / "read_models.sqlite" if self._tmp else None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def __aenter__(self) -> Scratch:
        await self._run(sweep_abandoned, self._parent)
        self._tmp = tempfile.TemporaryDirectory(prefix=PREFIX, dir=self._parent)
        try:
            self._lock = _claim(Path(self._tmp.name))
            await self._run(self._open)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._run(self._close)
        finally:
            self._thread.shutdown(wait=True)
            try:
                if self._tmp is not None:
                    self._tmp.cleanup()
                    self._tmp = None
            finally:  # held until the directory is gone (a sweep then has nothing to find)
                if self._lock is not None:
                    os.close(self._lock)
                    self._lock = None

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # A scratch file: a crash loses it whatever SQLite does, so no journal and no fsync.
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -32768", "temp_store = MEMORY"):
            self._db.execute(f"PRAGMA {pragma}")
        # No type on key: strings and numbers keep their own (numbers sort before text).
        self._db.execute("CREATE TABLE docs (coll TEXT NOT NULL, key NOT NULL, doc BLOB NOT NULL,"
                         " PRIMARY KEY (coll, key)) WITHOUT ROWID")

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _sql(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the scratch is not open")
        return self._db

    # -- writing -------------------------------------------------------------------------------

    async def write(self, fold: BatchFold) -> list[Refusal]:
        """Store one batch of the log, folded on top of the batches stored before it; returns the
        documents that cannot be stored (the others are)."""
        return await self._run(self._write, fold)

    async def put(self, collection: str, docs: Iterable[dict[str, Any]]) -> list[Refusal]:
        """Store ``docs`` as they are (replacing any with their ``_id``)."""
        return await self._run(self._put, collection, list(docs))

    def _write(self, fold: BatchFold) -> list[Refusal]:
        refused: list[Refusal] = []
        self._sql.execute("BEGIN")
        for name in set(fold.residual) | set(fold.collections):
            residual = fold.residual.get(name, [])
            new = fold.collections.get(name, {})
            if any(change.many for _, change in residual):
                raise ValueError(f"a rebuild cannot apply an update of many documents ({name})")
            # Changes to documents of earlier batches first, in log order, then this batch's
            # documents; one that an earlier batch holds already (a creation stored twice) takes
            # this batch's changes of it instead, as MongoDB would have. A change to a stored
            # document carries its values as MongoDB stores them (a time without an offset is
            # UTC, to the millisecond), so that they compare with the document's.
            held = MemoryFold()
            held.collections[name] = self._get(name, {c.filter["_id"] for _, c in residual} | set(new))
            changes: dict[Any, list[tuple[int, Change]]] = defaultdict(list)
            for seq, change in residual:
                change = self._as_stored(change)
                changes[change.filter["_id"]].append((seq, change))
                held.apply(name, change, seq)
            docs = held.collections[name]
            for _id, doc in new.items():
                if _id in docs:
                    for seq, change in fold.replay(name, [_id]):
                        change = self._as_stored(change)
                        changes[_id].append((seq, change))
                        held.apply(name, change, seq)
                else:
                    docs[_id] = doc  # its changes, in the fold's history, are read only if it is refused
            for doc, _ in self._store(name, docs.values()):
                _id = doc["_id"]
                taken = changes[_id] if _id in changes else fold.replay(name, [_id])
                refused += self._change_by_change(name, _id, taken)
        self._sql.execute("COMMIT")
        return refused

    def _change_by_change(self, name: str, _id: Any, changes: list[tuple[int, Change]]) -> list[Refusal]:
        """Store the document ``_id`` with each of this batch's ``changes`` that leaves it
        storable, from its stored version; the others are refused, as MongoDB refuses one
        update and applies the rest."""
        redo = MemoryFold()
        redo.collections[name] = self._get(name, {_id})
        refused: list[Refusal] = []
        for seq, change in changes:
            before = copy.deepcopy(redo.collections[name].get(_id))
            redo.apply(name, self._as_stored(change), seq)
            after = redo.collections[name].get(_id)
            if after is not None and isinstance(why := self._encoded(after), str):
                refused.append((seq, why))
                if before is None:
                    del redo.collections[name][_id]
                else:
                    redo.collections[name][_id] = before
        if (doc := redo.collections[name].get(_id)) is not None:
            self._store(name, [doc])
        return refused

    def _as_stored(self, change: Change) -> Change:
        """``change`` with its values as MongoDB stores them (as they are if BSON cannot hold them)."""
        try:
            update = bson.decode(bson.encode(change.update, codec_options=self.codec_options),
                                 codec_options=self.codec_options)
        except (InvalidDocument, OverflowError, TypeError, ValueError):
            return change
        return Change(change.filter, update, upsert=change.upsert, many=change.many)

    def _encoded(self, doc: dict[str, Any]) -> bytes | str:
        """``doc`` as BSON, or why MongoDB could not hold it."""
        try:
            data = bson.encode(doc, codec_options=self.codec_options)
        except (InvalidDocument, OverflowError, TypeError, ValueError) as exc:
            return f"not storable as BSON: {exc}"
        if len(data) > MAX_DOCUMENT_BYTES:
            return f"document of {len(data)} bytes is larger than MongoDB's limit of {MAX_DOCUMENT_BYTES}"
        return data

    def _put(self, collection: str, docs: list[dict[str, Any]]) -> list[Refusal]:
        self._sql.execute("BEGIN")
        refused = [(doc.get("_seq"), why) for doc, why in self._store(collection, docs)]
        self._sql.execute("COMMIT")
        return refused

    def _store(self, collection: str, docs: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Store ``docs``; returns those MongoDB could not hold, with why (not stored)."""
        rows, refused = [], []
        for doc in docs:
            data = self._encoded(doc)
            if isinstance(data, str):
                refused.append((doc, data))
            else:
                rows.append((collection, _key(doc["_id"]), data))
        self._sql.executemany("INSERT OR REPLACE INTO docs (coll, key, doc) VALUES (?, ?, ?)", rows)
        return refused

    def _get(self, collection: str, ids: set[Any]) -> dict[Any, dict[str, Any]]:
        keys, found = [_key(i) for i in ids], {}
        for i in range(0, len(keys), IDS_PER_LOOKUP):
            chunk = keys[i:i + IDS_PER_LOOKUP]
            query = f"SELECT doc FROM docs WHERE coll = ? AND key IN ({','.join('?' * len(chunk))})"
            for (data,) in self._sql.execute(query, (collection, *chunk)):
                doc = bson.decode(data, codec_options=self.codec_options)
                found[doc["_id"]] = doc
        return found

    # -- reading -------------------------------------------------------------------------------

    async def count(self, collection: str) -> int:
        return await self._run(lambda: self._sql.execute("SELECT count(*) FROM docs WHERE coll = ?",
                                                         (collection,)).fetchone()[0])

    async def documents(self, collection: str) -> AsyncIterator[dict[str, Any]]:
        """Every document of ``collection``, in ``_id`` order."""
        after: tuple[Any, ...] = ()
        while True:
            rows = await self._run(self._page, collection, after)
            for _, data in rows:
                yield bson.decode(data, codec_options=self.codec_options)
            if len(rows) < READ_CHUNK:
                return
            after = (rows[-1][0],)

    def _page(self, collection: str, after: tuple[Any, ...]) -> list[tuple[Any, bytes]]:
        where = "coll = ? AND key > ?" if after else "coll = ?"
        query = f"SELECT key, doc FROM docs WHERE {where} ORDER BY key LIMIT {READ_CHUNK}"
        return self._sql.execute(query, (collection, *after)).fetchall()
