"""A capacity of the gateway: a slot per held resource, 503 with Retry-After when full."""

from __future__ import annotations

import pytest

from services.gateway.capacity import Capacity
from services.gateway.errors import ApiError


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
