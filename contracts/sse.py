"""The three Server-Sent Event messages of the specification.

Each is sent as an unnamed SSE message whose ``data`` is one of these objects,
so a browser's ``EventSource.onmessage`` receives all of them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.domain import JobResults, JobStatus, Mode, PersonaStatus


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class StatusUpdate(_Message):
    type: Literal["status_update"] = "status_update"
    status: JobStatus
    error: str | None = None


class PersonaProgressMessage(_Message):
    type: Literal["persona_progress"] = "persona_progress"
    persona_id: str
    status: PersonaStatus
    persona_name: str | None = None
    mode: Mode | None = None
    error: str | None = None
    error_code: str | None = None


class ResultsMessage(_Message):
    type: Literal["results"] = "results"
    results: JobResults


SseMessage = Annotated[
    StatusUpdate | PersonaProgressMessage | ResultsMessage, Field(discriminator="type")
]
