"""The projections applied in memory, for rebuilds: fold the whole log into plain
documents, then insert each document once instead of updating it once per event.

It understands exactly the operations :mod:`services.projector.projections`
emits (``$setOnInsert`` upserts, guarded ``$set``, equality / ``$lt`` / ``$in`` /
``$nin`` filters) and refuses anything else, so a new kind of projection cannot
silently fold differently here than in MongoDB. The rebuild test compares both.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from services.projector.projections import Change


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
        if op != "$set":
            raise ValueError(f"memory fold does not support update operator {op} on an existing document")
        for key, value in fields.items():
            if "." in key:
                raise ValueError(f"memory fold does not support dotted paths ({key})")
            doc[key] = value


class MemoryFold:
    def __init__(self) -> None:
        self.collections: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
        self._by_job: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))

    def apply(self, collection: str, change: Change) -> None:
        docs = self.collections[collection]
        flt, update = change.filter, change.update
        if change.many:
            if set(flt) != {"job_id"}:
                raise ValueError(f"memory fold supports UpdateMany by job_id only, not {flt}")
            for each in self._by_job[collection].get(flt["job_id"], []):
                _update(each, update)
            return
        doc = docs.get(flt["_id"])
        if doc is None:
            if change.upsert and set(update) == {"$setOnInsert"} and set(flt) == {"_id"}:
                created = docs[flt["_id"]] = {"_id": flt["_id"], **update["$setOnInsert"]}
                if "job_id" in created:
                    self._by_job[collection][created["job_id"]].append(created)
            return
        if set(update) == {"$setOnInsert"}:
            return
        if _matches(doc, flt):
            _update(doc, update)
