from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from contracts import limits, subjects
from contracts.domain import generation_mode
from contracts.events import (
    EVENT_TYPES,
    UPCASTERS,
    JobCancelRequested,
    UndecodableEvent,
    UnknownEvent,
    encode_event,
    parse_event,
)
from tests.samples import every_event, sample


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


def test_an_unknown_type_or_a_newer_version_is_unknown_not_undecodable():
    with pytest.raises(UnknownEvent) as unknown:
        parse_event(b'{"type": "persona.exploded", "job_id": "j1"}')
    assert unknown.value.type == "persona.exploded"
    newer = json.loads(encode_event(sample("template.created")))
    with pytest.raises(UnknownEvent):
        parse_event(json.dumps({**newer, "version": 2}))


def test_readers_ignore_fields_they_do_not_know_at_any_depth():
    completed = next(e for e in every_event() if e.type == "persona.completed")
    obj = json.loads(encode_event(completed))
    obj["added_by_a_newer_producer"] = 1
    obj["usage"]["cached_tokens"] = 7
    assert parse_event(json.dumps(obj)) == completed


def test_readers_take_a_free_form_value_as_stored_while_writers_check_it():
    """A free-form value past today's caps (a writer under other caps stored it) is read as is:
    its writer checked it, and the walk would cost every reader a third of its decoding."""
    created = next(e for e in every_event() if e.type == "persona.created")
    obj = json.loads(encode_event(created))
    deep: dict = {"leaf": 1}
    for _ in range(limits.MAX_DEPTH):
        deep = {"level": deep}
    obj["persona"]["detail_categories"] = deep
    assert parse_event(json.dumps(obj)).persona.detail_categories == deep
    with pytest.raises(ValidationError, match="nested deeper"):
        created.persona.model_validate({**obj["persona"]})


def test_writers_stay_strict():
    with pytest.raises(ValidationError):
        JobCancelRequested(job_id="j1", not_a_field=1)


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[]", b"{}", b'{"type": 3}', b'{"type": "job.cancel_requested"}',
                                  b'{"type": "job.cancel_requested", "job_id": "j", "version": "one"}',
                                  b'{"type": "interaction.created", "interaction_id": "i", "mode": "learn_mode", '
                                  b'"avatars": ' + b"[" * 300 + b"]" * 300 + b"}"])
def test_what_is_not_an_event_is_undecodable_with_a_short_reason(data):
    with pytest.raises(UndecodableEvent) as exc:
        parse_event(data)
    assert 0 < len(str(exc.value)) < 600


def test_an_older_version_is_upcast_before_it_is_read(monkeypatch):
    cancel = json.loads(encode_event(JobCancelRequested(job_id="j1")))
    old = {**cancel, "version": 0, "job": cancel.pop("job_id")}
    with pytest.raises(UndecodableEvent, match="no upcaster"):
        parse_event(json.dumps(old))
    monkeypatch.setitem(UPCASTERS, ("job.cancel_requested", 0), lambda o: {**o, "job_id": o["job"]})
    assert parse_event(json.dumps(old)).job_id == "j1"


def test_try_and_assess_generate_as_assess():
    assert generation_mode("try_mode") == generation_mode("assess_mode") == "assess_mode"
    assert generation_mode("learn_mode") == "learn_mode"


@pytest.mark.parametrize("token,ok", [("abc-DEF_12", True), ("a.b", False), ("a b", False), ("a*", False),
                                      ("", False), ("x" * 129, False)])
def test_ids_that_would_break_subjects_are_not_tokens(token, ok):
    assert subjects.is_valid_token(token) is ok
