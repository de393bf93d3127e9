"""GET /scenario/personas?template_id=, a page at a time, on the real MongoDB-wire server."""

from __future__ import annotations

from tests.flows import create_personas, create_template


async def test_a_templates_personas_come_a_page_at_a_time_in_creation_order(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    for count in (2, 3, 2):  # each call's personas share a creation time: the id breaks the tie
        await create_personas(client, template_id, count)
    whole = (await client.get("/scenario/personas", params={"template_id": template_id})).json()
    assert len(whole["personas"]) == 7 and whole["next_after"] is None
    single = (await client.get(f"/scenario/personas/{whole['personas'][0]['id']}")).json()
    assert whole["personas"][0] == single  # the same fields, the prompt's null ones included
    pages, after = [], None
    while True:
        params = {"template_id": template_id, "limit": 3, **({"after": after} if after else {})}
        r = await client.get("/scenario/personas", params=params)
        assert r.status_code == 200, r.text
        pages.append([p["id"] for p in r.json()["personas"]])
        after = r.json()["next_after"]
        if after is None:
            break
        assert after == pages[-1][-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == [p["id"] for p in whole["personas"]]

    other = await create_template(client, scenario_document)
    foreign = (await create_personas(client, other, 1))[0]["id"]
    for bad in ({"after": foreign}, {"after": "no-such-persona"}, {"after": "a/b"}, {"limit": 0}, {"limit": 1001}):
        r = await client.get("/scenario/personas", params={"template_id": template_id, **bad})
        assert r.status_code == 422 and r.json()["field"] == next(iter(bad)), (bad, r.text)
