"""A service told to stop while it still waits for NATS at start stops at once (nats-py itself
waits for a server forever), having said which server it waited for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from services.cli.embedded import free_port


@pytest.mark.parametrize("command", [["projector"], ["generator"], ["gateway", "--port", "0"]])
def test_a_service_waiting_for_nats_stops_when_told(command):
    nats_port = free_port()  # nothing listens there
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{nats_port}", "MONGO_URL": "mongodb://127.0.0.1:1",
           "PROMPTGEN_PROVIDER": "offline", "PROMPTGEN_PROJECTOR_HTTP_PORT": "0",
           "PROMPTGEN_GENERATOR_HTTP_PORT": "0", "PROMPTGEN_LLM_PROVIDER": "offline"}  # no such setting
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", *command], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until it says which server it waits for
        line = proc.stdout.readline()
        assert line, "the service ended by itself:\n" + "".join(lines)
        lines.append(line)
        if '"nats_error"' in line:
            assert json.loads(line)["servers"] == [f"nats://127.0.0.1:{nats_port}"]
            break
    unknown = [json.loads(ln) for ln in lines if '"unknown_setting"' in ln]  # said, not ignored in silence
    assert ("PROMPTGEN_LLM_PROVIDER", "PROMPTGEN_PROVIDER") in [(u["variable"], u["did_you_mean"]) for u in unknown]
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("still waiting for NATS 10 s after SIGTERM:\n" + proc.communicate()[0][-1500:]) from None
    stopped = [json.loads(ln) for ln in out.splitlines() if '"service_stopped"' in ln]
    assert stopped and f"127.0.0.1:{nats_port}" in stopped[0]["reason"], out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert proc.returncode in (0, -signal.SIGTERM), out[-2000:]  # uvicorn raises the signal it caught again
