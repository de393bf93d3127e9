"""`promptgen keys` and the gateway's modes: keys stored hashed, listed, revoked; open only on
loopback with no keys, refusing to start otherwise."""

from __future__ import annotations

import hashlib

import pytest

from services.adapters.api_keys import BUCKET, ApiKeys, parse_scopes
from services.cli.keys import create_key, list_keys, revoke_key
from services.gateway.auth import AuthNotConfigured, open_guard
from services.testing import ManualClock


async def test_create_prints_the_key_once_and_stores_only_its_hash(service_settings, memory_log, capsys) -> None:
    assert await create_key(service_settings, "acme", parse_scopes("jobs:read,admin"), event_log=memory_log) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    (record,) = await (await ApiKeys.open(memory_log)).list()
    stored = (await (await memory_log.key_value(BUCKET)).get(record.id)).value
    assert key.encode() not in stored and hashlib.sha256(key.encode()).hexdigest().encode() in stored
    assert record.tenant == "acme" and record.scopes == ["jobs:read", "admin"]
    assert (await (await ApiKeys.open(memory_log)).verify(key)) == record


async def test_list_and_revoke(service_settings, memory_log, capsys) -> None:
    await create_key(service_settings, "acme", parse_scopes("all"), event_log=memory_log)
    key = capsys.readouterr().out.strip().splitlines()[-1]
    keys = await ApiKeys.open(memory_log)
    (record,) = await keys.list()
    assert await list_keys(service_settings, event_log=memory_log) == 0
    listed = capsys.readouterr().out
    assert record.id in listed and key not in listed
    assert await revoke_key(service_settings, record.id, event_log=memory_log) == 0
    assert await keys.verify(key) is None and (await keys.list())[0].revoked_at is not None
    assert await revoke_key(service_settings, "0000000000000000", event_log=memory_log) == 1


def test_scopes_are_checked() -> None:
    assert parse_scopes("all") == ["jobs:read", "jobs:write", "scenarios:write", "admin"]
    with pytest.raises(ValueError, match="jobs:rread"):
        parse_scopes("jobs:rread")


async def test_a_bad_tenant_name_is_refused(service_settings, memory_log) -> None:
    assert await create_key(service_settings, "a.b", ["admin"], event_log=memory_log) == 2


async def test_open_only_on_loopback_without_keys(service_settings, memory_log) -> None:
    guard = await open_guard(service_settings, memory_log, ManualClock())
    assert not guard.enforced
    assert guard.stream_endpoint("j1", None) == "/scenario/v2/prompt-generation-status/j1"  # type: ignore[arg-type]
    for overrides in ({"auth": "required"}, {"host": "0.0.0.0"}):
        with pytest.raises(AuthNotConfigured, match="no active API key"):
            await open_guard(service_settings.model_copy(update=overrides), memory_log, ManualClock())
    await (await ApiKeys.open(memory_log)).create("acme", ["admin"])
    with pytest.raises(AuthNotConfigured, match="PROMPTGEN_STREAM_TOKEN_SECRET"):
        await open_guard(service_settings, memory_log, ManualClock())  # keys exist: auth is on, and needs it
