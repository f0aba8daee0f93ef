"""Typed application state."""

from __future__ import annotations

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from chatbeto.broker import GroupPublisher, Publisher
from chatbeto.settings import GatewaySettings

from chatbeto_gateway.auth import KeyCache
from chatbeto_gateway.gpt_cache import GptCache
from chatbeto_gateway.ratelimit import Limiter

SETTINGS = web.AppKey("settings", GatewaySettings)
POOL = web.AppKey("pool", asyncpg.Pool)
BROKER = web.AppKey("broker", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
METRICS_PUBLISHER = web.AppKey("metrics_publisher", GroupPublisher)
KEYS = web.AppKey("keys", KeyCache)
GPTS = web.AppKey("gpts", GptCache)
SESSION_KEY = web.AppKey("session_key", bytes)
LIMITER = web.AppKey("limiter", Limiter)
