"""A test past its timeout: where it hung, on stderr, then its process ends (pytest-timeout's
thread method, which reports on stdout: an xdist worker's stdout is /dev/null, so a hung test
in ``make test`` was reported as a crashed worker and nothing more).

The report names the test and gives the stacks of every thread and of every asyncio task
not done: an asynchronous test that hangs shows its event loop waiting in ``select``, and
the tasks show what each awaits."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
import traceback

import pytest


def _report(item: pytest.Item, timeout: float) -> str:
    lines = [f"\n{'+' * 30} Timeout {'+' * 30}",
             f"{item.nodeid} ran past its timeout of {timeout:g} s; its process ends here."]
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident != threading.get_ident():
            lines.append(f"--- thread {names.get(ident, ident)}")
            lines.append("".join(traceback.format_stack(frame)).rstrip())
    try:
        tasks = [task for task in list(asyncio.tasks._all_tasks) if not task.done()]  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - a report made while the process dies: say what failed
        tasks, lines = [], [*lines, f"(the asyncio tasks could not be listed: {exc!r})"]
    for task in tasks:
        stack = io.StringIO()
        task.print_stack(file=stack)
        lines.append(f"--- task {task.get_name()}: {stack.getvalue().rstrip()}")
    lines.append("+" * 69)
    return "\n".join(lines) + "\n"


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    if settings.method != "thread":
        return None  # pytest-timeout's own

    def expire() -> None:
        try:
            capture = item.config.pluginmanager.getplugin("capturemanager")
            if capture is not None:
                capture.suspend_global_capture(item)  # stderr is the terminal's (or CI's) again
            report = _report(item, settings.timeout)
        except Exception as exc:  # noqa: BLE001
            report = f"\n{item.nodeid} ran past its timeout of {settings.timeout:g} s ({exc!r})\n"
        finally:
            try:
                os.write(2, report.encode(errors="replace"))
            finally:
                os._exit(1)

    timer = threading.Timer(settings.timeout, expire)
    timer.name = f"timeout {item.nodeid}"
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # what pytest-timeout's cancel hook calls
    timer.start()
    return True
