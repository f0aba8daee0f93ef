-- Conversations and their messages (API, chat completions, webhooks, imports), and background
-- jobs (sync to OpenAI, imports) with their progress.

CREATE TABLE conversations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title        text NOT NULL DEFAULT 'New conversation',
    model        text,
    -- OpenAI Conversations API id, once synced.
    remote_id    text,
    -- Where it came from: api | chat | v1 | webhook | import.
    source       text NOT NULL DEFAULT 'api',
    -- The id it had at its source (ChatGPT export id, webhook payload id), for idempotency.
    external_id  text,
    gizmo_id     text,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX conversations_external ON conversations (project_id, source, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX conversations_project_created ON conversations (project_id, created_at DESC, id DESC);
CREATE INDEX conversations_unsynced ON conversations (project_id, id) WHERE remote_id IS NULL;

CREATE TABLE messages (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id    bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position           integer NOT NULL,
    role               text NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content            text NOT NULL,
    model              text,
    prompt_tokens      integer,
    completion_tokens  integer,
    latency_ms         integer,
    external_id        text,
    request_id         text,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, position)
);
CREATE UNIQUE INDEX messages_external ON messages (conversation_id, external_id)
    WHERE external_id IS NOT NULL;

CREATE TABLE jobs (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('sync', 'import')),
    project_id  bigint REFERENCES projects (id) ON DELETE CASCADE,
    state       text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed')),
    total       integer NOT NULL DEFAULT 0,
    done        integer NOT NULL DEFAULT 0,
    failed      integer NOT NULL DEFAULT 0,
    errors      jsonb NOT NULL DEFAULT '[]'::jsonb,
    request_id  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
