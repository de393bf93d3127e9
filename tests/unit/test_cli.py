"""The command line as operators expect it: one version, completion, help."""

from __future__ import annotations

import socket
from importlib.metadata import version

import pytest
import shellingham
from typer.testing import CliRunner

from services.cli.main import app
from services.gateway.app import create_app


def test_version_comes_from_the_package_metadata_and_is_the_apis_too():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"promptgen {version('promptgen')}"
    assert create_app().version == version("promptgen")


def test_shell_completion_is_offered(monkeypatch):
    # The shell is detected from the process's ancestors, which depend on how the suite was
    # started (none is a shell once the one that started it has gone): this test names it.
    monkeypatch.setattr(shellingham, "detect_shell", lambda *args, **kwargs: ("bash", "/bin/bash"))
    result = CliRunner().invoke(app, ["--show-completion"], prog_name="promptgen")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "complete -o default -F _promptgen_completion promptgen" in result.output


def test_a_gateway_bound_beyond_loopback_without_its_host_names_does_not_start(monkeypatch):
    monkeypatch.delenv("PROMPTGEN_ALLOWED_HOSTS", raising=False)
    result = CliRunner().invoke(app, ["gateway", "--host", "10.255.255.1", "--port", "59999"],
                                env={"PROMPTGEN_PROVIDER": "offline"})
    assert result.exit_code == 2
    assert "bound to 10.255.255.1, but PROMPTGEN_ALLOWED_HOSTS is not set" in " ".join(result.output.split())


def test_a_gateway_given_its_own_port_twice_refuses_instead_of_failing_to_bind_again_and_again():
    from services.gateway.bootstrap import ports_at_odds
    from services.runtime.settings import Settings

    assert ports_at_odds(Settings(port=0, gateway_http_port=0)) is None  # each a free port of its own
    assert ports_at_odds(Settings(port=9000, gateway_http_port=9001)) is None
    result = CliRunner().invoke(app, ["gateway", "--port", "59998"],
                                env={"PROMPTGEN_PROVIDER": "offline", "PROMPTGEN_GATEWAY_HTTP_PORT": "59998"})
    assert result.exit_code == 2, (result.output, result.exception)
    assert "PROMPTGEN_GATEWAY_HTTP_PORT is 59998, the gateway's own port" in " ".join(result.output.split())
    # the other services do not use these ports, and start
    assert Settings(port=59998, gateway_http_port=59998).gateway_http_port == 59998


def test_up_takes_the_gateway_port_from_promptgen_port_as_the_gateway_does(tmp_path):
    # The port is held, so `up` refuses before starting anything, naming the port it was given.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = CliRunner().invoke(app, ["up", "--data-dir", str(tmp_path), "--nats-port", str(port)],
                                    env={"PROMPTGEN_PORT": str(port), "NATS_URL": "nats://127.0.0.1:1",
                                         "MONGO_URL": "mongodb://127.0.0.1:1"})
    assert result.exit_code == 2
    assert f"Port {port} (for the gateway) is already in use" in " ".join(result.output.split())


def test_up_refuses_a_metrics_port_set_for_a_service_that_is_taken(tmp_path):
    """The projector's port held by another deployment: its process failed to bind at each of
    `up`'s restarts, eight in 30 s, and the other services never started."""
    with socket.socket() as held, socket.socket() as free:
        held.bind(("127.0.0.1", 0))
        held.listen()
        free.bind(("127.0.0.1", 0))
        port, gateway = held.getsockname()[1], free.getsockname()[1]
        free.close()
        for name, what in (("PROMPTGEN_PROJECTOR_HTTP_PORT", "the projector's"),
                           ("PROMPTGEN_GENERATOR_HTTP_PORT", "the generator's")):
            result = CliRunner().invoke(app, ["up", "--data-dir", str(tmp_path / name), "--port", str(gateway)],
                                        env={name: str(port), "NATS_URL": "nats://127.0.0.1:1",
                                             "MONGO_URL": "mongodb://127.0.0.1:1"})
            said = " ".join(result.output.split())
            assert result.exit_code == 2, said
            assert f"Port {port} (for {what} metrics and health, {name}) is already in use" in said


def test_up_reads_the_gateway_port_in_every_form_the_gateway_reads(monkeypatch, tmp_path):
    from services.cli.up import gateway_port

    for name in ("PROMPTGEN_PORT", "promptgen_port", "PROMPTGEN_PORT_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert gateway_port(None) == 9000
    monkeypatch.setenv("promptgen_port", "9123")  # a spelling the gateway accepts
    assert gateway_port(None) == 9123
    assert gateway_port(9200) == 9200  # --port wins
    (tmp_path / "port").write_text("9124\n")
    monkeypatch.setenv("PROMPTGEN_PORT_FILE", str(tmp_path / "port"))
    with pytest.raises(ValueError, match="both PROMPTGEN_PORT and PROMPTGEN_PORT_FILE are set"):
        gateway_port(None)
    monkeypatch.delenv("promptgen_port")
    assert gateway_port(None) == 9124
    (tmp_path / "port").write_text("http\n")
    with pytest.raises(ValueError, match="PROMPTGEN_PORT is 'http': a port is a number from 1 to 65535"):
        gateway_port(None)


def test_a_variable_up_sets_for_a_child_replaces_its_every_spelling_and_file_form(monkeypatch):
    from services.cli.supervisor import child_env

    monkeypatch.setenv("PROMPTGEN_GATEWAY_HTTP_PORT_FILE", "/run/secrets/port")  # with it, the child would refuse
    monkeypatch.setenv("promptgen_gateway_http_port", "9300")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    env = child_env(drop=("OPENAI_API_KEY",), PROMPTGEN_GATEWAY_HTTP_PORT="0")
    assert env["PROMPTGEN_GATEWAY_HTTP_PORT"] == "0"
    assert not {"PROMPTGEN_GATEWAY_HTTP_PORT_FILE", "promptgen_gateway_http_port", "OPENAI_API_KEY"} & env.keys()


def test_up_gives_each_child_its_own_service_name_for_traces(monkeypatch):
    from services.cli.up import own_service_name

    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop")
    assert [own_service_name(r) for r in ("gateway", "projector")] == [
        {"OTEL_SERVICE_NAME": "shop-gateway"}, {"OTEL_SERVICE_NAME": "shop-projector"}]
    monkeypatch.setenv("OTEL_SERVICE_NAME", "")
    assert own_service_name("gateway") == {}  # each names itself promptgen-<role>


def test_up_moves_a_services_metrics_port_only_when_another_holds_it(monkeypatch):
    from services.cli.up import ops_port

    monkeypatch.delenv("PROMPTGEN_PROJECTOR_HTTP_PORT", raising=False)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert ops_port("PROMPTGEN_PROJECTOR_HTTP_PORT", port) == {"PROMPTGEN_PROJECTOR_HTTP_PORT": "0"}
        monkeypatch.setenv("PROMPTGEN_PROJECTOR_HTTP_PORT", str(port))  # set on purpose: left to the service
        assert ops_port("PROMPTGEN_PROJECTOR_HTTP_PORT", port) == {}
    monkeypatch.delenv("PROMPTGEN_PROJECTOR_HTTP_PORT")
    assert ops_port("PROMPTGEN_PROJECTOR_HTTP_PORT", port) == {}  # free again: the default


def test_up_refuses_more_gateways_than_the_machine_can_use_before_starting_anything(monkeypatch, tmp_path):
    from services.cli.up import max_gateways

    monkeypatch.setattr("services.cli.up.usable_cores", lambda: 2)
    assert max_gateways() == 4
    result = CliRunner().invoke(app, ["up", "--data-dir", str(tmp_path), "--gateways", "100"],
                                env={"NATS_URL": "nats://127.0.0.1:1", "MONGO_URL": "mongodb://127.0.0.1:1"})
    assert result.exit_code == 2
    assert "--gateways 100 is more than this machine can use: at most 4, two per core (2 here)" in \
        " ".join(result.output.split())


@pytest.mark.parametrize("command", [["doctor"], ["replay", "j-1"], ["rebuild"], ["parked", "list"],
                                     ["parked", "reapply", "projector"]])
def test_every_operator_tool_says_a_configuration_error_in_one_line(command):
    """They built their settings themselves, so a bad variable was a 43-line traceback."""
    import structlog

    before = structlog.get_config()
    result = CliRunner().invoke(app, command, env={"NATS_USER": "alone"})  # a user without a password
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.output.startswith("promptgen: configuration error:") and "Traceback" not in result.output
    # said before any logging is set up (to the runner's stream, closed after it: later tests' logs)
    assert structlog.get_config() == before


def test_up_with_nats_and_mongodb_elsewhere_does_not_hold_the_data_directory(tmp_path):
    """Nothing is kept there then: a second `up` against another deployment, from the same
    directory, was refused for the first one's lock."""
    from services.cli.up import hold_data_dir

    held = hold_data_dir(tmp_path)  # another `up` on it
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            elsewhere = {"NATS_URL": "nats://127.0.0.1:1", "MONGO_URL": "mongodb://127.0.0.1:1"}
            result = CliRunner().invoke(app, ["up", "--data-dir", str(tmp_path), "--port", str(port)], env=elsewhere)
            said = " ".join(result.output.split())
            assert result.exit_code == 2 and f"Port {port} (for the gateway) is already in use" in said, said
            # with an embedded server to start, the directory is still its own
            result = CliRunner().invoke(app, ["up", "--data-dir", str(tmp_path), "--port", str(port)],
                                        env={"NATS_URL": "nats://127.0.0.1:1", "MONGO_URL": ""})
            said = " ".join(result.output.split())
            assert result.exit_code == 2 and "is in use by another promptgen up" in said, said
    finally:
        held.close()
