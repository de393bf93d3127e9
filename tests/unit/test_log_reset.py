"""When a stored position cannot be followed in the log as it is (services.projector.log_reset)."""

from __future__ import annotations

from services.adapters.event_log import LogState
from services.adapters.read_models import Mark
from services.projector.log_reset import ResetWatch, reset_reason

LOG = LogState(log_id="PROMPTGEN@2026-01-15T10:30:00+00:00", first_seq=1, last_seq=40)


def test_a_position_in_this_log_up_to_its_end_is_followed():
    for seq in (0, 1, 39, 40):
        assert reset_reason(Mark(seq, LOG.log_id), LOG) is None


def test_a_position_past_the_end_of_the_log_is_not():
    reason = reset_reason(Mark(41, LOG.log_id), LOG)
    assert reason is not None and "41" in reason and "40" in reason


def test_a_position_of_another_log_is_not_even_within_its_length():
    reason = reset_reason(Mark(12, "PROMPTGEN@2025-12-01T08:00:00+00:00"), LOG)
    assert reason is not None and "created again" in reason


def test_a_position_naming_no_log_is_judged_by_its_sequence():
    assert reset_reason(Mark(0), LOG) is None  # nothing stored yet
    assert reset_reason(Mark(40), LOG) is None  # stored before logs were told apart
    assert reset_reason(Mark(41), LOG) is not None
    assert reset_reason(Mark(41, LOG.log_id), LogState(None, 1, 41)) is None  # a server that does not say


def test_the_watch_keeps_the_reason_until_the_position_holds_again():
    watch = ResetWatch("projector")
    assert watch.holds(Mark(3, LOG.log_id), LOG) and watch.reason is None
    assert not watch.holds(Mark(3, "PROMPTGEN@old"), LOG) and "PROMPTGEN@old" in watch.reason
    assert watch.holds(Mark(0, LOG.log_id), LOG) and watch.reason is None
