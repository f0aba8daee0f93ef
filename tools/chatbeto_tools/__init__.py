"""chatbeto_tools: the `chatbeto` command line and the tools around it (dev runner, DLQ tool,
webhook simulator, ChatGPT-export import command, the local OpenAI-compatible stub).

Not a library: nothing under `shared/` or `services/` imports it. The services start through its
`chatbeto run SERVICE`; the image ships it because `chatbeto` is the image's entrypoint."""
