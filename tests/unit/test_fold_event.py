"""A rebuild folds each event as the live fold does, and one it cannot use never fails it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.events import encode_event
from services.adapters.event_log import stored_event
from services.projector.fold_workers import fold_event
from services.projector.memory_fold import BatchFold
from tests.samples import job_requested


def test_an_event_whose_writes_cannot_be_made_is_reported_not_raised():
    """A producer's job request whose deadline is the calendar's last day decodes, but its
    retention (deadline + days) is past any date: the live fold parks it; a rebuild failed on
    it, every time, until it aged out of the log."""
    far = job_requested("far", ("p1",)).model_copy(update={"deadline": datetime(9999, 12, 31, tzinfo=UTC)})
    fold = BatchFold()
    unused = fold_event(fold, stored_event(7, None, far.subject(), encode_event(far)), timedelta(days=7))
    assert unused is not None and unused[0] == "unstorable" and "OverflowError" in unused[1]
    near = job_requested("near", ("p1",))
    assert fold_event(fold, stored_event(8, None, near.subject(), encode_event(near)), timedelta(days=7)) is None
    garbage = fold_event(fold, stored_event(9, None, "promptgen.job.x.requested", b"{not json"), timedelta(days=7))
    assert garbage is not None and garbage[0] == "undecodable"
