"""What the gateway itself asks OpenAI: is it reachable (`/api/v1/openai/status`) and which
models it offers (`GET /v1/models`). Answers are cached briefly: these routes are polled."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from chatbeto.logging import get_logger
from chatbeto.settings import OpenAISettings
from openai import AsyncOpenAI

log = get_logger(__name__)
CACHE_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 5.0
Health = Literal["healthy", "unhealthy", "unconfigured"]


class Upstream:
    def __init__(self, settings: OpenAISettings) -> None:
        self.default_model = settings.openai_model
        self._client: AsyncOpenAI | None = None
        if settings.openai_api_key is not None:
            self._client = AsyncOpenAI(
                api_key=settings.openai_api_key.get_secret_value(),
                organization=settings.openai_org_id,
                base_url=settings.openai_base_url,
                max_retries=0,
                timeout=PROBE_TIMEOUT_SECONDS,
            )
        self._models: list[dict[str, Any]] | None = None
        self._checked_at = -CACHE_SECONDS
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._checked_at < CACHE_SECONDS or self._client is None:
                return
            try:
                page = await self._client.models.list()
                self._models = [m.model_dump(mode="json") for m in page.data]
            except Exception as exc:
                log.warning("OpenAI probe failed", error=type(exc).__name__)
                self._models = None
            self._checked_at = time.monotonic()

    async def health(self) -> Health:
        if self._client is None:
            return "unconfigured"
        await self._refresh()
        return "healthy" if self._models is not None else "unhealthy"

    async def models(self) -> list[dict[str, Any]]:
        """OpenAI's model list; just the configured model when OpenAI can't be asked."""
        await self._refresh()
        if self._models:
            return self._models
        return [{"id": self.default_model, "object": "model", "created": 0, "owned_by": "chatbeto"}]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
