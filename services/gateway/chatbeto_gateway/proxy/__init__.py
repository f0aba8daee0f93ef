"""The model calls: the OpenAI-compatible `/v1` surface and request/reply to the openai-worker."""
