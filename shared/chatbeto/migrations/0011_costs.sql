-- Cost and budgets (contract 3.1): what each model call cost, who spent it, and the per-key
-- windows that budgets and token caps are checked against.

-- A key's budget (`20/1mo`: USD per window) and token cap (tokens per minute). Set at creation.
ALTER TABLE api_keys
    ADD COLUMN budget text,
    ADD COLUMN tpm bigint CHECK (tpm > 0);

-- The assistant message's price: NULL for a model the price table does not know.
ALTER TABLE messages
    ADD COLUMN cached_tokens integer,
    ADD COLUMN cost_usd numeric;

-- One row per model call, written by the openai-worker in the transaction that stores the
-- exchange; `external_id` is the request's broker message id, so a redelivery adds nothing.
CREATE TABLE spend (
    external_id          text PRIMARY KEY,
    key_id               bigint REFERENCES api_keys (id) ON DELETE SET NULL,
    project_id           bigint REFERENCES projects (id) ON DELETE CASCADE,
    model                text NOT NULL,
    input_tokens         bigint NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens  bigint NOT NULL CHECK (cached_input_tokens >= 0),
    output_tokens        bigint NOT NULL CHECK (output_tokens >= 0),
    cost_usd             numeric CHECK (cost_usd >= 0),
    at                   timestamptz NOT NULL
);
CREATE INDEX spend_key_at ON spend (key_id, at) WHERE key_id IS NOT NULL;
CREATE INDEX spend_project_at ON spend (project_id, at);
CREATE INDEX spend_at_brin ON spend USING brin (at);

-- Each key's spend in its current budget window and its tokens in the current minute, kept in
-- the same transaction as `spend` so that a gateway checks a budget with one row read.
CREATE TABLE key_spend_windows (
    key_id        bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('budget', 'tpm')),
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    usd           numeric NOT NULL DEFAULT 0,
    tokens        bigint NOT NULL DEFAULT 0,
    calls         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, kind, window_start)
);
CREATE INDEX key_spend_windows_end ON key_spend_windows (window_end);
