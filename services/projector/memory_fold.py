"""The projections applied in memory, for rebuilds: fold the log into plain documents,
then insert each document once instead of updating it once per event.

:class:`MemoryFold` folds a whole log; :class:`BatchFold` folds one batch of it on top of
read models that already hold the batches before (a rebuild's bounded memory).

Both understand exactly the operations :mod:`services.projector.projections`
emits (``$setOnInsert`` upserts, guarded ``$set``, ``$min``, equality / ``$lt`` / ``$in`` /
``$nin`` filters) and refuse anything else, so a new kind of projection cannot
silently fold differently here than in MongoDB. The rebuild test compares both.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from functools import partial
from typing import Any

from services.projector.projections import Change, is_creation


def _matches(doc: dict[str, Any], flt: dict[str, Any]) -> bool:
    for key, cond in flt.items():
        value = doc.get(key)
        if isinstance(cond, dict):
            for op, arg in cond.items():
                if op == "$lt":
                    ok = value is not None and value < arg
                elif op == "$in":
                    ok = value in arg
                elif op == "$nin":
                    ok = value not in arg
                else:
                    raise ValueError(f"memory fold does not support filter operator {op}")
                if not ok:
                    return False
        elif value != cond:
            return False
    return True


def _update(doc: dict[str, Any], update: dict[str, Any]) -> None:
    for op, fields in update.items():
        if op not in ("$set", "$min"):
            raise ValueError(f"memory fold does not support update operator {op} on an existing document")
        for key, value in fields.items():
            if "." in key:
                raise ValueError(f"memory fold does not support dotted paths ({key})")
            if op == "$set" or doc.get(key) is None or value < doc[key]:
                doc[key] = value


class MemoryFold:
    """Folds a whole log: a document it does not hold does not exist."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
        # No lambda in it: a rebuild's worker processes hand their folds back pickled.
        self._by_job: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(partial(defaultdict, list))

    def apply(self, collection: str, change: Change, seq: int = 0) -> None:
        """Apply ``change`` (of the event at ``seq``, which :class:`BatchFold` remembers)."""
        flt, update = change.filter, change.update
        if change.many:
            if set(flt) != {"job_id"}:
                raise ValueError(f"memory fold supports UpdateMany by job_id only, not {flt}")
            for each in self._by_job[collection].get(flt["job_id"], []):
                _update(each, update)
            return
        doc = self.collections[collection].get(flt["_id"])
        if doc is None:
            if is_creation(change):
                self._create(collection, flt["_id"], update["$setOnInsert"])
            return
        if set(update) == {"$setOnInsert"}:
            return
        if _matches(doc, flt):
            _update(doc, update)

    def _create(self, collection: str, _id: Any, fields: dict[str, Any]) -> dict[str, Any]:
        created = self.collections[collection][_id] = {"_id": _id, **fields}
        if "job_id" in created:
            self._by_job[collection][created["job_id"]].append(created)
        return created


class BatchFold(MemoryFold):
    """Folds one batch of the log on top of read models holding the batches before it.

    A document whose first change in the batch creates it is folded here (``collections``),
    to be inserted once with every later change of the batch in it. Changes to any other
    document go to MongoDB as they are, in log order (``residual``), before the inserts. A
    document folded here that MongoDB turns out to hold already (a creation event stored twice)
    is brought up to date by ``history``: the changes it took here, in order, as MongoDB
    operations on it alone."""

    def __init__(self) -> None:
        super().__init__()
        self.residual: dict[str, list[tuple[int, Change]]] = defaultdict(list)
        self._history: dict[str, dict[Any, list[tuple[int, Change]]]] = defaultdict(dict)
        self._pickled_history: bytes | None = None
        self._elsewhere: dict[str, set[Any]] = defaultdict(set)  # ids whose first change was not a creation

    @property
    def history(self) -> dict[str, dict[Any, list[tuple[int, Change]]]]:
        if self._pickled_history is not None:
            self._history, self._pickled_history = pickle.loads(self._pickled_history), None
        return self._history

    def __getstate__(self) -> dict[str, Any]:
        # A rebuild's worker process hands its fold back pickled. The history is read only when a
        # document cannot be stored as folded (rare), and is most of the unpickling's work (an
        # object per change): it travels as a pickle of its own, unpickled when first read.
        state = self.__dict__.copy()
        state["_history"], state["_pickled_history"] = None, pickle.dumps(self.history, pickle.HIGHEST_PROTOCOL)
        return state

    def apply(self, collection: str, change: Change, seq: int = 0) -> None:
        if change.many:
            super().apply(collection, change, seq)
            held = self._by_job[collection].get(change.filter["job_id"], [])
            for doc in held:
                self.history[collection][doc["_id"]].append((seq, Change({**change.filter, "_id": doc["_id"]},
                                                                         change.update)))
            # The documents held here took it; MongoDB's documents of the job take it there.
            flt = {**change.filter, "_id": {"$nin": [d["_id"] for d in held]}} if held else change.filter
            self.residual[collection].append((seq, Change(flt, change.update, many=True)))
            return
        _id = change.filter["_id"]
        if _id in self.collections[collection]:
            self.history[collection][_id].append((seq, change))
            super().apply(collection, change, seq)
        elif _id not in self._elsewhere[collection] and is_creation(change):
            self._create(collection, _id, change.update["$setOnInsert"])
            self.history[collection][_id] = [(seq, change)]
        else:
            self._elsewhere[collection].add(_id)
            self.residual[collection].append((seq, change))

    def replay(self, collection: str, ids: list[Any]) -> list[tuple[int, Change]]:
        """The changes the documents ``ids`` took here, for MongoDB to apply to its copies."""
        return [entry for _id in ids for entry in self.history[collection][_id]]
