"""Fixtures: real NATS and MongoDB-wire servers, services in-process or as processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals

from services.adapters.event_log import EventLog
from services.adapters.read_models import ReadModels, mongo_client
from services.cli.embedded import free_port
from services.gateway.app import GatewayServer, create_app
from services.gateway.http_head import server_config
from services.generator.main import run_generator
from services.projector.main import run_projector
from services.runtime.metrics import Metrics
from services.runtime.redaction import redact
from services.runtime.settings import Settings
from services.runtime.tracing import use_exporter
from services.testing.mock_llm import MockLLM, MockLLMConfig
from tests.servers import MongoServer, NatsServer, mongo_server, stop, wait_port

pytest_plugins = ["tests.timeouts"]  # a test past its timeout says where it hung, on stderr

# Given NATS_URL, each test empties the event log's stream there: said in so many words, or not done.
ERASE_NATS = "TESTS_ERASE_NATS"


def pytest_configure(config: pytest.Config) -> None:
    """A shell set up for the tools (``NATS_URL`` of a running deployment) must not have its event
    log deleted by ``make test``: with ``NATS_URL`` set, the tests run only if told the server is
    theirs to empty."""
    url = os.environ.get("NATS_URL")
    if url and os.environ.get(ERASE_NATS) != "1":
        raise pytest.UsageError(
            f"NATS_URL is set ({redact(url)}): the tests would delete the stream {Settings().stream} there before "
            f"each test, with every event in it. To run them against that server, as a throwaway one, set "
            f"{ERASE_NATS}=1 as well; to let them start servers of their own, unset NATS_URL (and MONGO_URL).")


@pytest.fixture(scope="session")
def session_mongo(tmp_path_factory) -> MongoServer | None:
    """This worker's MongoDB-wire server for the session (None when MONGO_URL names one)."""
    with mongo_server(tmp_path_factory.mktemp("mongo")) as server:
        yield server


@pytest.fixture(scope="session")
def mongo_server_url(session_mongo) -> str:
    return session_mongo.url if session_mongo else os.environ["MONGO_URL"]


@pytest.fixture
def nats_server(tmp_path) -> NatsServer | None:
    """A fresh nats-server per test (it starts in milliseconds), unless NATS_URL is set."""
    if os.environ.get("NATS_URL"):
        yield None
        return
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def settings(nats_server, session_mongo, mongo_server_url) -> Settings:
    if session_mongo:  # one that exited says so, instead of every later test failing to connect
        session_mongo.check()
    s = Settings(
        nats_url=nats_server.url if nats_server else os.environ["NATS_URL"],
        mongo_url=mongo_server_url,
        mongo_db=f"test_{uuid.uuid4().hex[:12]}",
        provider="offline",
        projection_wait_seconds=10,
        ack_wait_seconds=5,
        sse_ping_seconds=1,
        generator_http_port=0,  # a free port each: tests run many generators side by side
        projector_http_port=0,
    )
    if nats_server is None:  # a shared server: start from an empty stream
        event_log = await EventLog.connect(s, "test-reset")
        await event_log.js.delete_stream(s.stream)
        await event_log.close()
    yield s


@pytest_asyncio.fixture
async def event_log(settings) -> AsyncIterator[EventLog]:
    log = await EventLog.connect(settings, "test")
    yield log
    await log.close()


@pytest_asyncio.fixture
async def models(settings) -> AsyncIterator[ReadModels]:
    client = mongo_client(settings)
    yield ReadModels(client[settings.mongo_db])
    await client.drop_database(settings.mongo_db)
    await client.close()


class InProcessSystem:
    """Gateway (real HTTP on loopback), projector and generator as tasks of the test's loop."""

    def __init__(self, settings: Settings, per_service: dict[str, Settings] | None = None,
                 server_options: dict[str, Any] | None = None) -> None:
        """``per_service``: settings of their own for some of "gateway", "projector", "generator"
        (each service under its own NATS user, say); the others take ``settings``.
        ``server_options``: more of uvicorn's for the gateway (``timeout_keep_alive``, say)."""
        self.settings = settings
        self.per_service = per_service or {}
        self.server_options = server_options or {}
        # Bound now and handed to uvicorn: a port only looked up and bound later can be taken
        # meanwhile (as another connection's own port), and uvicorn's failed bind exits the process.
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.stops: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.server: uvicorn.Server | None = None
        self.app: FastAPI | None = None
        self.metrics: dict[str, Metrics] = {}  # each service's own registry, as in its own process

    def start_service(self, name: str, settings: Settings | None = None) -> None:
        runner = {"projector": run_projector, "generator": run_generator}[name.rstrip("0123456789")]
        stop = asyncio.Event()
        self.stops[name] = stop
        self.metrics[name] = Metrics(service=name.rstrip("0123456789"))  # type: ignore[arg-type]
        self.tasks[name] = asyncio.create_task(runner(settings or self.settings, stop, metrics=self.metrics[name]))

    async def stop_service(self, name: str) -> None:
        self.stops[name].set()
        await asyncio.wait_for(self.tasks.pop(name), 20)

    async def start(self, *, generator: bool = True) -> InProcessSystem:
        self.start_service("projector", self.per_service.get("projector"))
        if generator:
            self.start_service("generator", self.per_service.get("generator"))
        self.metrics["gateway"] = Metrics(service="gateway")
        app = self.app = create_app(self.per_service.get("gateway", self.settings), metrics=self.metrics["gateway"])
        settings = self.per_service.get("gateway", self.settings)
        config = server_config(app, settings, host="127.0.0.1", port=self.port,
                               log_config=None, access_log=False, lifespan="on", **self.server_options)
        self.server = GatewayServer(config)  # as `promptgen gateway` serves it
        self.tasks["gateway"] = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self.tasks["gateway"].done():
                self.tasks["gateway"].result()
            await asyncio.sleep(0.01)
        return self

    async def close(self) -> None:
        """Stop every part at once; one that does not stop in time does not leave the others
        running (its error is raised once they are all stopped)."""
        if self.server:
            self.server.should_exit = True
        stopping = [self.stop_service(n) for n in self.stops if n in self.tasks]
        if "gateway" in self.tasks:
            stopping.append(asyncio.wait_for(self.tasks.pop("gateway"), 20))
        try:
            outcomes = await asyncio.gather(*stopping, return_exceptions=True)
        finally:
            self.socket.close()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


@pytest_asyncio.fixture
async def system(settings, models) -> AsyncIterator[InProcessSystem]:
    sysm = await InProcessSystem(settings).start()
    yield sysm
    await sysm.close()


@pytest_asyncio.fixture
async def client(system) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as c:
        yield c


@pytest_asyncio.fixture
async def lone_gateway(settings, models) -> AsyncIterator[tuple[InProcessSystem, httpx.AsyncClient]]:
    """The gateway alone, and a client: the test writes every event itself, a job's end
    included, and nothing else moves."""
    settings.projection_wait_seconds = 0  # no projector to wait for before `results`
    sysm = await InProcessSystem(settings).start(generator=False)
    await sysm.stop_service("projector")
    async with httpx.AsyncClient(base_url=sysm.base_url, timeout=30) as c:
        yield sysm, c
    await sysm.close()


@pytest_asyncio.fixture
async def mock_llm() -> AsyncIterator[MockLLM]:
    """The OpenAI-compatible test LLM, in this process, on a loopback port."""
    async with MockLLM(MockLLMConfig()) as llm:
        yield llm


@pytest.fixture
def llm_process():
    """Start `promptgen mock-llm` as its own process; returns a function taking its options."""
    procs: list[subprocess.Popen] = []

    def start(**options: float) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "services.cli", "mock-llm", "--port", str(port)]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port, proc=procs[-1])
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for proc in procs:
        stop(proc)


@pytest.fixture
def slow_llm_url(llm_process) -> str:
    """A test LLM answering every call after 200 ms: slow enough to kill things mid-job."""
    return llm_process(latency_ms=200)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Every span this process records during the test, whichever service made it (tracing's
    test hook); the process is untraced again afterwards."""
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = use_exporter(exporter)
    yield exporter
    provider.shutdown()
    reset_trace_globals()


TIERS = ("unit", "contract", "service", "integration", "e2e", "crash", "browser", "bench", "deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its folder's tier, so markers and folders cannot disagree."""
    tests = Path(__file__).resolve().parent
    for item in items:
        tier = Path(str(item.path)).resolve().relative_to(tests).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


SCENARIO = """# Delivering difficult news to a patient's family
A physician must tell a family that the treatment has not worked. The family is upset and
asks hard questions.

## Learning objectives
- Deliver bad news clearly and compassionately
- Respond to strong emotion with empathy
- Agree on next steps with the family

## Roles
- Physician: the learner, who delivers the news
- Family member - the patient's adult child, frightened and angry

## Success criteria
- The family understands what happened and what comes next
"""


@pytest.fixture
def scenario_document() -> str:
    return SCENARIO


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
