"""Moved to `chatbeto.store.projects`; this name stays until the gateway imports the store."""

from chatbeto.store.projects import (
    MAX_NAME_CHARS,
    ProjectExists,
    clean_name,
    create,
    exists,
    list_all,
)

__all__ = ["MAX_NAME_CHARS", "ProjectExists", "clean_name", "create", "exists", "list_all"]
