"""Settings: one pydantic-settings class per service on a shared base (contract section 2)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import ClassVar, Literal, NoReturn, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatbeto import prices
from chatbeto.topology import Topology

RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RateLimit:
    """`50/15m`: 50 requests per 15 minutes."""

    __slots__ = ("limit", "window_seconds")

    def __init__(self, limit: int, window_seconds: int) -> None:
        self.limit = limit
        self.window_seconds = window_seconds

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        match = RATE_RE.match(text)
        if not match:
            raise ValueError(f"expected N/<window> such as 50/15m, got {text!r}")
        count, amount, unit = match.groups()
        window = int(amount or "1") * UNIT_SECONDS[unit]
        if int(count) <= 0 or window <= 0:
            raise ValueError("limit and window must be positive")
        return cls(int(count), window)

    def __str__(self) -> str:
        for unit in ("d", "h", "m"):
            size = UNIT_SECONDS[unit]
            if self.window_seconds % size == 0:
                return f"{self.limit}/{self.window_seconds // size}{unit}"
        return f"{self.limit}/{self.window_seconds}s"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RateLimit) and (self.limit, self.window_seconds) == (
            other.limit,
            other.window_seconds,
        )

    def __hash__(self) -> int:
        return hash((self.limit, self.window_seconds))


def postgres_url(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")
    return value


class BaseServiceSettings(BaseSettings):
    """What every process reads."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(default="postgresql://postgres@127.0.0.1:5432/chatbeto")
    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/")
    amqp_namespace: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _pg_url(cls, value: str) -> str:
        return postgres_url(value)

    @property
    def topology(self) -> Topology:
        return Topology(self.amqp_namespace)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// URL")
        return value


class OpenAISettings(BaseServiceSettings):
    openai_api_key: SecretStr | None = None
    openai_org_id: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4"
    openai_max_tokens: int = Field(default=2000, gt=0)
    openai_temperature: float = Field(default=0.7, ge=0, le=2)
    openai_timeout: float = Field(default=60, gt=0)
    # Added to (or overriding) the shipped prices; read once here so a bad file stops start-up.
    prices_file: Path | None = None

    @field_validator("prices_file")
    @classmethod
    def _prices(cls, value: Path | None) -> Path | None:
        if value is not None:
            prices.load(value)  # PricesError names the file and the entry
        return value

    def price_table(self) -> prices.PriceTable:
        return prices.load(self.prices_file)


class GatewaySettings(OpenAISettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    # Gateway processes sharing the port (SO_REUSEPORT) under one supervisor: one per core.
    gateway_workers: int = Field(default=1, ge=1, le=64)
    # Where the reports (stats, costs) read: a streaming read replica of DATABASE_URL. Unset:
    # DATABASE_URL. Every write and every other read stays on DATABASE_URL.
    database_read_url: str | None = None
    rate_limit: str = "50/15m"
    ingest_rate_limit: str = "6000/1m"
    webhook_secret: SecretStr | None = None
    openai_webhook_secret: SecretStr | None = None
    # How long past OPENAI_TIMEOUT a call waits for the worker to store the answer and reply,
    # before it answers 504.
    reply_grace_seconds: float = Field(default=5.0, ge=0, le=300)

    @field_validator("database_read_url")
    @classmethod
    def _read_url(cls, value: str | None) -> str | None:
        return postgres_url(value) if value else None  # "" (compose's unset) is unset

    @field_validator("rate_limit", "ingest_rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        RateLimit.parse(value)
        return value.strip()

    @property
    def api_rate(self) -> RateLimit:
        return RateLimit.parse(self.rate_limit)

    @property
    def ingest_rate(self) -> RateLimit:
        return RateLimit.parse(self.ingest_rate_limit)


def health_port_field(default: int, variable: str) -> int:
    """A worker's health port: its own variable wins over the shared `HEALTH_PORT`."""
    port: int = Field(
        default=default,
        ge=0,
        le=65535,
        validation_alias=AliasChoices(variable.lower(), "health_port"),
    )
    return port


class WorkerSettings(BaseServiceSettings):
    # The variable that sets this service's own health port (named in a bind failure).
    HEALTH_PORT_VARIABLE: ClassVar[str] = "HEALTH_PORT"
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=0, ge=0, le=65535)


class MetricsIngestSettings(WorkerSettings):
    HEALTH_PORT_VARIABLE = "METRICS_INGEST_HEALTH_PORT"
    health_port: int = health_port_field(8082, HEALTH_PORT_VARIABLE)
    ingest_batch_max_events: int = Field(default=5000, gt=0)
    ingest_prefetch: int = Field(default=256, gt=0)
    ingest_max_tries: int = Field(default=5, gt=0)
    # Days of raw events kept (whole daily partitions are dropped); unset keeps everything.
    events_retention_days: int | None = Field(default=None, gt=0)

    @field_validator("events_retention_days", mode="before")
    @classmethod
    def _unset(cls, value: object) -> object:
        # Compose passes an unset variable as "": keep everything.
        return None if isinstance(value, str) and not value.strip() else value


class OpenAIWorkerSettings(WorkerSettings, OpenAISettings):
    HEALTH_PORT_VARIABLE = "OPENAI_WORKER_HEALTH_PORT"
    health_port: int = health_port_field(8081, HEALTH_PORT_VARIABLE)
    openai_worker_concurrency: int = Field(default=64, gt=0)


class WebhookSettings(WorkerSettings, OpenAISettings):
    # OpenAI settings: `response.completed` is fetched from OpenAI by this service.
    HEALTH_PORT_VARIABLE = "WEBHOOK_HEALTH_PORT"
    health_port: int = health_port_field(8083, HEALTH_PORT_VARIABLE)
    webhook_prefetch: int = Field(default=32, gt=0)
    webhook_max_tries: int = Field(default=5, gt=0)


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Build settings or stop the process with one line naming the variable."""
    try:
        return cls()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "?"
        message = first["msg"].removeprefix("Value error, ")
        _die(f"configuration error: {name}: {message}")


def _die(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(2)
