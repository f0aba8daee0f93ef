"""The worker's OpenAI client: the official SDK (`AsyncOpenAI`), with the /v1 proxy's POSTs of
ready JSON bytes built once per path instead of once per call.

Why: the SDK rebuilds every request from scratch — merges its default, platform and auth headers
into a case-insensitive `Headers`, parses the base URL and the path and joins them, then httpx
merges its own headers and cookies and parses the URL again — and `post` builds a pydantic
`FinalRequestOptions` with every default resolved. For the proxy's calls all of that is the same
every time but the body: it was half of the SDK's CPU per call (measured against the stub, 32
calls at once: 360 -> 180 us per call). So `post_bytes` copies one ready `FinalRequestOptions`
per path, and `_build_request` (the SDK's own hook between options and the httpx request)
remembers the request the SDK built for the first such call and makes the next ones from it:
same method, URL, headers and extensions, the new body with its Content-Length, and the
client's cookies of now.

Everything else still goes through the SDK as before: `request` (auth hooks, error mapping,
`APIStatusError` & co.), httpx's `send` and the SDK's aiohttp transport. Any other call (the
seed routes' `chat.completions.create`, the Conversations API of sync jobs, anything with a JSON
body, its own headers, query or timeout) takes the SDK's own path unchanged.

Overriding `_build_request` leans on the SDK's internals, so it is kept to requests whose options
are exactly what `post_bytes` makes (checked field by field, else the SDK builds the request), and
`tests/test_openai_client.py` checks that a remembered request equals what the SDK builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import httpx2
from openai import AsyncOpenAI, NotGiven
from openai._models import FinalRequestOptions

# What `FinalRequestOptions` carries when nothing asked for other credentials.
_DEFAULT_SECURITY = FinalRequestOptions.model_construct(method="post", url="/").security


def _plain(options: FinalRequestOptions) -> bool:
    """Options like `post_bytes` makes: nothing that changes the request but the body."""
    return (
        options.method == "post"
        and isinstance(options.content, bytes)
        and options.json_data is None
        and options.extra_json is None
        and options.files is None
        and not options.params
        and isinstance(options.headers, NotGiven)
        and isinstance(options.timeout, NotGiven)
        and options.security == _DEFAULT_SECURITY
    )


@dataclass(frozen=True)
class _Template:
    """What the SDK built for a path: all of a request but its body and cookies."""

    method: str
    url: httpx2.URL
    headers: httpx2.Headers
    extensions: dict[str, Any]


class WorkerOpenAI(AsyncOpenAI):
    """`AsyncOpenAI` with a fixed API key (the operator's), and a cheap path for `post_bytes`."""

    def __init__(self, *, api_key: str, **kwargs: Any) -> None:
        super().__init__(api_key=api_key, **kwargs)
        # An SDK that sends an idempotency key per request needs a fresh header per call.
        self._remember = self._idempotency_header is None
        self._options: dict[str, FinalRequestOptions] = {}
        # (url, retries taken) -> the SDK's request for it, minus Content-Length and Cookie.
        self._templates: dict[tuple[str, int], _Template] = {}

    async def post_bytes(
        self, path: str, content: bytes, *, stream: bool = False
    ) -> httpx2.Response:
        """POST `content` (JSON) to `path`; OpenAI's response (its body read unless `stream`).
        Raises what `post` raises (`openai.APIStatusError` for a 4xx/5xx, ...)."""
        options = self._options.get(path)
        if options is None:
            options = self._options[path] = FinalRequestOptions.construct(method="post", url=path)
        # `request` copies the options again before use; this copy only carries the body.
        call = options.model_copy(update={"content": content})
        return await self.request(httpx2.Response, call, stream=stream)

    def _build_request(
        self, options: FinalRequestOptions, *, retries_taken: int = 0
    ) -> httpx2.Request:
        if not (self._remember and _plain(options)):
            return super()._build_request(options, retries_taken=retries_taken)
        key = (options.url, retries_taken)
        template = self._templates.get(key)
        if template is None:
            request = super()._build_request(options, retries_taken=retries_taken)
            headers = httpx2.Headers(request.headers)
            for name in ("Content-Length", "Cookie"):  # the body's own; the jar's of the call
                headers.pop(name, None)
            self._templates[key] = _Template(
                request.method, request.url, headers, dict(request.extensions)
            )
            return request
        content = cast(bytes, options.content)
        cookies = self._client.cookies
        # The body as a ready stream: httpx then adds no headers of its own (the template has
        # them all) and re-normalises none; Content-Length is the one it would have added.
        request = httpx2.Request(
            template.method,
            template.url,
            headers=template.headers,
            cookies=cookies if cookies else None,
            stream=httpx2.ByteStream(content),
            extensions=dict(template.extensions),
        )
        request.headers["Content-Length"] = str(len(content))
        request.read()  # `content` known, as for a request built with it
        return request
