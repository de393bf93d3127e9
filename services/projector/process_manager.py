"""When a job ends, and with what results: pure decisions over a job's read model.

The job manager (:mod:`services.projector.job_manager`) calls :func:`decide_job_end`
on a job's view folded from its events, and publishes what it returns. A job ends

* ``cancelled`` once a cancel was requested (unfinished personas: ``cancelled``),
* ``expired`` once past its deadline (unfinished personas: ``failed``/``expired``),
* else ``completed`` when every persona ended and at least one succeeded,
  ``failed`` when every persona ended and none succeeded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts.domain import (
    EXPIRED_PERSONA_ERROR,
    TERMINAL_PERSONA_STATUSES,
    JobResults,
    PersonaResult,
    TemplateData,
    TokenUsage,
    count_statuses,
)
from contracts.events import JobCancelled, JobCompleted, JobExpired, JobFinished


def results_from_job(
    job: dict[str, Any], personas: list[dict[str, Any]], *, unfinished: dict[str, Any] | None = None
) -> JobResults:
    """The specification's ``results`` object; ``unfinished`` overrides open personas."""
    results: dict[str, PersonaResult] = {}
    usage = TokenUsage()
    for p in personas:
        fields = {k: p.get(k) for k in ("status", "mode", "persona_name", "prompt_length", "error", "error_code")}
        if p["status"] not in TERMINAL_PERSONA_STATUSES:
            fields.update(unfinished or {})
        results[p["persona_id"]] = PersonaResult(**fields)
        usage = usage + TokenUsage(**p.get("usage", {}))
    counts = count_statuses(r.status for r in results.values())
    return JobResults(
        template_id=job["template_id"],
        template_data=TemplateData.model_validate(job["template_data"]),
        personas=results,
        total_personas=len(results),
        successful=counts["completed"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        usage=usage,
    )


def decide_job_end(job: dict[str, Any], personas: list[dict[str, Any]], now: datetime) -> JobFinished | None:
    if job.get("status") != "processing":
        return None
    envelope = {"job_id": job["_id"], "correlation_id": job["_id"]}
    if job.get("cancel_requested_at"):
        return JobCancelled(
            **envelope,
            results=results_from_job(job, personas,
                                     unfinished={"status": "cancelled", "error": "the job was cancelled"}),
        )
    if all(p["status"] in TERMINAL_PERSONA_STATUSES for p in personas):
        results = results_from_job(job, personas)
        status = "completed" if results.successful > 0 else "failed"
        error = None if status == "completed" else "no persona prompt could be generated"
        return JobCompleted(**envelope, status=status, results=results, error=error)
    deadline = job.get("deadline")
    if deadline is not None and deadline <= now:
        results = results_from_job(
            job, personas, unfinished={"status": "failed", "error": EXPIRED_PERSONA_ERROR, "error_code": "expired"}
        )
        return JobExpired(**envelope, results=results, error="the job passed its deadline")
    return None
