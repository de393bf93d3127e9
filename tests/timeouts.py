"""A backstop for pytest-timeout: a test its timeout did not end is ended with its process,
saying where it hung, on stderr.

pytest-timeout's signal method raises in whatever runs when SIGALRM lands. In an asyncio
callback, or in a task other than the test's, that exception is swallowed or set on that task;
the test goes on hanging, and the one-shot alarm never fires again (nor does it cover a
teardown that hangs after it fired). The thread method ends the process at the timeout, but
reports on stdout (/dev/null in an xdist worker), and a crashed worker can leave pytest-xdist's
loadfile scheduling waiting for ever (pytest-dev/pytest-xdist#1378): so the signal method stays,
and this backstop ends the process ``timeout_backstop`` seconds later.

The report names the test and gives the stacks of every thread and of every asyncio task not
done: an asynchronous test that hangs shows its event loop waiting in ``select``, and the
tasks show what each awaits. The processes the test started are killed with it."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import threading
import traceback

import pytest


def _report(item: pytest.Item, timeout: float, after: float) -> str:
    lines = [f"\n{'+' * 30} Timeout {'+' * 30}",
             f"{item.nodeid} ran {after:g} s, past its timeout of {timeout:g} s, which did not end it: "
             "its process ends here."]
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


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, by the parent ids in ``/proc`` (none where there is no ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    # after the command's closing parenthesis: state, then the parent's id
                    parent = int(stat.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or unreadable
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_descendants() -> None:
    """The servers and services the test started (NATS, MongoDB, promptgen processes) end with its
    process: left running, they would hold their ports, memory and disk until CI's own end."""
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


BACKSTOP_SECONDS = 60.0  # after a test's timeout: the time its timeout has to end it gracefully


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("timeout_backstop", "seconds after a test's timeout at which its process ends, saying "
                  f"where it hung (default {BACKSTOP_SECONDS:g})", default=str(BACKSTOP_SECONDS))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: pytest -p no:timeout still runs
def pytest_timeout_set_timer(item: pytest.Item, settings) -> None:
    """Arm the backstop beside pytest-timeout's own timer (None: pytest-timeout's runs too)."""
    after = settings.timeout + float(item.config.getini("timeout_backstop"))

    def expire() -> None:
        try:
            capture = item.config.pluginmanager.getplugin("capturemanager")
            if capture is not None:
                capture.suspend_global_capture()  # stderr is the terminal's (or CI's) again
            report = _report(item, settings.timeout, after)
        except Exception as exc:  # noqa: BLE001
            report = f"\n{item.nodeid} ran {after:g} s, past its timeout of {settings.timeout:g} s ({exc!r})\n"
        try:
            os.write(2, report.encode(errors="replace"))
        finally:
            try:
                _kill_descendants()
            finally:
                os._exit(1)

    timer = threading.Timer(after, expire)
    timer.name = f"timeout backstop {item.nodeid}"
    timer.daemon = True
    item.stash[_BACKSTOP] = timer
    timer.start()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    if (timer := item.stash.get(_BACKSTOP, None)) is not None:
        timer.cancel()
        timer.join()


_BACKSTOP = pytest.StashKey[threading.Timer]()
