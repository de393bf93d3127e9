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
    capsys.readouterr()
    assert await revoke_key(service_settings, record.id, event_log=memory_log) == 0
    assert "was revoked already, at" in " ".join(capsys.readouterr().err.split())
    assert await revoke_key(service_settings, "0000000000000000", event_log=memory_log) == 1


def test_scopes_are_checked() -> None:
    # admin reaches every tenant's parked events: a tenant's "all" does not give it
    assert parse_scopes("all") == ["jobs:read", "jobs:write", "scenarios:write"]
    assert parse_scopes("admin, all") == parse_scopes("all,admin") == ["jobs:read", "jobs:write", "scenarios:write",
                                                                       "admin"]
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


async def test_a_key_stops_working_when_it_expires_and_says_so(service_settings, memory_log, capsys) -> None:
    from datetime import UTC, datetime

    from fastapi.security import HTTPAuthorizationCredentials
    from pydantic import SecretStr

    from services.adapters.api_keys import parse_duration
    from services.gateway.errors import ApiError

    assert await create_key(service_settings, "acme", ["jobs:read"], expires_in=parse_duration("1h"),
                            event_log=memory_log) == 0
    out = capsys.readouterr()
    key = out.out.strip().splitlines()[-1]
    assert "until " in out.err
    clock = ManualClock(datetime.now(UTC))
    settings = service_settings.model_copy(update={"stream_token_secret": SecretStr("s")})
    guard = await open_guard(settings, memory_log, clock)
    bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=key)
    assert (await guard.caller(bearer, "jobs:read")).tenant == "acme"
    clock.advance(3601)
    with pytest.raises(ApiError) as refused:
        await guard.caller(bearer, "jobs:read")
    assert refused.value.status == 401 and refused.value.body.detail.startswith("The API key expired at ")
    assert await (await ApiKeys.open(memory_log)).verify(key, clock()) is None
    assert await list_keys(service_settings, event_log=memory_log) == 0
    assert "expires" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["90", "0d", "-1d", "1w", "d", "", "3651d", "99999999999d", "87601h"])
def test_a_lifetime_is_days_hours_or_minutes_up_to_ten_years(text) -> None:
    from services.adapters.api_keys import parse_duration

    with pytest.raises(ValueError, match=r"90d, 12h, 30m|at most 3650d"):
        parse_duration(text)
    assert parse_duration("90d").days == 90 and parse_duration("12h").total_seconds() == 43200


async def test_an_expired_key_is_revoked_for_good_and_keeps_auth_on(service_settings, memory_log, capsys) -> None:
    """Revoking an expired key is written (a gateway with a slower clock must not take it), and
    keys that all expired do not turn a loopback gateway open at its next start."""
    from datetime import timedelta

    keys = await ApiKeys.open(memory_log)
    record, _ = await keys.create("acme", ["jobs:read"], expires_in=timedelta(minutes=1))
    expired = record.model_copy(update={"expires_at": record.created_at})  # as if a minute went by
    revision = (await keys.kv.get(record.id)).revision
    await keys.kv.update(record.id, expired.model_dump_json().encode(), last=revision)
    with pytest.raises(AuthNotConfigured, match="PROMPTGEN_STREAM_TOKEN_SECRET"):  # auth on, not open
        await open_guard(service_settings, memory_log, ManualClock())
    assert await revoke_key(service_settings, record.id, event_log=memory_log) == 0
    assert (await keys.get(record.id)).revoked_at is not None
