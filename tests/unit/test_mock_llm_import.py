"""`promptgen mock-llm` needs no test dependency: the container image runs it as the
compose file's test LLM, with the runtime dependencies alone."""

from __future__ import annotations

import subprocess
import sys


def test_the_mock_llm_imports_without_mongomock():
    code = ("import sys; sys.modules['mongomock'] = None  # as if not installed\n"
            "import services.testing.mock_llm\n"
            "print('imported')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "imported"


def test_the_doubles_are_still_reachable_from_the_package():
    from services.testing import ManualClock, MemoryEventLog, memory_read_models

    assert ManualClock and MemoryEventLog and memory_read_models
