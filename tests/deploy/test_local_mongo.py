"""The local MongoDB stand-in's entrypoint (deploy/local/mongo_entrypoint.py), run here on
SecantusDB as the container runs it, without the container: on a fresh data directory it makes
the root user and the services' user, then the server runs with authentication."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymongo
import pytest
from pymongo.errors import OperationFailure

from services.cli import embedded
from tests.servers import stop, wait_port

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "local" / "mongo_entrypoint.py"
UNAUTHORIZED, AUTHENTICATION_FAILED = 13, 18


def _entrypoint_module():
    spec = importlib.util.spec_from_file_location("mongo_entrypoint", ENTRYPOINT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def passwords(tmp_path) -> dict[str, Path]:
    files = {"root": tmp_path / "root_password", "promptgen": tmp_path / "promptgen_password"}
    files["root"].write_text("root-secret\n")
    files["promptgen"].write_text("promptgen-secret\n")
    return files


@contextmanager
def stand_in(data: Path, passwords: dict[str, Path]) -> Iterator[tuple[int, subprocess.Popen]]:
    """The container's command: the entrypoint, then secantusd-py with --auth, on 127.0.0.1."""
    port = embedded.free_port()
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MONGO_INITDB_ROOT_USERNAME": "root",
        "MONGO_INITDB_ROOT_PASSWORD_FILE": str(passwords["root"]),
        "MONGO_PROMPTGEN_PASSWORD_FILE": str(passwords["promptgen"]),
        "MONGO_SETUP_PORT": str(embedded.free_port()),
    }
    argv = [sys.executable, str(ENTRYPOINT), "secantusd-py", "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(data), "--log-level", "WARNING", "--auth"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, timeout=60, proc=proc)
        yield port, proc
    finally:
        stop(proc)


def _client(port: int, **auth: str) -> pymongo.MongoClient:
    return pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                               serverSelectionTimeoutMS=5000, **auth)


def _as_promptgen(port: int, password: str) -> pymongo.MongoClient:
    return _client(port, username="promptgen", password=password, authSource="promptgen")


def _refused(action, code: int) -> None:
    with pytest.raises(OperationFailure) as refused:
        action()
    assert refused.value.code == code, refused.value.details


def test_a_fresh_stand_in_makes_its_users_and_refuses_anyone_else(tmp_path, passwords):
    data = tmp_path / "data"
    with stand_in(data, passwords) as (port, _):
        with _client(port) as anonymous:
            _refused(lambda: anonymous.promptgen.jobs.find_one(), UNAUTHORIZED)
            _refused(lambda: anonymous.promptgen.jobs.insert_one({"x": 1}), UNAUTHORIZED)
        with _as_promptgen(port, "not-the-password") as wrong:
            _refused(lambda: wrong.promptgen.jobs.find_one(), AUTHENTICATION_FAILED)
        with _as_promptgen(port, "promptgen-secret") as service:
            service.promptgen.jobs.insert_one({"_id": "j1"})
            assert service.promptgen.jobs.find_one({"_id": "j1"}) == {"_id": "j1"}
            _refused(lambda: service.elsewhere.jobs.insert_one({"x": 1}), UNAUTHORIZED)
            _refused(lambda: service.promptgen.command("createUser", "x", pwd="y", roles=[]), UNAUTHORIZED)
        with _client(port, username="root", password="root-secret") as root:
            assert "promptgen" in root.list_database_names()
    assert (data / "promptgen-users-created").exists()


def test_a_restart_keeps_the_users_and_makes_none_and_a_set_up_cut_short_is_done_again(tmp_path, passwords):
    data = tmp_path / "data"
    with stand_in(data, passwords) as (port, _):
        with _as_promptgen(port, "promptgen-secret") as service:
            service.promptgen.jobs.insert_one({"_id": "kept"})
    with stand_in(data, passwords) as (port, proc):
        with _as_promptgen(port, "promptgen-secret") as service:
            assert service.promptgen.jobs.find_one({"_id": "kept"}) == {"_id": "kept"}
    assert proc.stderr is not None and "first start" not in proc.stderr.read()
    # a start stopped before it marked the directory: the next one makes the users again
    (data / "promptgen-users-created").unlink()
    passwords["promptgen"].write_text("a-new-secret\n")
    with stand_in(data, passwords) as (port, _):
        with _as_promptgen(port, "a-new-secret") as service:
            assert service.promptgen.jobs.find_one({"_id": "kept"}) == {"_id": "kept"}
        with _as_promptgen(port, "promptgen-secret") as old:
            _refused(lambda: old.promptgen.jobs.find_one(), AUTHENTICATION_FAILED)


def test_the_stand_in_makes_the_user_of_create_promptgen_user_js():
    script = (ROOT / "deploy" / "mongo" / "create-promptgen-user.js").read_text()
    made = re.search(r'getSiblingDB\("(\w+)"\)\.createUser\(\{\s*user: "(\w+)",\s*pwd: fs\.readFileSync\("([^"]+)"'
                     r'.*roles: \[\{ role: "(\w+)", db: "(\w+)" \}\]', script, re.S)
    assert made, "create-promptgen-user.js no longer has the shape this test reads"
    user = _entrypoint_module().PROMPTGEN_USER
    assert made.groups() == (user["db"], user["user"], user["password_file"],
                             user["roles"][0]["role"], user["roles"][0]["db"])
    assert len(user["roles"]) == 1
