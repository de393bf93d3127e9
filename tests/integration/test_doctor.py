"""`promptgen doctor` against real servers: what works says so, what does not says how to fix it."""

from __future__ import annotations

from pydantic import SecretStr

from services.cli.doctor import diagnose
from services.testing.mock_llm import MockLLMConfig


def _by_check(findings):
    return {f.check: f for f in findings}


async def test_a_working_embedded_setup_is_all_ok(settings, event_log, tmp_path):
    found = _by_check(await diagnose(settings, tmp_path))
    assert {"NATS", "JetStream", "replicas", "MongoDB", "LLM", "disk"} <= set(found)
    assert all(f.ok for f in found.values()), found


async def test_the_disk_of_a_data_directory_not_made_yet_is_measured_where_it_would_be(settings, event_log,
                                                                                        tmp_path):
    """Not the current directory's: an operator reads which file system, and that it is missing."""
    missing = tmp_path / "gone" / "data"
    found = _by_check(await diagnose(settings, missing))
    assert found["disk"].ok and found["disk"].detail.endswith(
        f"GiB free at {tmp_path} ({missing} does not exist: `promptgen up` makes it)"), found["disk"]


async def test_what_is_missing_is_named_with_its_fix(settings, tmp_path, mock_llm):
    broken = settings.model_copy(update={
        "nats_url": "nats://127.0.0.1:1", "mongo_url": "mongodb://127.0.0.1:2/?directConnection=true",
        "provider": "openai", "openai_base_url": mock_llm.base_url, "openai_api_key": SecretStr("wrong"),
        "stream_replicas": 3,
    })
    mock_llm.configure(MockLLMConfig(auth_fail=True))
    found = _by_check(await diagnose(broken, tmp_path))
    assert not found["NATS"].ok and "NATS_URL" in found["NATS"].fix
    assert "127.0.0.1:1: Connection refused" in found["NATS"].detail  # not "no answer within 5 s"
    assert not found["MongoDB"].ok and "MONGO_URL" in found["MongoDB"].fix
    assert not found["LLM"].ok and "llm_auth" in found["LLM"].detail and "OPENAI_API_KEY" in found["LLM"].fix


async def test_a_single_node_cannot_hold_three_replicas(settings, event_log, tmp_path):
    found = _by_check(await diagnose(settings.model_copy(update={"stream_replicas": 3}), tmp_path))
    assert not found["replicas"].ok and "PROMPTGEN_STREAM_REPLICAS" in found["replicas"].fix


async def test_read_models_of_another_log_are_named_with_the_rebuild_that_fixes_them(settings, event_log, models,
                                                                                       tmp_path):
    state = await event_log.state()
    found = _by_check(await diagnose(settings, tmp_path))
    assert found["event log"].ok and state.log_id in found["event log"].detail
    await models.save_checkpoint(0, "PROMPTGEN@2020-01-01T00:00:00+00:00")  # taken in a stream since recreated
    found = _by_check(await diagnose(settings, tmp_path))
    assert not found["event log"].ok and "projector" in found["event log"].detail
    assert "promptgen rebuild" in found["event log"].fix


async def test_read_models_of_a_log_whose_stream_is_not_there_are_a_failure(settings, event_log, models, tmp_path):
    """A stream name or NATS that is not the deployment's: doctor said all was well, and the
    services would have started a new, empty log."""
    elsewhere = settings.model_copy(update={"stream": "NOPE"})
    found = _by_check(await diagnose(elsewhere, tmp_path))
    assert found["event log"].ok and "not created yet" in found["event log"].detail  # a fresh deployment
    await models.save_checkpoint(7, (await event_log.state()).log_id)
    found = _by_check(await diagnose(elsewhere, tmp_path))
    assert not found["event log"].ok and "no stream NOPE" in found["event log"].detail
    assert "PROMPTGEN_STREAM" in found["event log"].fix


async def test_a_nats_server_older_than_2_11_is_named_with_its_upgrade(settings, event_log, tmp_path, monkeypatch):
    import services.cli.doctor as doctor

    connect = doctor._nats

    async def older(s):
        nc = await connect(s)
        nc._current_server.server_version = "2.10.22"  # what an older server says it is
        return nc

    monkeypatch.setattr(doctor, "_nats", older)
    found = _by_check(await diagnose(settings, tmp_path))
    assert not found["NATS version"].ok and "2.10.22" in found["NATS version"].detail
    assert "2.11" in found["NATS version"].detail and "upgrade nats-server" in found["NATS version"].fix
