from __future__ import annotations

from datetime import UTC, datetime

from services.adapters.event_log import StoredEvent
from services.gateway.sse_messages import Position, messages_for, render, unseen
from tests.samples import every_event


def _by_type():
    return {e.type: e for e in every_event()}


def test_each_event_becomes_the_seed_message():
    e = _by_type()
    assert [m.to_json() for m in messages_for(e["job.requested"])] == ['{"type":"status_update","status":"processing"}']
    progress = messages_for(e["persona.progress"])[0]
    assert progress.type == "persona_progress" and progress.status == "processing"
    assert progress.persona_name == "Dr. Smith"
    failed = messages_for(e["persona.failed"])[0]
    assert failed.status == "failed" and failed.error == "LLM timeout" and failed.error_code == "llm_timeout"
    end = messages_for(e["job.completed"])
    assert [m.type for m in end] == ["status_update", "results"]
    assert end[1].results.total_personas == 2
    assert messages_for(e["persona.prompt_requested"]) == [] and messages_for(e["job.cancel_requested"]) == []


def test_messages_omit_empty_fields():
    json = messages_for(_by_type()["persona.completed"])[0].to_json()
    assert "error" not in json


def test_ids_name_exact_positions_and_resume_skips_what_was_seen():
    stored = StoredEvent(seq=15, time=datetime.now(UTC), subject="s", event=_by_type()["job.completed"])
    assert [i["id"] for i in render(stored)] == ["15-0", "15"]
    assert [i["id"] for i in unseen(stored.seq, render(stored), Position.parse("15-0"))] == ["15"]
    assert [i["id"] for i in unseen(stored.seq, render(stored), Position.parse("14"))] == ["15-0", "15"]


def test_a_position_has_seen_an_event_when_past_its_last_message():
    ended = StoredEvent(seq=15, time=datetime.now(UTC), subject="s", event=_by_type()["job.completed"])
    count = len(render(ended))
    for seen in ("15", "15-1", "15-7", "16", "16-0"):  # 15-1 and past: ids no gateway gives, past the end all the same
        assert Position.parse(seen).has_seen(15, count), seen
        assert unseen(15, render(ended), Position.parse(seen)) == [], seen
    for not_yet in ("15-0", "14", "14-1"):
        assert not Position.parse(not_yet).has_seen(15, count), not_yet


def test_an_end_that_cut_personas_short_says_how_each_ended_first():
    """A client that follows only ``persona_progress`` (the specification's hook) sees every
    persona end: those a cancel or the deadline stopped get theirs with the job's end."""
    cancelled = messages_for(_by_type()["job.cancelled"])
    assert [m.type for m in cancelled] == ["persona_progress", "status_update", "results"]
    assert (cancelled[0].persona_id, cancelled[0].status) == ("p2", "cancelled")
    assert cancelled[0].persona_name == cancelled[2].results.personas["p2"].persona_name
    expired = _by_type()["job.expired"].model_copy(deep=True)
    expired.results.personas["p2"] = expired.results.personas["p2"].model_copy(
        update={"error": "the job passed its deadline before this persona was generated", "error_code": "expired"})
    ended = messages_for(expired)
    assert [(m.type, getattr(m, "status", None)) for m in ended] == [
        ("persona_progress", "failed"), ("status_update", "expired"), ("results", None)]
    assert ended[0].error_code == "expired"
    completed = _by_type()["job.completed"].model_copy(deep=True)  # every persona had its own end before
    completed.results.personas["p2"] = expired.results.personas["p2"]
    assert [m.type for m in messages_for(completed)] == ["status_update", "results"]
    stored = StoredEvent(seq=9, time=datetime.now(UTC), subject="s", event=_by_type()["job.cancelled"])
    assert [i["id"] for i in render(stored)] == ["9-0", "9-1", "9"]
    assert not Position.parse("9-1").has_seen(9, len(render(stored)))  # the results are still to come


def test_last_event_id_parsing():
    assert Position.parse("12") == Position(12, None)
    assert Position.parse("12-0") == Position(12, 0)
    assert Position.parse("") is None and Position.parse("garbage") is None and Position.parse(None) is None
    # what int() would take too is no id this gateway sent: read from the start, not as a position
    for loose in ("+15", "1_5", "15--1", "15-+1", "-1", "\u0661\u0665", "\uff11\uff15", "15-", "15-0-1", "9" * 5000):
        assert Position.parse(loose) is None, loose
    assert Position.parse(" 15-1 ") == Position(15, 1)  # surrounding blanks are no part of it
