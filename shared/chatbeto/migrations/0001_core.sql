-- Projects, API keys, GPTs, and the metrics tables (sessions, events).

CREATE TABLE projects (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix        text NOT NULL UNIQUE,
    key_hash      bytea NOT NULL UNIQUE,
    name          text,
    is_admin      boolean NOT NULL DEFAULT false,
    project_id    bigint REFERENCES projects (id) ON DELETE CASCADE,
    rate_limit    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CHECK (is_admin OR project_id IS NOT NULL)
);

CREATE TABLE app_secrets (
    name   text PRIMARY KEY,
    value  bytea NOT NULL
);

CREATE TABLE gpts (
    pk              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gpt_id          text NOT NULL UNIQUE CHECK (length(gpt_id) BETWEEN 1 AND 128),
    name            text NOT NULL,
    project_id      bigint REFERENCES projects (id) ON DELETE CASCADE,
    keyless_ingest  boolean NOT NULL DEFAULT false,
    -- The gateway's own GPT: shared by all projects, its rows carry project_id.
    builtin         boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id                uuid PRIMARY KEY,
    gpt_pk            bigint NOT NULL REFERENCES gpts (pk) ON DELETE CASCADE,
    usuario_id        text NOT NULL,
    timestamp_inicio  timestamptz NOT NULL,
    -- Set for sessions opened by the gateway itself (one per conversation).
    project_id        bigint REFERENCES projects (id) ON DELETE CASCADE,
    request_id        text,
    stored_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_gpt_time ON sessions (gpt_pk, timestamp_inicio);

-- Events are append-only and large. Not partitioned: an event id must be unique across all
-- time (idempotent retries), which a partitioned table can only enforce per partition. A BRIN
-- index keeps time-range scans cheap, and the composite index serves the per-GPT stats.
CREATE TABLE events (
    id              uuid PRIMARY KEY,
    session_id      uuid NOT NULL,
    gpt_pk          bigint NOT NULL,
    usuario_id      text NOT NULL,
    project_id      bigint,
    tipo            text NOT NULL,
    contenido       text NOT NULL,
    latency_ms      integer NOT NULL CHECK (latency_ms >= 0),
    tokens_entrada  integer NOT NULL CHECK (tokens_entrada >= 0),
    tokens_salida   integer NOT NULL CHECK (tokens_salida >= 0),
    ts              timestamptz NOT NULL,
    request_id      text,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_session ON events (session_id, ts);
CREATE INDEX events_gpt_time ON events (gpt_pk, ts) INCLUDE (latency_ms, tokens_entrada, tokens_salida);
CREATE INDEX events_stored_brin ON events USING brin (stored_at);

INSERT INTO gpts (gpt_id, name, builtin) VALUES ('chatbeto', 'chatbeto gateway', true);
