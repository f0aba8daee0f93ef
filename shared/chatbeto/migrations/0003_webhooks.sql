-- Webhook deliveries: one row per verified delivery, keyed for exactly-once processing.

CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The endpoint it arrived on: chatgpt | openai.
    source           text NOT NULL CHECK (source IN ('chatgpt', 'openai')),
    -- `std:<webhook-id>` or `legacy:<timestamp>:<signature>`: a redelivery repeats it, and this
    -- constraint (not a process's memory) is what makes two racing copies act once.
    delivery_key     text NOT NULL,
    webhook_id       text,
    event_type       text NOT NULL,
    received_at      timestamptz NOT NULL,
    processed_at     timestamptz NOT NULL DEFAULT now(),
    -- processed: acted on; recorded: a type we only record; failed: could not act (see error).
    outcome          text NOT NULL CHECK (outcome IN ('processed', 'recorded', 'failed')),
    error            text,
    -- No foreign keys: a failed delivery may name a project or conversation that doesn't exist.
    project_id       bigint,
    conversation_id  bigint,
    attempts         integer NOT NULL DEFAULT 1,
    request_id       text,
    UNIQUE (source, delivery_key)
);
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (received_at DESC, id DESC);
