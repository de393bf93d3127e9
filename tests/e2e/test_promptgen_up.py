"""`promptgen up` as a user runs it: real processes, readiness, clean stop, data kept across restarts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.cli.embedded import free_port
from services.cli.up import LOCK_FILE, hold_data_dir
from services.testing.deployment import UpProcess
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse


class Up(UpProcess):
    """`promptgen up`, stopped with the checks a user expects: exit 0 and no process left."""

    def descendants(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", str(self.data_dir)], capture_output=True, text=True).stdout
        pids = {int(p) for p in out.split()}
        return sorted(pids | set(self.children()))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> str:
        kids = self.descendants()
        out = super().stop(sig, timeout)
        assert self.proc is not None and self.proc.returncode == 0, out[-3000:]
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in kids if _alive(p)], "orphan processes left behind"
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def _a_job_to_its_end(base_url: str, scenario_document: str, count: int) -> tuple[dict, list[dict]]:
    """A job of ``count`` new personas through the gateway at ``base_url``, followed over SSE to
    its end, every prompt made: the job and its personas."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        template_id = await create_template(client, scenario_document)
        personas = await create_personas(client, template_id, count)
        job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
        stream = await read_sse(client, job["sse_endpoint"])
        assert stream.messages[-1].data["results"]["successful"] == count
    return job, personas


def _stopping(out: str) -> list[str]:
    """The children `up` said it was stopping, in that order."""
    return [ln.split("|")[0].strip() for ln in out.splitlines() if ln.rstrip().endswith("| stopping")]


async def test_up_runs_the_flow_stops_cleanly_and_keeps_data(tmp_path, scenario_document):
    up = Up(tmp_path / "data")
    banner = up.start()
    assert up.base_url in banner and f"nats://127.0.0.1:{up.nats_port}" in banner
    assert f"mongodb://127.0.0.1:{up.mongo_port}" in banner
    assert len(up.children()) >= 5  # nats, mongodb, projector, generator, gateway
    job, personas = await _a_job_to_its_end(up.base_url, scenario_document, 4)
    out = up.stop(signal.SIGINT)
    assert _stopping(out) == ["gateway", "generator", "projector", "mongodb", "nats"]
    said_stopped = {ln.split("|")[0].strip() for ln in out.splitlines() if '"service_stopped"' in ln}
    assert said_stopped >= {"gateway", "generator", "projector"}, out[-3000:]

    again = Up(tmp_path / "data")
    again.start()
    try:
        async with httpx.AsyncClient(base_url=again.base_url, timeout=30) as client:
            r = await client.get(f"/scenario/v2/job-status/{job['job_id']}")
            assert r.status_code == 200 and r.json()["status"] == "completed"
            persona = (await client.get(f"/scenario/personas/{personas[0]['id']}")).json()
            assert persona["system_prompt"]
            replay = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "services.cli", "replay", job["job_id"], "--json"],
                capture_output=True, text=True, timeout=60,
                env=again.env | {"NATS_URL": f"nats://127.0.0.1:{again.nats_port}"},
            )
            assert replay.returncode == 0, replay.stderr
            types = [json.loads(line)["type"] for line in replay.stdout.splitlines()]
            assert types[0] == "job.requested" and types[-1] == "job.completed"
    finally:
        again.stop()


async def test_up_runs_several_gateways_on_one_port_each_scraped_on_its_own(tmp_path, scenario_document):
    up = Up(tmp_path / "data", gateways=2)
    banner = " ".join(up.start().split())
    own = [int(p) for p in re.findall(r"gateway\d http://127\.0\.0\.1:(\d+)/metrics", banner)]
    assert len(set(own)) == 2 and up.port not in own, banner[-2000:]
    assert sorted(n for n in up.pids() if n.startswith("gateway")) == ["gateway1", "gateway2"]
    for _ in range(40):  # each a new connection, which the kernel gives to either gateway
        async with httpx.AsyncClient(base_url=up.base_url, timeout=30) as fresh:
            assert (await fresh.get("/scenario/templates/0")).status_code == 404
    answered = []
    async with httpx.AsyncClient(timeout=30) as client:
        for port in own:
            assert (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            answered.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                if line.startswith("promptgen_http_requests_total{")
                                and 'route="/scenario/templates/{template_id}"' in line))
    assert sum(answered) == 40 and all(answered), answered  # both served, each counted apart
    await _a_job_to_its_end(up.base_url, scenario_document, 2)  # through the shared port
    assert {"gateway1", "gateway2"} <= set(_stopping(up.stop(signal.SIGINT)))


# `promptgen up` whose generator first prints a 1 MB line (as a service logging a huge
# LLM error body would), then becomes the real generator.
_HUGE_LINE_THEN_EXEC = (
    "import os, sys; sys.stdout.write('x' * (1 << 20) + '\\n'); sys.stdout.flush(); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
_UP_WITH_A_NOISY_GENERATOR = f"""
import sys
import services.cli.up as up
from services.cli.main import app
real = up._service
up._service = lambda name: [sys.executable, "-c", {_HUGE_LINE_THEN_EXEC!r}, *real(name)] if name == "generator" \\
    else real(name)
app()
"""


async def test_up_survives_a_child_printing_a_huge_line_and_stops_everything(tmp_path, scenario_document):
    up = Up(tmp_path / "data", launcher=(sys.executable, "-c", _UP_WITH_A_NOISY_GENERATOR))
    banner = up.start()  # the generator's readiness comes after its 1 MB line
    assert f"… [{(1 << 20) - 16 * 1024} more bytes cut]" in banner
    await _a_job_to_its_end(up.base_url, scenario_document, 2)
    up.stop(signal.SIGINT)  # exit code 0 and no process left behind


def test_ctrl_c_while_a_service_is_starting_stops_it_all_at_once(tmp_path):
    up = Up(tmp_path / "data")
    nobody = f"nats://127.0.0.1:{free_port()}"  # the projector waits for it, and never becomes ready
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(up.port), "--data-dir", str(up.data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**up.env, "NATS_URL": nobody, "MONGO_URL": "mongodb://127.0.0.1:1/?directConnection=true"})
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # until the projector says what it waits for
        lines.append(line)
        if "projector |" in line and "nats_error" in line:
            break
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)  # not the 60 s a start may take
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("Ctrl-C did not stop `up` while a service was starting") from None
    out = "".join(lines) + out
    assert proc.returncode == 0, out[-2000:]
    assert "promptgen up stopped: told to stop while projector was starting" in out, out[-2000:]
    assert "projector | stopping" in out


def test_up_refuses_a_busy_port_with_a_clear_message(tmp_path):
    up = Up(tmp_path / "data")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", up.port))
        s.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli", "up", "--port", str(up.port), "--data-dir", str(up.data_dir),
             "--nats-port", str(up.nats_port), "--mongo-port", str(up.mongo_port)],
            capture_output=True, text=True, timeout=60, env=up.env,
        )
    assert proc.returncode == 2
    assert f"Port {up.port}" in proc.stdout and "already in use" in proc.stdout


def test_up_refuses_a_data_directory_another_up_holds(tmp_path):
    """A second `up` on the same data directory, on other ports, would start a NATS server on the
    first one's JetStream store and rewrite the NATS configuration the first one restarts its
    server from: it is refused, naming the holder, and writes nothing there."""
    up = Up(tmp_path / "data")
    held = hold_data_dir(up.data_dir)  # what the first `up` holds while it runs
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli", "up", "--port", str(up.port), "--data-dir", str(up.data_dir),
             "--nats-port", str(up.nats_port), "--mongo-port", str(up.mongo_port)],
            capture_output=True, text=True, timeout=60, env=up.env,
        )
    finally:
        held.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = " ".join(proc.stdout.split())
    assert f"The data directory {up.data_dir} is in use by another promptgen up (process {os.getpid()})" in said
    assert sorted(p.name for p in up.data_dir.iterdir()) == [LOCK_FILE]
    hold_data_dir(up.data_dir).close()  # free again once its holder ends


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_up_hands_no_secret_to_nats_and_mongodb(tmp_path):
    """The servers `up` starts get none of our secrets; each service keeps what it uses."""
    secret_file = tmp_path / "stream_token_secret"
    secret_file.write_text("stream-secret-in-a-file")
    secrets = {"OPENAI_API_KEY": "sk-test-never-in-a-server", "PROMPTGEN_STREAM_TOKEN_SECRET_FILE": str(secret_file),
               "OTHER_API_KEY": "other-key-never-in-a-server", "DB_PASSWORD_FILE": "/run/secrets/db_password"}
    up = Up(tmp_path / "data", env={**secrets, "PROMPTGEN_PROVIDER": "offline"})
    up.start()
    try:
        pids = up.pids()
        for server in ("nats", "mongodb"):
            env = _environ(pids[server])
            assert "PATH" in env, server  # it did get what a program needs
            assert not set(secrets) & set(env), f"{server} got {sorted(set(secrets) & set(env))}"
            assert not [v for v in env.values() if any(s in v for s in secrets.values())], server
            assert "NATS_URL" not in env and "MONGO_URL" not in env, server
        gateway, generator, projector = (_environ(pids[name]) for name in ("gateway", "generator", "projector"))
        assert gateway["OPENAI_API_KEY"] == secrets["OPENAI_API_KEY"]
        assert gateway["PROMPTGEN_STREAM_TOKEN_SECRET_FILE"] == str(secret_file)
        assert generator["OPENAI_API_KEY"] == secrets["OPENAI_API_KEY"]
        assert "PROMPTGEN_STREAM_TOKEN_SECRET_FILE" not in generator
        assert "OPENAI_API_KEY" not in projector and "PROMPTGEN_STREAM_TOKEN_SECRET_FILE" not in projector
        # and each holds the data directory's lock: killed at once, `up` leaves it held until they end
        for name, pid in pids.items():
            held = [Path(os.readlink(fd)) for fd in Path(f"/proc/{pid}/fd").iterdir()]
            assert [p for p in held if p.name == LOCK_FILE and up.data_dir in p.parents], name
    finally:
        up.stop()


def test_up_reads_nats_mongodb_and_its_port_from_their_file_variables(tmp_path, settings):
    """As the services do (a container secret): ``NATS_URL_FILE`` and ``MONGO_URL_FILE`` name the
    servers to use, so `up` starts neither, and ``PROMPTGEN_PORT_FILE`` the gateway's port."""
    up = Up(tmp_path / "data", env={"PROMPTGEN_PROVIDER": "offline"})
    for name, value in (("NATS_URL", settings.nats_url), ("MONGO_URL", settings.mongo_url),
                        ("PROMPTGEN_PORT", str(up.port))):
        (tmp_path / name).write_text(value + "\n")
        up.env[f"{name}_FILE"] = str(tmp_path / name)
    up.env.pop("PROMPTGEN_PORT", None)
    banner = up.start(port_option=False)
    try:
        assert settings.nats_url in banner and up.base_url in banner
        said = " ".join(banner.split())
        assert f"NATS_URL is set: using {settings.nats_url}, starting none here (--nats-port is not used)" in said
        assert "MONGO_URL is set: using" in said
        pids = up.pids()
        assert set(pids) == {"gateway", "generator", "projector"}  # no NATS or MongoDB of its own
        assert httpx.get(f"{up.base_url}/readyz", timeout=10).status_code == 200
        for service in pids.values():  # each reads the files itself: the URLs stay out of its environment
            env = _environ(service)
            assert "NATS_URL" not in env and "MONGO_URL" not in env
            assert env["MONGO_URL_FILE"] == up.env["MONGO_URL_FILE"]
    finally:
        up.stop()
    both = subprocess.run([sys.executable, "-m", "services.cli", "up", "--data-dir", str(up.data_dir)],
                          capture_output=True, text=True, timeout=60, env=up.env | {"MONGO_URL": settings.mongo_url})
    assert both.returncode == 2 and "both MONGO_URL and MONGO_URL_FILE are set" in both.stdout + both.stderr


def test_up_stops_with_the_reason_when_the_gateway_refuses_its_configuration(tmp_path):
    """Auth required and no key yet: the gateway says why and exits 2, and `up`, instead of
    restarting it forever, stops everything and exits 2 too."""
    up = Up(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "up", "--port", str(up.port), "--data-dir", str(up.data_dir),
         "--nats-port", str(up.nats_port), "--mongo-port", str(up.mongo_port)],
        capture_output=True, text=True, timeout=120, env=up.env | {"PROMPTGEN_AUTH": "required"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "configuration error" in out and "no active API key" in out and "promptgen keys create" in out
    assert "not restarted" in out and "restarting" not in out and "promptgen is up" not in out
    assert "Traceback" not in out  # the reason once, in one line: not uvicorn's trace of it first
    left = subprocess.run(["pgrep", "-f", str(up.data_dir)], capture_output=True, text=True).stdout.split()
    assert not [p for p in map(int, left) if _alive(p)], "processes left behind"


def test_a_data_directory_that_cannot_be_locked_is_said_so_not_taken_for_in_use(tmp_path, monkeypatch):
    """Only a lock held elsewhere means another `up`: a file system without locks says what it is."""
    import errno
    import fcntl

    from services.cli import up as up_module

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    import pytest

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(up_module.DataDirInUse) as refused:
        up_module.hold_data_dir(tmp_path)
    assert str(refused.value) == (f"The data directory {tmp_path} cannot be locked (No locks available): "
                                  "choose a directory on a local disk with --data-dir")
