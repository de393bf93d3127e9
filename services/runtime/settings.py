"""Configuration from environment variables (and nothing built at import time)."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# One entry of PROMPTGEN_ALLOWED_HOSTS: '*', '*.example.com', a name, an IPv4 or a bracketed IPv6 address.
_HOST_PATTERN = re.compile(r"\*|(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")


def _bracketed(host: str) -> str:
    """An IPv6 address as a Host header carries it: ``fd00::1`` -> ``[fd00::1]`` (a pod's IP may be one)."""
    try:
        return f"[{ipaddress.IPv6Address(host)}]"
    except ValueError:
        return host


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class FileVariables(PydanticBaseSettingsSource):
    """``<NAME>_FILE`` gives any setting's value as the path of a file that holds it (a
    container secret such as ``OPENAI_API_KEY_FILE=/run/secrets/openai_api_key``). The
    file's content, without surrounding whitespace, is the value; an empty file is unset."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for name in _variable_names(field):
            plain(name)  # both spellings, at odds: refused here, before pydantic picks one
            if os.environ.get(f"{name}_FILE"):
                return from_file(name), field_name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


def from_file(name: str) -> str | None:
    """The value ``<name>_FILE`` gives (None: unset, or an empty file); a ``ValueError`` naming
    the variable if ``name`` (in either spelling) is set too, or the file cannot be read."""
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    if os.environ.get(name) or os.environ.get(name.lower()):
        raise ValueError(f"both {name} and {name}_FILE are set: set one")
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{name}_FILE={path} cannot be read: {exc.strerror}") from exc
    return value or None


def plain(name: str) -> str | None:
    """``name``'s value, or its lower-case spelling's (a ``ValueError`` when both are set, to
    different values: which one a process used would depend on the order of its environment)."""
    upper, lower = os.environ.get(name, "").strip(), os.environ.get(name.lower(), "").strip()
    if upper and lower and upper != lower:
        raise ValueError(f"both {name} and {name.lower()} are set, to different values: set one")
    return upper or lower or None


def variable(name: str) -> str | None:
    """A setting's variable as the services read it: ``name`` (or its lower-case spelling), or
    the file ``<name>_FILE`` names (a ``ValueError`` when both are set)."""
    given = plain(name)
    return from_file(name) or given


def _variable_names(field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return [c for c in choices if isinstance(c, str) and c.isupper()]


# PROMPTGEN_* names that no service setting is, read by deploy/compose.yaml itself (an operator's shell
# may well hold them): not misspellings.
COMPOSE_VARIABLES = frozenset({"PROMPTGEN_IMAGE", "PROMPTGEN_SECRETS", "PROMPTGEN_OPENAI_KEY_FILE"})


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """The ``PROMPTGEN_*`` variables (in any case) that no setting reads, each with the setting's
    name closest to it, if one is close: a misspelled variable is otherwise ignored in silence."""
    known = {name for field in Settings.model_fields.values() for name in _variable_names(field)}
    known |= {f"{name}_FILE" for name in known} | COMPOSE_VARIABLES
    # compared without the prefix most share, which would make any two names alike
    by_stem = {name.removeprefix("PROMPTGEN_"): name for name in known - COMPOSE_VARIABLES}
    found = []
    for name in sorted(os.environ if environ is None else environ):
        upper = name.upper()
        if upper.startswith("PROMPTGEN_") and upper not in known:
            close = difflib.get_close_matches(upper.removeprefix("PROMPTGEN_"), by_stem, n=1)
            found.append((name, by_stem[close[0]] if close else None))
    return found


def usable_cores() -> int:
    """The cores this process may run on (a CPU set narrows it; a CPU quota does not show here)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Settings(BaseSettings):
    # An empty variable is unset (`OPENAI_BASE_URL=` is no base URL), as a compose file's
    # `${VAR:-}` leaves it when the operator sets nothing.
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, FileVariables(settings_cls), dotenv_settings, file_secret_settings

    # Infrastructure
    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias=_env("NATS_URL"))
    mongo_url: str = Field(
        "mongodb://127.0.0.1:27017/?directConnection=true", validation_alias=_env("MONGO_URL")
    )
    mongo_db: str = Field("promptgen", validation_alias=_env("MONGO_DB"))
    # A projector killed mid-transaction leaves it open on the server (until its lifetime, 60 s);
    # the next one ends it by the session it recorded (ReadModels.end_abandoned_transaction).
    mongo_transactions: Literal["auto", "off"] = Field(
        "auto", validation_alias=_env("PROMPTGEN_MONGO_TRANSACTIONS"),
        description="auto: the projector stores each batch of events and its checkpoint in one transaction "
                    "when the server takes them (a replica set or mongos); off: write by write, the checkpoint last.",
    )
    # Access to a locked NATS (deploy/nats/): one user per service, TLS with our own CA.
    # The embedded server of `promptgen up` needs none of them (it listens on loopback only).
    nats_user: str | None = Field(None, validation_alias=_env("NATS_USER"))
    nats_password: SecretStr | None = Field(None, validation_alias=_env("NATS_PASSWORD"))
    nats_tls_ca_file: str | None = Field(
        None, validation_alias=_env("NATS_TLS_CA_FILE"),
        description="The CA that signed the NATS servers' certificates (and turns TLS on).",
    )
    nats_tls_cert_file: str | None = Field(
        None, validation_alias=_env("NATS_TLS_CERT_FILE"),
        description="A client certificate, for servers that verify clients; with NATS_TLS_KEY_FILE.",
    )
    nats_tls_key_file: str | None = Field(None, validation_alias=_env("NATS_TLS_KEY_FILE"))
    stream: str = Field("PROMPTGEN", validation_alias=_env("PROMPTGEN_STREAM"))
    stream_replicas: int | None = Field(
        None, ge=1, le=5, validation_alias=_env("PROMPTGEN_STREAM_REPLICAS"),
        description="Replicas of the streams and buckets. Unset: one when creating them, and an existing "
                    "stream keeps its own (a process started without it never scales the log down).",
    )

    @property
    def replicas(self) -> int:
        """How many replicas a stream or bucket this process creates gets."""
        return self.stream_replicas or 1
    stream_max_age_days: float = Field(30, gt=0, validation_alias=_env("PROMPTGEN_EVENT_RETENTION_DAYS"))
    duplicate_window_seconds: float = Field(
        300, ge=120, validation_alias=_env("PROMPTGEN_DUPLICATE_WINDOW_SECONDS")
    )

    # Gateway
    host: str = Field("127.0.0.1", validation_alias=_env("PROMPTGEN_HOST"))
    port: int = Field(9000, ge=0, le=65535, validation_alias=_env("PROMPTGEN_PORT"))  # 0: a free one
    reuse_port: bool = Field(
        False, validation_alias=_env("PROMPTGEN_REUSE_PORT"),
        description="Bind with SO_REUSEPORT: several gateway processes on one port (each its own feed), "
                    "the kernel spreading connections between them.",
    )
    max_personas_per_job: int = Field(500, ge=1, validation_alias=_env("PROMPTGEN_MAX_PERSONAS_PER_JOB"))
    max_body_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, validation_alias=_env("PROMPTGEN_MAX_BODY_BYTES"),
        # The largest real body is a scenario document of 200,000 characters: 1.2 MB even when a
        # client's JSON encoder escapes every character as \uXXXX.
        description="A request body over this many bytes is refused (413) before it is read.",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, validation_alias=_env("PROMPTGEN_MAX_HEADER_BYTES"),
        description="A request whose line and headers are over this many bytes is refused (431) and its "
                    "connection closed.",
    )
    request_head_timeout_seconds: float = Field(
        10, gt=0, validation_alias=_env("PROMPTGEN_REQUEST_HEAD_TIMEOUT_SECONDS"),
        description="A request's line and headers must have come this long after its first byte; past it, "
                    "408 and the connection closed. A connection that sends no request is closed after "
                    "5 s, as between requests.",
    )
    request_body_timeout_seconds: float = Field(
        60, gt=0, validation_alias=_env("PROMPTGEN_REQUEST_BODY_TIMEOUT_SECONDS"),
        description="A request's body must have come whole this long after the gateway began on it; past "
                    "it, 408 and the connection closed.",
    )
    client_stall_timeout_seconds: float = Field(
        60, gt=0, validation_alias=_env("PROMPTGEN_CLIENT_STALL_TIMEOUT_SECONDS"),
        description="A client that takes nothing of what the gateway sends it for this long, its connection's "
                    "buffer full, is disconnected (an SSE stream too).",
    )
    sse_ping_seconds: float = Field(15, gt=0, validation_alias=_env("PROMPTGEN_SSE_PING_SECONDS"))
    sse_retry_ms: int = Field(
        1000, ge=0, validation_alias=_env("PROMPTGEN_SSE_RETRY_MS"),
        description="How soon a browser reconnects after a dropped stream (SSE 'retry'); 0: its default.",
    )
    projection_wait_seconds: float = Field(
        10, ge=0, validation_alias=_env("PROMPTGEN_PROJECTION_WAIT_SECONDS")
    )
    v1_timeout_seconds: float = Field(600, gt=0, validation_alias=_env("PROMPTGEN_V1_TIMEOUT_SECONDS"))
    # What one gateway holds for clients at once; past it, 503 with Retry-After.
    max_sse_streams: int = Field(10_000, ge=1, validation_alias=_env("PROMPTGEN_MAX_SSE_STREAMS"))
    max_v1_waits: int = Field(100, ge=1, validation_alias=_env("PROMPTGEN_MAX_V1_WAITS"))
    max_history_reads: int = Field(32, ge=1, validation_alias=_env("PROMPTGEN_MAX_HISTORY_READS"))
    tenant_gateway_share: float = Field(
        0.25, gt=0, le=1, validation_alias=_env("PROMPTGEN_TENANT_GATEWAY_SHARE"),
        description="With auth on, the part of each of those three caps one tenant may hold at a gateway "
                    "(at least one); past it, 429 gateway_share_exceeded. 1: no bound per tenant.",
    )

    # Browsers (README, Security)
    allowed_hosts: str | None = Field(
        None, validation_alias=_env("PROMPTGEN_ALLOWED_HOSTS"),
        description="Comma-separated Host names the gateway answers for ('*.example.com' for subdomains, '*' for "
                    "any); unset: 127.0.0.1, localhost and [::1] when bound to loopback, else the gateway refuses "
                    "to start.",
    )

    # Access (README, Security)
    auth: Literal["auto", "required"] = Field(
        "auto", validation_alias=_env("PROMPTGEN_AUTH"),
        description="'required': refuse to start without keys; 'auto': required unless bound to loopback "
                    "with no keys.",
    )
    stream_token_secret: SecretStr | None = Field(None, validation_alias=_env("PROMPTGEN_STREAM_TOKEN_SECRET"))
    stream_token_ttl_seconds: int = Field(3600, ge=1, validation_alias=_env("PROMPTGEN_STREAM_TOKEN_TTL_SECONDS"))
    # Cost controls per tenant, shared by every gateway (services/gateway/quotas.py); 0: no limit.
    tenant_requests_per_minute: int = Field(
        120, ge=0, validation_alias=_env("PROMPTGEN_TENANT_REQUESTS_PER_MINUTE"),
        description="Writing requests (scopes jobs:write, scenarios:write) per tenant and minute; 0: no limit.",
    )
    tenant_jobs_in_flight: int = Field(
        10, ge=0, validation_alias=_env("PROMPTGEN_TENANT_JOBS_IN_FLIGHT"),
        description="Jobs a tenant may have running at once; 0: no limit.",
    )
    tenant_personas_per_day: int = Field(
        10_000, ge=0, validation_alias=_env("PROMPTGEN_TENANT_PERSONAS_PER_DAY"),
        description="Personas in the jobs a tenant starts per UTC day (a retry counts again); 0: no limit.",
    )

    # Jobs
    job_deadline_seconds: float = Field(1800, gt=0, validation_alias=_env("PROMPTGEN_JOB_DEADLINE_SECONDS"))
    job_retention_days: float = Field(7, gt=0, validation_alias=_env("PROMPTGEN_JOB_RETENTION_DAYS"))
    expiry_sweep_seconds: float = Field(5, gt=0, validation_alias=_env("PROMPTGEN_EXPIRY_SWEEP_SECONDS"))
    rebuild_scratch_dir: str | None = Field(
        None, validation_alias=_env("PROMPTGEN_REBUILD_SCRATCH_DIR"),
        description="Where a rebuild folds the log before merging it (a file about the size of the read models, "
                    "deleted when it ends); unset: the system's temporary directory.",
    )
    rebuild_processes: int = Field(
        default_factory=lambda: max(1, min(4, usable_cores())), ge=1, le=64,
        validation_alias=_env("PROMPTGEN_REBUILD_PROCESSES"),
        description="Worker processes that read and fold the log in a rebuild while the projector stores "
                    "what they folded; 1: the projector alone. Unset: the cores it may run on, up to 4 (a CPU quota "
                    "is not seen: set it to the quota).",
    )

    # Generator and LLM
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    openai_organization: str | None = Field(None, validation_alias=_env("OPENAI_ORG_ID"),
                                            description="sent as the OpenAI-Organization header")
    openai_project: str | None = Field(None, validation_alias=_env("OPENAI_PROJECT_ID"),
                                       description="sent as the OpenAI-Project header")
    model: str = Field("gpt-4o-mini", validation_alias=_env("PROMPTGEN_MODEL"))
    llm_timeout_seconds: float = Field(120, gt=0, validation_alias=_env("PROMPTGEN_LLM_TIMEOUT_SECONDS"))
    llm_temperature: float = Field(0.7, ge=0, le=2, validation_alias=_env("PROMPTGEN_LLM_TEMPERATURE"))
    llm_concurrency: int = Field(64, ge=1, validation_alias=_env("PROMPTGEN_LLM_CONCURRENCY"))
    llm_rpm: int = Field(0, ge=0, validation_alias=_env("PROMPTGEN_LLM_RPM"), description="0: no cap")
    llm_tpm: int = Field(0, ge=0, validation_alias=_env("PROMPTGEN_LLM_TPM"), description="0: no cap")
    llm_max_wait_seconds: float = Field(
        20, ge=0, validation_alias=_env("PROMPTGEN_LLM_MAX_WAIT_SECONDS"),
        description="The longest a gateway request waits for its turn under the shared LLM rate limits; a turn "
                    "further off is a 503 with Retry-After, reserving nothing (the generator's work waits its turn).",
    )
    llm_expected_completion_tokens: int = Field(
        1000, ge=1, validation_alias=_env("PROMPTGEN_LLM_EXPECTED_COMPLETION_TOKENS")
    )
    worker_concurrency: int = Field(64, ge=1, validation_alias=_env("PROMPTGEN_WORKER_CONCURRENCY"))
    llm_max_attempts: int = Field(4, ge=1, validation_alias=_env("PROMPTGEN_LLM_MAX_ATTEMPTS"))
    max_deliveries: int = Field(5, ge=1, validation_alias=_env("PROMPTGEN_MAX_DELIVERIES"))
    ack_wait_seconds: float = Field(
        6, gt=0, validation_alias=_env("PROMPTGEN_ACK_WAIT_SECONDS"),
        description="How long a work item stays with a worker that says nothing: a live worker says it is "
                    "still on it every third of this, so a dead one's items go to another after at most this.",
    )
    provider: str | None = Field(
        None,
        validation_alias=_env("PROMPTGEN_PROVIDER"),
        description="'openai' or 'offline'; default: openai when a key or base URL is set.",
    )

    # Operations: the HTTP port of each worker process (/metrics, /livez, /readyz); 0: a free port
    http_host: str = Field("127.0.0.1", validation_alias=_env("PROMPTGEN_HTTP_HOST"))
    generator_http_port: int = Field(9101, ge=0, le=65535, validation_alias=_env("PROMPTGEN_GENERATOR_HTTP_PORT"))
    projector_http_port: int = Field(9102, ge=0, le=65535, validation_alias=_env("PROMPTGEN_PROJECTOR_HTTP_PORT"))
    gateway_http_port: int | None = Field(
        None, ge=0, le=65535, validation_alias=_env("PROMPTGEN_GATEWAY_HTTP_PORT"),
        description="A port of the gateway process's own for /metrics, /livez and /readyz (they are on its "
                    "main port too): with several gateways on one port, each is scraped and probed there.",
    )
    ready_max_lag_events: int = Field(
        10_000, ge=1, validation_alias=_env("PROMPTGEN_READY_MAX_LAG_EVENTS"),
        description="A projector further behind the log than this is not ready (its reads would be stale).",
    )

    # Logging
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", validation_alias=_env("PROMPTGEN_LOG_LEVEL"))

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        level = value.strip().lower()
        return {"warn": "warning", "fatal": "critical"}.get(level, level)  # logging's own aliases

    @model_validator(mode="after")
    def _nats_access_is_complete(self) -> Settings:
        if bool(self.nats_user) != bool(self.nats_password):
            missing = "NATS_PASSWORD (or NATS_PASSWORD_FILE)" if self.nats_user else "NATS_USER"
            raise ValueError(f"{missing} is not set: a NATS user needs both a name and a password")
        if bool(self.nats_tls_cert_file) != bool(self.nats_tls_key_file):
            missing = "NATS_TLS_KEY_FILE" if self.nats_tls_cert_file else "NATS_TLS_CERT_FILE"
            raise ValueError(f"{missing} is not set: a NATS client certificate needs both its certificate "
                             "and its key")
        return self

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: str | None) -> str | None:
        if value is None:
            return None
        patterns = [_bracketed(p.strip().lower()) for p in value.split(",") if p.strip()]
        for pattern in patterns:
            if not _HOST_PATTERN.fullmatch(pattern):
                raise ValueError(f"PROMPTGEN_ALLOWED_HOSTS: {pattern!r} is not a host name, '*.name', an IP address "
                                 "(IPv6 in brackets) or '*' (no scheme, port or path)")
        return ",".join(patterns) or None

    @property
    def provider_name(self) -> str:
        if self.provider:
            return self.provider
        return "openai" if (self.openai_api_key or self.openai_base_url) else "offline"
