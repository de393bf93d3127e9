"""Who a key is: its tenant and scopes, so a client (the web UI's sign-in) can check a key and
say what it may do before any page needs it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from contracts.api import Identity
from services.adapters.api_keys import SCOPES
from services.gateway.auth import Caller, any_key

router = APIRouter(prefix="/auth", tags=["operations"])


@router.get("/whoami", response_model=Identity)
async def whoami(request: Request, caller: Annotated[Caller, Depends(any_key)]) -> Identity:
    """The tenant and scopes of the key in `Authorization` (any valid key: no scope needed, and not
    counted against the tenant's requests per minute). With auth off: the default tenant, every scope."""
    return Identity(auth=request.app.state.gateway.guard.enforced, tenant=caller.tenant, key_id=caller.key_id,
                    scopes=[s for s in SCOPES if s in caller.scopes])
