-- Rate-limit windows shared by every gateway replica. One row per (bucket, fixed window); a
-- gateway leases a block of tokens with one atomic UPDATE and spends it locally.
-- UNLOGGED: a counter lost in a Postgres crash only resets one window, and it saves the WAL.

CREATE UNLOGGED TABLE rate_windows (
    bucket        text   NOT NULL,
    window_start  bigint NOT NULL,
    window_end    bigint NOT NULL,
    used          bigint NOT NULL,
    -- Tokens handed out by the last lease (lets RETURNING tell the caller its grant).
    last_grant    bigint NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
CREATE INDEX rate_windows_end ON rate_windows (window_end);
