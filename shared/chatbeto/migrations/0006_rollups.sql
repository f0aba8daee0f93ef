-- Rollups for the stats API and the dashboard: metrics-ingest maintains them in the same
-- transaction as the rows they count (only newly inserted rows count, so retries and
-- redeliveries never count twice). The stats queries read whole days from the daily tables,
-- whole hours at the ends of a period from the hourly ones, and only the partial hours at its
-- very edges from the raw tables, so a month of one GPT costs a bounded number of rollup rows
-- whatever the event volume.
--
-- `project_key` is the row's project_id, 0 for none (a primary key column can't be NULL); it
-- matters for the built-in GPT, whose stats are filtered to the reader's project.

-- Latency histogram bin of a value: index into these lower bounds (milliseconds), 1-based. The
-- gateway keeps the same list (metrics_repo.LATENCY_BIN_LOWER_MS) to estimate percentiles.
CREATE FUNCTION latency_bin(ms integer) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT width_bucket(ms, ARRAY[0, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000,
                                  1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000,
                                  60000, 120000]::integer[])::smallint
$$;

-- Events per hour, event type and latency bin.
CREATE TABLE event_rollups (
    gpt_pk          bigint NOT NULL,
    project_key     bigint NOT NULL,
    hour            timestamptz NOT NULL,
    tipo            text NOT NULL,
    bin             smallint NOT NULL,
    events          bigint NOT NULL,
    latency_sum     bigint NOT NULL,
    tokens_entrada  bigint NOT NULL,
    tokens_salida   bigint NOT NULL,
    PRIMARY KEY (gpt_pk, hour, project_key, tipo, bin)
);

-- The same per UTC day (what a week or a month reads).
CREATE TABLE event_rollups_daily (
    gpt_pk          bigint NOT NULL,
    project_key     bigint NOT NULL,
    day             timestamptz NOT NULL,
    tipo            text NOT NULL,
    bin             smallint NOT NULL,
    events          bigint NOT NULL,
    latency_sum     bigint NOT NULL,
    tokens_entrada  bigint NOT NULL,
    tokens_salida   bigint NOT NULL,
    PRIMARY KEY (gpt_pk, day, project_key, tipo, bin)
);

-- Sessions per hour (by timestamp_inicio).
CREATE TABLE session_rollups (
    gpt_pk       bigint NOT NULL,
    project_key  bigint NOT NULL,
    hour         timestamptz NOT NULL,
    sessions     bigint NOT NULL,
    PRIMARY KEY (gpt_pk, hour, project_key)
);

-- Per user and UTC day: sessions started, events, last activity.
CREATE TABLE user_rollups (
    gpt_pk       bigint NOT NULL,
    project_key  bigint NOT NULL,
    day          timestamptz NOT NULL,
    usuario_id   text NOT NULL,
    sessions     bigint NOT NULL,
    events       bigint NOT NULL,
    last_seen    timestamptz NOT NULL,
    PRIMARY KEY (gpt_pk, day, project_key, usuario_id)
);

-- The same per hour (the partial days at the ends of a period).
CREATE TABLE user_rollups_hourly (
    gpt_pk       bigint NOT NULL,
    project_key  bigint NOT NULL,
    hour         timestamptz NOT NULL,
    usuario_id   text NOT NULL,
    sessions     bigint NOT NULL,
    events       bigint NOT NULL,
    last_seen    timestamptz NOT NULL,
    PRIMARY KEY (gpt_pk, hour, project_key, usuario_id)
);

-- Backfill from what is already stored.
INSERT INTO event_rollups
SELECT gpt_pk, coalesce(project_id, 0), date_trunc('hour', ts, 'UTC'), tipo,
       latency_bin(latency_ms), count(*), sum(latency_ms), sum(tokens_entrada), sum(tokens_salida)
FROM events GROUP BY 1, 2, 3, 4, 5;

INSERT INTO session_rollups
SELECT gpt_pk, coalesce(project_id, 0), date_trunc('hour', timestamp_inicio, 'UTC'), count(*)
FROM sessions GROUP BY 1, 2, 3;

INSERT INTO user_rollups
SELECT gpt_pk, project_key, day, usuario_id, sum(sessions), sum(events), max(last_seen)
FROM (
    SELECT gpt_pk, coalesce(project_id, 0) AS project_key,
           date_trunc('day', timestamp_inicio, 'UTC') AS day, usuario_id,
           1 AS sessions, 0 AS events, timestamp_inicio AS last_seen
    FROM sessions
    UNION ALL
    SELECT gpt_pk, coalesce(project_id, 0), date_trunc('day', ts, 'UTC'), usuario_id, 0, 1, ts
    FROM events
) AS x
GROUP BY 1, 2, 3, 4;

INSERT INTO event_rollups_daily
SELECT gpt_pk, project_key, date_trunc('day', hour, 'UTC'), tipo, bin, sum(events),
       sum(latency_sum), sum(tokens_entrada), sum(tokens_salida)
FROM event_rollups GROUP BY 1, 2, 3, 4, 5;

INSERT INTO user_rollups_hourly
SELECT gpt_pk, project_key, hour, usuario_id, sum(sessions), sum(events), max(last_seen)
FROM (
    SELECT gpt_pk, coalesce(project_id, 0) AS project_key,
           date_trunc('hour', timestamp_inicio, 'UTC') AS hour, usuario_id,
           1 AS sessions, 0 AS events, timestamp_inicio AS last_seen
    FROM sessions
    UNION ALL
    SELECT gpt_pk, coalesce(project_id, 0), date_trunc('hour', ts, 'UTC'), usuario_id, 0, 1, ts
    FROM events
) AS x
GROUP BY 1, 2, 3, 4;
