-- Events partitioned by day (native range partitions on `ts`, UTC days), so retention drops
-- whole days (EVENTS_RETENTION_DAYS) and every index stays the size of one day. metrics-ingest
-- creates the partitions: the coming days ahead of time, at start and every hour, and a past
-- day when an event of it arrives; what falls outside every partition (a far-off timestamp)
-- lands in `events_default`.
--
-- Idempotency across partitions: a unique index of a partitioned table must include the
-- partition key, and a retried event may carry another `ts` (the gateway stamps the arrival
-- time when the client sent none), so it could land in another day. Uniqueness of an event id
-- per GPT is therefore kept by a table of its own, `event_ids` (gpt_pk, id): an event is
-- inserted into `events` only if its key was new there, in the same statement.

CREATE TABLE event_ids (
    gpt_pk  bigint NOT NULL,
    id      uuid NOT NULL,
    -- The stored copy's time: retention forgets the key with its partition.
    ts      timestamptz NOT NULL,
    PRIMARY KEY (gpt_pk, id)
);
CREATE INDEX event_ids_ts ON event_ids USING brin (ts);

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER INDEX events_session RENAME TO events_unpartitioned_session;
ALTER INDEX events_gpt_time RENAME TO events_unpartitioned_gpt_time;
ALTER INDEX events_stored_brin RENAME TO events_unpartitioned_stored_brin;

CREATE TABLE events (
    id              uuid NOT NULL,
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
    stored_at       timestamptz NOT NULL DEFAULT now(),
    cost_usd        numeric
) PARTITION BY RANGE (ts);
CREATE INDEX events_session ON events (session_id, ts);
CREATE INDEX events_gpt_time ON events (gpt_pk, ts) INCLUDE (latency_ms, tokens_entrada, tokens_salida);
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- The partition of one UTC day, made if missing; returns its name. Rows of that day that
-- arrived before it existed move out of the default partition first (ATTACH checks that none
-- is left there). Safe to call concurrently: one caller per day makes it, the others wait.
CREATE FUNCTION events_partition_for(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('events_p%s', to_char(day, 'YYYYMMDD'));
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('chatbeto:' || part));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format(
        'WITH moved AS (DELETE FROM events_default WHERE ts >= %L AND ts < %L RETURNING *) '
        'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, lo, hi);
    RETURN part;
END
$$;

-- Every existing row keeps its place: a partition per day it has (up to the 2,000 most recent
-- days; older days stay in the default partition), then the rows and their keys.
SELECT events_partition_for(d)
FROM (SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS d FROM events_unpartitioned
      ORDER BY 1 DESC LIMIT 2000) AS days;
INSERT INTO events (id, session_id, gpt_pk, usuario_id, project_id, tipo, contenido, latency_ms,
                    tokens_entrada, tokens_salida, ts, request_id, stored_at, cost_usd)
SELECT id, session_id, gpt_pk, usuario_id, project_id, tipo, contenido, latency_ms,
       tokens_entrada, tokens_salida, ts, request_id, stored_at, cost_usd
FROM events_unpartitioned;
INSERT INTO event_ids (gpt_pk, id, ts) SELECT gpt_pk, id, ts FROM events_unpartitioned;
DROP TABLE events_unpartitioned;
