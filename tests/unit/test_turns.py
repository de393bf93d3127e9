from __future__ import annotations

import asyncio

from services.gateway.turns import Turns


async def test_requests_for_one_name_take_turns_and_the_name_is_forgotten_after():
    turns = Turns()
    inside: list[str] = []
    order: list[str] = []

    async def request(name: str, tag: str) -> None:
        async with turns.of(name):
            inside.append(tag)
            assert [t for t in inside if t[0] == tag[0]] == [tag]  # alone with its name
            await asyncio.sleep(0.01)
            order.append(tag)
            inside.remove(tag)

    await asyncio.gather(request("a", "a1"), request("a", "a2"), request("b", "b1"))
    assert order.index("a1") < order.index("a2") and order.index("b1") < order.index("a2")  # b did not wait for a
    assert len(turns) == 0


async def test_a_failing_request_gives_its_turn_back():
    turns = Turns()

    async def failing() -> None:
        async with turns.of("a"):
            raise ValueError("no")

    results = await asyncio.gather(failing(), failing(), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results) and len(turns) == 0
