"""The command line as operators expect it: one version, completion, help."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from services.cli.main import app
from services.gateway.app import create_app


def test_version_comes_from_the_package_metadata_and_is_the_apis_too():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"promptgen {version('promptgen')}"
    assert create_app().version == version("promptgen")


def test_shell_completion_is_offered():
    result = CliRunner().invoke(app, ["--show-completion", "bash"], env={"SHELL": "/bin/bash"}, prog_name="promptgen")
    assert result.exit_code == 0 and "complete -o default -F _promptgen_completion promptgen" in result.output


def test_a_gateway_bound_beyond_loopback_without_its_host_names_does_not_start(monkeypatch):
    monkeypatch.delenv("PROMPTGEN_ALLOWED_HOSTS", raising=False)
    result = CliRunner().invoke(app, ["gateway", "--host", "10.255.255.1", "--port", "59999"],
                                env={"PROMPTGEN_PROVIDER": "offline"})
    assert result.exit_code == 2
    assert "bound to 10.255.255.1, but PROMPTGEN_ALLOWED_HOSTS is not set" in " ".join(result.output.split())
