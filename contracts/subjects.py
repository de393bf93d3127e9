"""NATS subjects of the event log.

Everything lives under one prefix so one stream (``PROMPTGEN``) holds the whole
log, and job-scoped subjects let ``promptgen.job.<job_id>.>`` replay one job's
history in order.
"""

from __future__ import annotations

import re

PREFIX = "promptgen"
ALL = f"{PREFIX}.>"

# Tokens become part of subjects: keep them to characters NATS never treats specially.
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_TOKEN = re.compile(TOKEN_PATTERN)


def is_valid_token(value: str) -> bool:
    return bool(_TOKEN.fullmatch(value))  # match() would let a trailing newline through "$"


def template_created(template_id: str) -> str:
    return f"{PREFIX}.template.{template_id}.created"


def persona_created(persona_id: str) -> str:
    return f"{PREFIX}.persona.{persona_id}.created"


def interaction_created(interaction_id: str) -> str:
    return f"{PREFIX}.interaction.{interaction_id}.created"


def job(job_id: str, event: str) -> str:
    """``promptgen.job.<job_id>.<event>``: requested, cancel_requested, cancelled, completed, expired."""
    return f"{PREFIX}.job.{job_id}.{event}"


JOB_ENDS = ("completed", "cancelled", "expired")


def job_ends(job_id: str) -> list[str]:
    """The subjects of the events that end a job (exactly one of them is ever stored)."""
    return [job(job_id, end) for end in JOB_ENDS]


def job_persona(job_id: str, persona_id: str, event: str) -> str:
    """``promptgen.job.<job_id>.persona.<persona_id>.<event>``: requested, progress, completed, failed."""
    return f"{PREFIX}.job.{job_id}.persona.{persona_id}.{event}"


def is_work_item(subject: str) -> bool:
    """Whether ``subject`` is a work item's (``promptgen.job.<job_id>.persona.<persona_id>.requested``)."""
    parts = subject.split(".")
    return len(parts) == 6 and parts[0] == PREFIX and parts[1] == "job" and parts[3] == "persona" \
        and parts[5] == "requested"


def job_id_of(subject: str) -> str | None:
    """The job a ``promptgen.job.<job_id>.…`` subject belongs to, or None for another subject."""
    parts = subject.split(".", 3)
    return parts[2] if len(parts) > 3 and parts[0] == PREFIX and parts[1] == "job" else None


def ended_job(subject: str) -> str | None:
    """The job whose end ``subject`` is (``promptgen.job.<job_id>.completed``, ``.cancelled`` or
    ``.expired``), or None."""
    parts = subject.split(".")
    return parts[2] if len(parts) == 4 and parts[0] == PREFIX and parts[1] == "job" and parts[3] in JOB_ENDS \
        else None


def prompted_persona(subject: str) -> str | None:
    """The persona whose prompt ``subject`` brings (``promptgen.job.<job_id>.persona.<persona_id>.completed``),
    or None."""
    parts = subject.split(".")
    return parts[4] if len(parts) == 6 and parts[0] == PREFIX and parts[1] == "job" and parts[3] == "persona" \
        and parts[5] == "completed" else None


def job_history(job_id: str) -> str:
    """Every event of one job, in log order."""
    return f"{PREFIX}.job.{job_id}.>"


ALL_JOBS = f"{PREFIX}.job.>"
# Core NATS, never stored: the projector's checkpoint (an ASCII decimal sequence) each time it
# stores one, so a gateway waiting to read its own writes back wakes then instead of polling.
PROJECTOR_CHECKPOINT = "promptgen_control.projector.checkpoint"
# Core NATS: a running projector answers here who it is (host, pid, since), and a projector
# starting asks first, so that a second one refuses to run beside it (one writer of MongoDB).
PROJECTOR_PRESENCE = "promptgen_control.projector.presence"
JOBS_REQUESTED = f"{PREFIX}.job.*.requested"
WORK_ITEMS = f"{PREFIX}.job.*.persona.*.requested"
JOBS_CANCEL_REQUESTED = f"{PREFIX}.job.*.cancel_requested"
