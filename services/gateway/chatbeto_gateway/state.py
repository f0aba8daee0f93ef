"""Typed application state."""

from __future__ import annotations

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from chatbeto.broker import GroupPublisher, Publisher
from chatbeto.settings import GatewaySettings

from chatbeto_gateway.access.auth import KeyCache
from chatbeto_gateway.access.ratelimit import Limiter
from chatbeto_gateway.metrics.gpt_cache import GptCache
from chatbeto_gateway.proxy.rpc import Rpc
from chatbeto_gateway.proxy.upstream import Upstream

SETTINGS = web.AppKey("settings", GatewaySettings)
POOL = web.AppKey("pool", asyncpg.Pool)
# What the reports (stats, costs) read: DATABASE_READ_URL's pool, or POOL when it is unset.
REPORT_POOL = web.AppKey("report_pool", asyncpg.Pool)
BROKER = web.AppKey("broker", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
METRICS_PUBLISHER = web.AppKey("metrics_publisher", GroupPublisher)
KEYS = web.AppKey("keys", KeyCache)
GPTS = web.AppKey("gpts", GptCache)
SESSION_KEY = web.AppKey("session_key", bytes)
RPC = web.AppKey("rpc", Rpc)
UPSTREAM = web.AppKey("upstream", Upstream)
LIMITER = web.AppKey("limiter", Limiter)
