"""Moved to `chatbeto.store.gpts`; this name stays until the gateway imports the store."""

from chatbeto.store.gpts import GPT_ID_PATTERN

__all__ = ["GPT_ID_PATTERN"]
