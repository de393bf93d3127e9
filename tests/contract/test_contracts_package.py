"""contracts/ as the package `promptgen-contracts`: built as a wheel, installed into a fresh
virtual environment that holds pydantic and nothing of promptgen, and used there to read an event
(and, with nats-py beside it, to start examples/consumer.py).

The build and the install go through pip and the package registries pip is configured with
(its cache makes a second run quick); the package's version is promptgen's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from contracts.events import encode_event
from tests.samples import sample

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"

# Run by the fresh environment's interpreter, isolated (-I): neither this repository nor the
# current directory is on its path, so `contracts` can only come from the installed wheel.
READER = """
import importlib, json, pkgutil, sys
from importlib.metadata import distributions
import contracts
from contracts.events import PersonaCompleted, UnknownEvent, parse_event
modules = sorted(m.name for m in pkgutil.iter_modules(contracts.__path__))
for name in modules:
    importlib.import_module("contracts." + name)
event = parse_event(sys.stdin.buffer.read())
assert isinstance(event, PersonaCompleted), type(event)
try:
    parse_event(b'{"type": "persona.renamed", "version": 1}')
    unknown = None
except UnknownEvent as exc:
    unknown = exc.type
print(json.dumps({
    "file": contracts.__file__, "modules": modules, "unknown": unknown,
    "event": [event.type, event.job_id, event.persona_id, event.prompt],
    "installed": sorted(d.metadata["Name"].lower().replace("_", "-") for d in distributions()),
}))
"""


def _pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def test_its_version_is_promptgens_and_it_depends_on_pydantic_alone():
    root, package = _pyproject(ROOT / "pyproject.toml"), _pyproject(CONTRACTS / "pyproject.toml")
    assert package["name"] == "promptgen-contracts"
    assert package["version"] == root["version"], "contracts/pyproject.toml's version must be promptgen's"
    pydantic_pin = [d for d in root["dependencies"] if d.startswith("pydantic>")]
    assert package["dependencies"] == pydantic_pin
    assert package["requires-python"] == root["requires-python"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` on a copy of contracts/, so the build leaves nothing in the tree."""
    work = tmp_path_factory.mktemp("contracts-wheel")
    source = work / "contracts"
    shutil.copytree(CONTRACTS, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work / "dist"),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [whl] = (work / "dist").glob("promptgen_contracts-*.whl")
    return whl


def test_the_wheel_holds_the_contracts_and_names_pydantic_as_its_only_requirement(wheel):
    version = _pyproject(ROOT / "pyproject.toml")["version"]
    assert wheel.name == f"promptgen_contracts-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"promptgen_contracts-{version}.dist-info/METADATA").decode()
    sources = {f"contracts/{p.name}" for p in CONTRACTS.iterdir()
               if p.suffix in {".py", ".md", ".json", ".typed"}}
    assert sources <= names, sources - names
    assert not {n for n in names if n.startswith("services/") or n.endswith("pyproject.toml")}
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires == ["pydantic>=2.8"]


def test_a_fresh_environment_with_the_wheel_reads_an_event_and_runs_the_example_consumer(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    # This environment's pip installs into the fresh one: the wheel (and what it requires), and
    # nats-py, which the README's example consumer needs besides.
    nats_pin = next(d for d in _pyproject(ROOT / "pyproject.toml")["dependencies"] if d.startswith("nats-py"))
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                                str(wheel), nats_pin], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]

    event = sample("persona.completed")
    read = subprocess.run([str(python), "-I", "-c", READER], input=encode_event(event), capture_output=True,
                          cwd=tmp_path, timeout=60)
    assert read.returncode == 0, read.stderr.decode()[-3000:]
    seen = json.loads(read.stdout)

    assert Path(seen["file"]).is_relative_to(venv)
    assert seen["event"] == ["persona.completed", event.job_id, event.persona_id, event.prompt]
    assert seen["unknown"] == "persona.renamed"
    assert set(seen["modules"]) == {p.stem for p in CONTRACTS.glob("*.py") if p.stem != "__init__"}
    # pydantic and its own requirements, and nothing of promptgen's other dependencies.
    assert "promptgen-contracts" in seen["installed"] and "pydantic" in seen["installed"]
    assert not {"promptgen", "pymongo", "fastapi", "structlog"} & set(seen["installed"]), seen["installed"]

    example = subprocess.run([str(python), "-I", str(ROOT / "examples" / "consumer.py"), "--help"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert example.returncode == 0 and "--from-seq" in example.stdout, example.stderr[-3000:]
