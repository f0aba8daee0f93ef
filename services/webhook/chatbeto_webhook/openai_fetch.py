"""Fetching a finished response from OpenAI with the official SDK (`responses.retrieve`).

The webhook service calls OpenAI itself rather than handing the fetch to the openai-worker:
the fetch is one idempotent GET whose result this service stores in the same transaction as
the delivery record, so exactly-once needs no request/reply hop. Transient failures (429, 5xx,
timeouts) raise `FetchUnavailable` and ride the queue's retry ladder; a response OpenAI does
not know, or a refused key, is `FetchRefused`: retrying can't help, the delivery fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import openai
from chatbeto.settings import OpenAISettings

# The SDK's own retries stay short: the broker's retry ladder is the long backoff.
SDK_MAX_RETRIES = 1
# Metadata keys a response may carry to name the chatbeto conversation it belongs to.
CONVERSATION_METADATA_KEYS = ("chatbeto_conversation_id", "conversationId")


class FetchUnavailable(Exception):
    """OpenAI did not answer usefully now; try again later."""


class FetchRefused(Exception):
    """OpenAI answered no (unknown response, bad key): trying again won't change it."""


@dataclass(frozen=True)
class FetchedResponse:
    id: str
    model: str | None
    text: str
    input_tokens: int | None
    output_tokens: int | None
    remote_conversation_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def conversation_id(self) -> int | None:
        """chatbeto's conversation id, when the response's metadata names it."""
        for key in CONVERSATION_METADATA_KEYS:
            value = self.metadata.get(key)
            if value is not None and value.isdigit():
                return int(value)
        return None


class ResponseFetcher:
    def __init__(self, settings: OpenAISettings) -> None:
        self._client: openai.AsyncOpenAI | None = None
        if settings.openai_api_key is not None:
            self._client = openai.AsyncOpenAI(
                api_key=settings.openai_api_key.get_secret_value(),
                organization=settings.openai_org_id,
                base_url=settings.openai_base_url,
                timeout=settings.openai_timeout,
                max_retries=SDK_MAX_RETRIES,
            )

    @property
    def configured(self) -> bool:
        return self._client is not None

    async def fetch(self, response_id: str) -> FetchedResponse:
        if self._client is None:
            raise FetchRefused("OpenAI is not configured (OPENAI_API_KEY is unset)")
        try:
            response = await self._client.responses.retrieve(response_id)
        except (
            openai.NotFoundError,
            openai.AuthenticationError,
            openai.PermissionDeniedError,
            openai.BadRequestError,
        ) as exc:
            raise FetchRefused(f"OpenAI answered {exc.status_code}") from exc
        except openai.APIStatusError as exc:
            raise FetchUnavailable(f"OpenAI answered {exc.status_code}") from exc
        except openai.APIError as exc:  # connection errors and timeouts
            raise FetchUnavailable(type(exc).__name__) from exc
        usage = response.usage
        return FetchedResponse(
            id=response.id,
            model=str(response.model) if response.model else None,
            text=response.output_text,
            input_tokens=usage.input_tokens if usage is not None else None,
            output_tokens=usage.output_tokens if usage is not None else None,
            remote_conversation_id=response.conversation.id if response.conversation else None,
            metadata=dict(response.metadata or {}),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
