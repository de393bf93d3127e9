from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts import subjects
from contracts.domain import generation_mode
from contracts.events import EVENT_TYPES, encode_event, parse_event
from tests.samples import every_event


@pytest.mark.parametrize("event", every_event(), ids=lambda e: e.type)
def test_every_event_round_trips(event):
    again = parse_event(encode_event(event))
    assert again == event
    assert type(again) is type(event)
    assert again.subject().startswith(f"{subjects.PREFIX}.")


def test_the_samples_cover_every_event_type():
    assert {type(e) for e in every_event()} == set(EVENT_TYPES)


def test_event_types_are_stable_strings_not_import_paths():
    for event in every_event():
        assert "." in event.type and "contracts" not in event.type and event.type == event.type.lower()


def test_dedup_ids_are_deterministic_and_a_persona_ends_once():
    events = {e.type: e for e in every_event()}
    a, b = parse_event(encode_event(events["persona.completed"])), events["persona.completed"]
    assert a.dedup_id() == b.dedup_id()
    assert events["persona.completed"].dedup_id().replace("p1", "p2") == events["persona.failed"].dedup_id()
    ends = [events[t].dedup_id() for t in ("job.completed", "job.cancelled", "job.expired")]
    assert len(set(ends)) == 1


def test_job_subjects_share_one_filter():
    history = subjects.job_history("j1")
    for event in every_event():
        if getattr(event, "job_id", None) == "j1":
            assert event.subject().startswith(history[:-1])


def test_unknown_event_type_is_rejected():
    with pytest.raises(ValidationError):
        parse_event(b'{"type": "persona.exploded", "job_id": "j1"}')


def test_try_and_assess_generate_as_assess():
    assert generation_mode("try_mode") == generation_mode("assess_mode") == "assess_mode"
    assert generation_mode("learn_mode") == "learn_mode"


@pytest.mark.parametrize("token,ok", [("abc-DEF_12", True), ("a.b", False), ("a b", False), ("a*", False),
                                      ("", False), ("x" * 129, False)])
def test_ids_that_would_break_subjects_are_not_tokens(token, ok):
    assert subjects.is_valid_token(token) is ok
