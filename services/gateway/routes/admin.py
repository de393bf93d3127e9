"""Operations: the events consumers parked, re-applying them once a fix is deployed, and
discarding those that never will be."""

from __future__ import annotations

from fastapi import APIRouter, Query

from contracts.api import (
    DiscardRequest,
    DiscardResult,
    ParkedEventList,
    ParkingConsumer,
    ReapplyRequest,
    ReapplyResult,
)
from services.adapters.parked import (
    ConsumerSlow,
    NoConsumerRunning,
    ReapplyFailed,
    ReapplyRunning,
    request_reapply,
)
from services.gateway.auth import Caller, require
from services.gateway.deps import ParkedDep
from services.gateway.errors import ApiError, responses
from services.gateway.json_body import JSONBodyRoute

router = APIRouter(prefix="/admin", tags=["operations"], route_class=JSONBodyRoute,
                   dependencies=[require("admin")])


@router.get("/parked", response_model=ParkedEventList, responses=responses(422, 503))
async def list_parked(
    parked: ParkedDep,
    consumer: ParkingConsumer | None = Query(None, description="Only this consumer's"),
) -> ParkedEventList:
    """Every event a consumer could not decode or store, oldest first per consumer."""
    return ParkedEventList(parked=await parked.list(consumer))


@router.post("/parked/reapply", response_model=ReapplyResult,
             responses=responses(409, 413, 422, 502, 503, 504, described={
                 409: "The consumer is re-applying already (reapply_running)",
                 502: "The consumer failed before it had an answer (reapply_failed): its log says why",
                 503: "No process of that consumer is running",
                 504: "The consumer did not answer in time"}))
async def reapply_parked(body: ReapplyRequest, parked: ParkedDep) -> ReapplyResult:
    """Ask the running consumer to apply its parked events again (all, or ``seqs``): those
    that succeed leave the list, those that fail again stay with their new error."""
    try:
        return await request_reapply(parked.event_log, body.consumer, body.seqs)
    except NoConsumerRunning as exc:
        raise ApiError(503, "consumer_not_running", f"{exc}; start it, then try again",
                       field="consumer", headers={"Retry-After": "5"}) from exc
    except ConsumerSlow as exc:
        raise ApiError(504, "consumer_slow", str(exc), field="consumer") from exc
    except ReapplyRunning as exc:
        raise ApiError(409, "reapply_running", str(exc), field="consumer", headers={"Retry-After": "5"}) from exc
    except ReapplyFailed as exc:
        raise ApiError(502, "reapply_failed", f"{exc}; the parked list shows what is left: ask again once it "
                                              "is fixed", field="consumer") from exc


@router.post("/parked/discard", response_model=DiscardResult, responses=responses(413, 422, 503))
async def discard_parked(body: DiscardRequest, parked: ParkedDep, caller: Caller = require("admin")) -> DiscardResult:
    """Drop these parked events from the list, for good: for those no fix will make applicable.
    The events stay in the log, and each record dropped is logged (``parked_discarded``)."""
    return await parked.discard(body.consumer, body.seqs, body.reason, by=caller.key_id)
