"""openai-worker service."""
