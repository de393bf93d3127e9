"""What the system can store: caps on every value that comes from outside.

A request or an LLM answer becomes an event, the event a MongoDB document. A
value neither can hold (a key MongoDB refuses inside an update, a lone
surrogate that UTF-8 cannot encode, an integer BSON cannot store, a document
nesting deeper than anything needs) must be refused where it enters, naming the
field, and never reach the log: there it would stop every consumer that tries
to store it.

``FreeFormList`` and ``FreeFormObject`` are the shapes the specification leaves
open (``avatars``, ``languages``, a persona's ``detail_categories`` and
``conversation_rules``). Their JSON Schema states every cap but the total size,
which JSON Schema cannot express (it is in the description).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    RootModel,
    StringConstraints,
    ValidationInfo,
    create_model,
)
from pydantic.json_schema import JsonSchemaValue

from contracts.subjects import TOKEN_PATTERN

# Containers inside one free-form value, its own included: deeper than any avatar list or persona
# detail needs. (Each level doubles the boundary cases a schema-driven test must try.)
MAX_DEPTH = 6
MAX_ITEMS = 1000  # per list
MAX_KEYS = 200  # per object
MAX_KEY_LENGTH = 128
MAX_STRING_LENGTH = 10_000  # characters of one string inside a free-form value
MAX_FREE_FORM_BYTES = 256 * 1024  # one free-form value, as MongoDB stores it (BSON)
MAX_SCENARIO_DOCUMENT_LENGTH = 200_000  # characters
MAX_SYSTEM_PROMPT_LENGTH = 100_000  # characters of an interaction's own prompt
# Numbers a JavaScript client reads exactly, and BSON stores (as int64 or double) without loss.
MAX_SAFE_NUMBER = 2**53 - 1

# A key MongoDB (a real mongod included) stores inside an update: not empty, no NUL,
# not an operator ("$..."), no "." (a path separator).
KEY_PATTERN = r"^[^$.\x00][^.\x00]*$"

ID_DESCRIPTION = "An id: 1 to 128 letters, digits, '-' or '_' (ids become parts of NATS subjects)."


# --- plain text and ids -------------------------------------------------------------------------


def _encodable(value: Any) -> Any:
    if isinstance(value, str):  # anything else is the string type's to refuse
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"text must be valid Unicode: a lone surrogate at position {exc.start}") from None
    return value


# Before the string's own checks: a pattern cannot even be searched in a lone surrogate.
ENCODABLE = BeforeValidator(_encodable)
StoredText = Annotated[str, ENCODABLE]
"""A string that can be encoded as UTF-8 (JSON's ``"\\ud800"`` decodes to one that cannot). With
constraints, write them on the string ahead of the check, ``Annotated[str, StringConstraints(…),
ENCODABLE]``: placed after it (``Annotated[StoredText, …]``), pydantic checks them on the check's
result as on any value ("at most 1000 items after validation") and leaves them out of the JSON
Schema. (``ENCODABLE`` runs before them either way.)"""

# Some character that shows: not whitespace, a control character or an invisible format character
# (a zero-width space, a byte order mark, a soft hyphen, a direction mark, a blank braille cell).
# Written out, not as \s, whose set differs between Python, JSON Schema's ECMAScript and pydantic's
# Rust patterns; within the first 65,536 code points, which all three write alike.
NOT_BLANK = (r"[^\x00-\x20\x7f-\xa0\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f"
             r"\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000"
             r"\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb]")
# Beyond them, what shows nothing as well: format characters, and the tags and variation selectors
# (U+E0000 to U+E0FFF), which a model reads though no screen shows them. Checked by is_blank, on
# the server (the JSON Schema's pattern cannot name them in every dialect).
_UNSEEN_BEYOND = re.compile("[\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
                            "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
BLANK_MEANS = "must contain something that shows, not only whitespace or invisible characters"
_SHOWS = re.compile(NOT_BLANK)


def is_blank(text: str | None) -> bool:
    """Whether ``text`` has nothing that shows (see :data:`NOT_BLANK`)."""
    return text is None or _SHOWS.search(_UNSEEN_BEYOND.sub("", text)) is None


def _shows(value: str) -> str:
    if is_blank(value):
        raise ValueError(BLANK_MEANS)
    return value


SHOWS = AfterValidator(_shows)  # with the pattern NOT_BLANK: what it cannot say beyond U+FFFF

Id = Annotated[str, StringConstraints(pattern=TOKEN_PATTERN), Field(description=ID_DESCRIPTION)]


# --- free-form values ---------------------------------------------------------------------------


class NotStorable(ValueError):
    """A free-form value that cannot be stored; ``where`` is the place inside it (``0.name``)."""

    def __init__(self, problem: str, where: str) -> None:
        super().__init__(problem)
        self.where = where


def _refuse(where: list[str | int], problem: str) -> NotStorable:
    return NotStorable(problem, field_path(where, 40))


def field_path(parts: Iterable[str | int], limit: int) -> str:
    """A place in a request as a client reads it, each part cut at ``limit``: ``avatars.0.name``;
    a key that holds a dot, a bracket or a quote, or is empty, in brackets as a JSON string
    (``mode_mapping["a.b"]``), so that no two places read alike."""
    out = ""
    for part in parts:
        text = printable(str(part), limit)
        if part == "[key]":  # pydantic's mark of a dict's key (not its value) being the problem
            out += part
        elif isinstance(part, str) and (not part or any(c in part for c in '.[]"')):
            out += f"[{json.dumps(text, ensure_ascii=False)}]"
        else:
            out += f".{text}" if out else text
    return out


def printable(text: str, limit: int) -> str:
    """``text`` fit to quote in an error: control characters and lone surrogates escaped, cut at ``limit``."""
    shown = text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return f"keys must be strings, not {type(key).__name__}"
    if not key:
        return "keys must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"keys must be at most {MAX_KEY_LENGTH} characters"
    if "\x00" in key:
        return "keys must not contain a NUL character"
    if key.startswith("$"):
        return "keys must not start with '$'"
    if "." in key:
        return "keys must not contain '.'"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "keys must be valid Unicode (a lone surrogate)"
    return None


def _scalar_size(value: Any, where: list[str | int]) -> int:
    """The bytes BSON spends on a scalar; refuses what it cannot store."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        if not -MAX_SAFE_NUMBER <= value <= MAX_SAFE_NUMBER:  # NaN and infinities fail it too
            raise _refuse(where, f"numbers must be between -{MAX_SAFE_NUMBER} and {MAX_SAFE_NUMBER}")
        return 8
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise _refuse(where, f"strings must be at most {MAX_STRING_LENGTH} characters")
        try:
            return 5 + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise _refuse(where, "strings must be valid Unicode (a lone surrogate)") from None
    raise _refuse(where, f"unsupported value of type {type(value).__name__}")


def check_free_form(value: list[Any] | dict[str, Any]) -> None:
    """Refuse ``value`` unless MongoDB and NATS can hold it; the error names where, from the field."""
    size = 0
    pending: list[tuple[Any, list[str | int], int]] = [(value, [], 1)]  # value, where, its depth
    while pending:
        item, where, depth = pending.pop()
        if isinstance(item, list | dict):
            if depth > MAX_DEPTH:
                raise _refuse(where, f"nested deeper than {MAX_DEPTH} levels")
            size += 5
            if isinstance(item, list):
                if len(item) > MAX_ITEMS:
                    raise _refuse(where, f"lists must have at most {MAX_ITEMS} items")
                children = list(enumerate(item))
            else:
                if len(item) > MAX_KEYS:
                    raise _refuse(where, f"objects must have at most {MAX_KEYS} keys")
                children = list(item.items())
            for key, child in children:
                if isinstance(item, dict) and (problem := _key_problem(key)):
                    raise _refuse([*where, key], f"{problem}: '{printable(str(key), 40)}'")
                size += 2 + len(str(key).encode("utf-8"))  # type byte, key, NUL
                pending.append((child, [*where, key], depth + 1))
        else:
            size += _scalar_size(item, where)
        if size > MAX_FREE_FORM_BYTES:
            raise _refuse([], f"larger than {MAX_FREE_FORM_BYTES} bytes as stored")


class PatternKeys:
    """Marks a dict whose keys have a pattern. Pydantic writes the pattern as ``patternProperties``,
    which in JSON Schema lets any other key through; this writes it as ``propertyNames``, which
    refuses them, as validation does."""

    @staticmethod
    def __get_pydantic_json_schema__(core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        [(pattern, values)] = schema.pop("patternProperties").items()
        schema["propertyNames"] = {**schema.get("propertyNames", {}), "pattern": pattern}
        schema["additionalProperties"] = values
        return schema


class _OneSchema:
    """Writes a union of different JSON types as one schema with a list of types: each keyword
    (``maxLength``, ``items``, ...) applies to its own type only. Equivalent to the ``anyOf`` pydantic
    writes, and far cheaper for schema-driven test generators to explore."""

    @staticmethod
    def __get_pydantic_json_schema__(core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        merged: dict[str, Any] = {"type": []}
        for branch in handler(core_schema)["anyOf"]:
            merged["type"].append(branch.pop("type"))
            merged.update(branch)
        return merged


Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN)]


def _schema_levels() -> list[Any]:
    """The types a free-form value's JSON Schema is written from, one per nesting level left:
    ``levels[n]`` holds at most ``n`` containers. Only documentation: ``check_free_form`` validates."""
    scalars: list[Any] = [
        None, bool, Annotated[float, Field(ge=-MAX_SAFE_NUMBER, le=MAX_SAFE_NUMBER)],
        Annotated[str, StringConstraints(max_length=MAX_STRING_LENGTH)],
    ]

    def level(name: str, members: list[Any]) -> Any:  # a named model: its schema is one of the $defs
        shape: Any = Annotated[Union[tuple(members)], _OneSchema()]  # noqa: UP007 - built at run time
        base: type[RootModel[Any]] = RootModel[shape]
        return create_model(name, __base__=base)

    levels = [level("FreeFormScalar", scalars)]
    for depth in range(1, MAX_DEPTH):
        inner = levels[-1]
        levels.append(level(f"FreeFormDepth{depth}", [
            *scalars,
            Annotated[list[inner], Field(max_length=MAX_ITEMS)],  # type: ignore[valid-type]
            Annotated[dict[Key, inner], Field(max_length=MAX_KEYS), PatternKeys()],  # type: ignore[valid-type]
        ]))
    return levels


_LEVELS = _schema_levels()
_DESCRIPTION = (f"Free-form JSON: at most {MAX_DEPTH} levels deep, {MAX_ITEMS} items per list, {MAX_KEYS} keys "
                f"per object, {MAX_STRING_LENGTH} characters per string, numbers within +-{MAX_SAFE_NUMBER}, "
                f"{MAX_FREE_FORM_BYTES} bytes in all; keys MongoDB can store (not empty, no '.', no NUL, "
                "not starting with '$').")


# Validation context of a reader (:func:`contracts.events.parse_event`): a free-form value already
# in the log was checked by its writer, and a reader is tolerant (a cap may have changed since), so
# it skips the walk (a third of an event's decoding). Whatever MongoDB still refuses is parked there.
READING: dict[str, bool] = {"reading": True}


def _validator(shape: type[list[Any]] | type[dict[str, Any]], name: str) -> PlainValidator:
    def validate(value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, shape):
            raise ValueError(f"Input should be a valid {name}")
        if not (info.context and info.context.get("reading")):
            check_free_form(value)
        return value

    inner = _LEVELS[-1]
    if shape is list:
        documented: Any = Annotated[list[inner], Field(max_length=MAX_ITEMS)]  # type: ignore[valid-type]
    else:
        documented = Annotated[dict[Key, inner], Field(max_length=MAX_KEYS), PatternKeys()]  # type: ignore[valid-type]
    return PlainValidator(validate, json_schema_input_type=documented)


FreeFormList = Annotated[list[Any], _validator(list, "list"), Field(description=_DESCRIPTION)]
FreeFormObject = Annotated[dict[str, Any], _validator(dict, "dictionary"), Field(description=_DESCRIPTION)]
