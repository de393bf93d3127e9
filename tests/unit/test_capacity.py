"""A capacity of the gateway: a slot per held resource, 503 with Retry-After when full."""

from __future__ import annotations

import pytest

from services.gateway.capacity import Capacities, Capacity, tenant_share
from services.gateway.errors import ApiError
from services.runtime.settings import Settings


def test_a_full_capacity_is_a_503_saying_when_to_come_back():
    streams = Capacity("SSE streams", 1, retry_after=5)
    slot = streams.take()
    with pytest.raises(ApiError) as busy:
        streams.take()
    assert busy.value.status == 503 and busy.value.body.code == "gateway_busy"
    assert busy.value.headers == {"Retry-After": "5"} and "SSE streams" in busy.value.body.detail
    slot.release()
    slot.release()  # given back once, however many times it is released
    assert streams.in_use == 0
    streams.take()


async def test_a_held_slot_is_given_back_whatever_happens():
    reads = Capacity("event-history reads", 1, retry_after=1)
    with pytest.raises(RuntimeError):
        async with reads.hold():
            raise RuntimeError("the read failed")
    async with reads.hold():
        assert reads.in_use == 1
    assert reads.in_use == 0


def test_a_tenant_past_its_share_gets_a_429_and_others_are_still_served():
    streams = Capacity("SSE streams", 3, retry_after=5, per_tenant=2)
    held = [streams.take("acme"), streams.take("acme")]
    with pytest.raises(ApiError) as refused:
        streams.take("acme")
    assert refused.value.status == 429 and refused.value.body.code == "gateway_share_exceeded"
    assert refused.value.body.field == "gateway_share" and refused.value.headers == {"Retry-After": "5"}
    other = streams.take("globex")
    with pytest.raises(ApiError) as busy:  # the gateway is full: 503 for a tenant within its share
        streams.take("initech")
    assert busy.value.status == 503
    held.pop().release()
    streams.take("acme")
    other.release()
    assert streams.by_tenant == {"acme": 2}


@pytest.mark.parametrize(("limit", "share", "expected"), [(10_000, 0.25, 2500), (3, 0.25, 1), (32, 1.0, None)])
def test_a_share_is_at_least_one_slot_and_all_of_it_is_no_bound(limit, share, expected):
    assert tenant_share(limit, share) == expected


def test_without_tenants_no_share_applies():
    settings = Settings(tenant_gateway_share=0.25, max_sse_streams=8)
    assert Capacities.from_settings(settings).sse_streams.per_tenant is None
    secured = Capacities.from_settings(settings, tenants=True)
    assert (secured.sse_streams.per_tenant, secured.v1_waits.per_tenant, secured.history_reads.per_tenant) == (2, 25, 8)
