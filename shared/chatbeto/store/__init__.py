"""The store: every read and write of conversations, messages, jobs, projects and GPTs that
more than one place needs, for every service and the CLI (one SQL idiom each).

- `conversations`: conversations and messages. Idempotent by external id (a conversation's per
  project and source, a message's per conversation); an append holds the conversation's row
  lock (`conversations.lock`) and writes after its last position.
- `jobs`: background jobs (sync, import) in one vocabulary, and the uploads imports read.
- `projects`, `gpts`: names, ids, existence.
"""
