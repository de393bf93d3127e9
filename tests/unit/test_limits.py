"""The caps on values from outside: what passes can be stored, what cannot is named."""

from __future__ import annotations

import functools
import json

import bson
import pytest
from pydantic import ValidationError

from contracts import limits
from contracts.api import (
    AnalyzeScenarioRequest,
    AvatarInteractionCreate,
    GenerateFinalPromptsRequest,
    GeneratePersonasRequest,
)
from contracts.domain import PersonaDraft
from contracts.limits import NotStorable, check_free_form
from contracts.subjects import TOKEN_PATTERN


def _nested(depth: int) -> list:
    return functools.reduce(lambda inner, _: [inner], range(depth - 1), [1])


def _refusal(value) -> tuple[str, str]:
    with pytest.raises(NotStorable) as refused:
        check_free_form(value)
    return refused.value.where, str(refused.value)


@pytest.mark.parametrize("value,where,words", [
    (_nested(limits.MAX_DEPTH + 1), ".".join(["0"] * limits.MAX_DEPTH), "nested deeper"),
    (_nested(220), ".".join(["0"] * limits.MAX_DEPTH), "nested deeper"),
    ([{"a\x00b": 1}], "0.a\\x00b", "NUL"),
    ({"ok": {"$inc": 1}}, "ok.$inc", "start with '$'"),
    ({"a.b": 1}, '["a.b"]', "'.'"),  # the key, in brackets: not a path of two
    ({"": 1}, '[""]', "empty"),
    ({"k" * 129: 1}, "k" * 40 + "…", "at most 128"),
    ({"\ud800": 1}, "\\ud800", "lone surrogate"),
    ([1, ["x\udfff"]], "1.0", "lone surrogate"),
    ([2**53], "0", "numbers must be between"),
    ([-(2**53)], "0", "numbers must be between"),
    ([float("nan")], "0", "numbers must be between"),
    ([float("inf")], "0", "numbers must be between"),
    (list(range(limits.MAX_ITEMS + 1)), "", "at most 1000 items"),
    ({str(i): i for i in range(limits.MAX_KEYS + 1)}, "", "at most 200 keys"),
    (["s" * (limits.MAX_STRING_LENGTH + 1)], "0", "at most 10000 characters"),
    ([["s" * limits.MAX_STRING_LENGTH] * 30], "", "bytes as stored"),
    ([(1, 2)], "0", "unsupported value of type tuple"),
])
def test_what_cannot_be_stored_is_refused_naming_where(value, where, words):
    found, message = _refusal(value)
    assert found == where and words in message


def test_what_passes_is_storable_by_mongodb_within_the_byte_budget():
    biggest = [["s" * limits.MAX_STRING_LENGTH] * 25]  # just under the budget
    deepest = _nested(limits.MAX_DEPTH)
    keys = {"a$": 1, "é😀 x": 1, "k" * limits.MAX_KEY_LENGTH: [None, True, 2**53 - 1, -1.5, "\x00"]}
    for value in (biggest, deepest, keys, [], {}):
        check_free_form(value)
        assert len(bson.encode({"v": value})) <= limits.MAX_FREE_FORM_BYTES + 64


def test_models_apply_the_caps_and_name_the_field():
    with pytest.raises(ValidationError) as refused:
        AvatarInteractionCreate(mode="learn_mode", avatars=[{"ok": 1}], languages=[{"a.b": 1}])
    [error] = refused.value.errors()
    assert error["loc"] == ("languages",) and error["ctx"]["error"].where == '0["a.b"]'
    with pytest.raises(ValidationError):
        PersonaDraft(name="A", age=30, role="r", archetype="x", conversation_rules={"$where": "1"})
    with pytest.raises(ValidationError):
        AnalyzeScenarioRequest(scenario_document="lone \ud800")
    with pytest.raises(ValidationError):
        GenerateFinalPromptsRequest(template_id="t", persona_ids=["p.1"], mode_mapping={})
    with pytest.raises(ValidationError):
        GenerateFinalPromptsRequest(template_id="t", persona_ids=["p1"], mode_mapping={"p\n": "try_mode"})


def test_the_json_schema_states_the_caps_the_validator_applies():
    schema = AvatarInteractionCreate.model_json_schema()
    avatars = schema["properties"]["avatars"]
    assert avatars["maxItems"] == limits.MAX_ITEMS
    deepest = schema["$defs"][f"FreeFormDepth{limits.MAX_DEPTH - 1}"]
    assert deepest["maxProperties"] == limits.MAX_KEYS and deepest["maxLength"] == limits.MAX_STRING_LENGTH
    assert deepest["propertyNames"] == {"minLength": 1, "maxLength": limits.MAX_KEY_LENGTH,
                                        "pattern": limits.KEY_PATTERN}
    assert deepest["maximum"] == limits.MAX_SAFE_NUMBER and "patternProperties" not in json.dumps(schema)
    # one level fewer per container: the innermost holds scalars only
    assert set(schema["$defs"]["FreeFormScalar"]["type"]) == {"null", "boolean", "number", "string"}
    mapping = GenerateFinalPromptsRequest.model_json_schema()["properties"]["mode_mapping"]
    assert mapping["propertyNames"]["pattern"] == TOKEN_PATTERN and "patternProperties" not in mapping


@pytest.mark.parametrize("prompt", ["", "  \n", "\u00a0\u2003", "\u200b", "\ufeff\u2060\u00ad", "\x00\x85"])
def test_an_interaction_outside_learn_mode_with_a_blank_prompt_and_no_persona_is_refused(prompt):
    """A prompt of spaces, or of characters that do not show (no-break and em spaces, a zero-width
    space, a byte order mark, a soft hyphen, controls), is none."""
    with pytest.raises(ValueError, match="try_mode needs a persona_id"):
        AvatarInteractionCreate(mode="try_mode", system_prompt=prompt)
    assert AvatarInteractionCreate(mode="try_mode", persona_id="p1", system_prompt="").persona_id == "p1"


@pytest.mark.parametrize("text", ["\u00a0\u2003", "\u200b", "\ufeff\u2060", "\u3000\x00", "\u2800\u0600",
                                  "\U000e0041\U000e0042", "\U000110bd\U0001d173"])
def test_what_shows_nothing_is_blank_to_python_the_request_models_and_their_json_schema(text):
    """One definition for Python and pydantic's Rust patterns (and the ECMAScript of the OpenAPI
    document's system_prompt): a scenario document or persona type that shows nothing is refused.
    (Tags and format characters beyond U+FFFF, which a model reads though no screen shows them, are
    the server's to refuse: the pattern cannot name them in every dialect.)"""
    assert limits.is_blank(text) and not limits.is_blank(text + "a")
    assert AvatarInteractionCreate.model_json_schema()["anyOf"][2]["properties"]["system_prompt"]["pattern"] == \
        limits.NOT_BLANK
    with pytest.raises(ValueError, match="try_mode needs a persona_id"):
        AvatarInteractionCreate(mode="try_mode", system_prompt=text)
    for model, field in ((AnalyzeScenarioRequest, "scenario_document"), (GeneratePersonasRequest, "persona_type")):
        with pytest.raises(ValueError, match=field):
            model.model_validate({"scenario_document": text, "template_id": "t", "persona_type": text, "count": 1})


def test_text_limits_are_the_strings_own_said_in_characters_and_in_the_json_schema():
    """Written after the encodability check, they were checked on its result as on any value ("at
    most 200000 items after validation") and missing from the OpenAPI document."""
    document = AnalyzeScenarioRequest.model_json_schema()["properties"]["scenario_document"]
    assert document["pattern"] == limits.NOT_BLANK and document["maxLength"] == limits.MAX_SCENARIO_DOCUMENT_LENGTH
    with pytest.raises(ValueError, match=f"at most {limits.MAX_SYSTEM_PROMPT_LENGTH} characters"):
        AvatarInteractionCreate(mode="learn_mode", system_prompt="x" * (limits.MAX_SYSTEM_PROMPT_LENGTH + 1))
    with pytest.raises(ValueError, match="lone surrogate at position 2"):  # checked before the pattern
        AnalyzeScenarioRequest(scenario_document="ab\ud800")
