"""Read-model snapshots for comparing a live projection with a rebuild."""

from __future__ import annotations

from services.adapters.read_models import ReadModels
from services.projector.projections import READ_MODELS


async def snapshot(models: ReadModels) -> dict[str, list[dict]]:
    return {name: [doc async for doc in models.collection(name).find({}).sort("_id", 1)] for name in READ_MODELS}
