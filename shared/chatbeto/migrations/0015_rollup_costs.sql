-- The cost of the events (contract 3.1 "Cost and budgets": `cost: {"usd"}` in the stats) in the
-- event rollups' hourly and daily tiers, so the stats read it as they read the counts: whole
-- days and hours from the rollups, raw rows only at a period's unaligned edges. Until now the
-- stats summed the raw rows of the whole period: the one stats query that grew with volume.
--
-- `cost_usd` is the sum of the priced rows counted in the rollup row, NULL when none of them was
-- priced (a GPT whose events carry no cost, a model without a price): a sum of no priced rows is
-- null, not 0, as sum() over the raw rows says. metrics-ingest keeps it in the same statement as
-- the other columns, adding NULL as nothing (chatbeto_metrics_ingest.repo.EVENT_ROLLUPS); the
-- stats' sum() over rollup rows skips the NULLs the same way. Nullable without a default: adding
-- it rewrites no row, and an unpriced rollup row stores nothing for it.
ALTER TABLE event_rollups ADD COLUMN cost_usd numeric;
ALTER TABLE event_rollups_daily ADD COLUMN cost_usd numeric;

-- Backfill from the raw rows. Only the openai-worker's events (the built-in GPT's) carry a cost
-- (the ingest routes take none), so only their rows are read, by the (gpt_pk, ts) index: every
-- other GPT's rows would be a scan of the whole table for nothing. The rows that counted a key
-- are spread over the rollup shards (0013_rollup_shards.sql) and the raw rows do not say which
-- shard counted which, so a key's whole cost goes to its lowest shard's row; the stats sum the
-- shards. (Rows already dropped by EVENTS_RETENTION_DAYS are gone: their cost with them, as the
-- raw-row stats had it.)
WITH priced AS (
    SELECT gpt_pk, coalesce(project_id, 0) AS project_key, date_trunc('hour', ts, 'UTC') AS hour,
           tipo, latency_bin(latency_ms) AS bin, sum(cost_usd) AS cost_usd
    FROM events
    WHERE gpt_pk IN (SELECT pk FROM gpts WHERE builtin) AND cost_usd IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5
), target AS (
    SELECT DISTINCT ON (r.gpt_pk, r.hour, r.project_key, r.tipo, r.bin)
           r.gpt_pk, r.hour, r.project_key, r.tipo, r.bin, r.shard, p.cost_usd
    FROM priced p
    JOIN event_rollups r USING (gpt_pk, project_key, hour, tipo, bin)
    ORDER BY r.gpt_pk, r.hour, r.project_key, r.tipo, r.bin, r.shard
)
UPDATE event_rollups r SET cost_usd = t.cost_usd
FROM target t
WHERE (r.gpt_pk, r.hour, r.project_key, r.tipo, r.bin, r.shard)
    = (t.gpt_pk, t.hour, t.project_key, t.tipo, t.bin, t.shard);

-- The daily tier from the hourly one just filled (the same rows' cost, per day).
WITH priced AS (
    SELECT gpt_pk, project_key, date_trunc('day', hour, 'UTC') AS day, tipo, bin,
           sum(cost_usd) AS cost_usd
    FROM event_rollups
    WHERE cost_usd IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5
), target AS (
    SELECT DISTINCT ON (r.gpt_pk, r.day, r.project_key, r.tipo, r.bin)
           r.gpt_pk, r.day, r.project_key, r.tipo, r.bin, r.shard, p.cost_usd
    FROM priced p
    JOIN event_rollups_daily r USING (gpt_pk, project_key, day, tipo, bin)
    ORDER BY r.gpt_pk, r.day, r.project_key, r.tipo, r.bin, r.shard
)
UPDATE event_rollups_daily r SET cost_usd = t.cost_usd
FROM target t
WHERE (r.gpt_pk, r.day, r.project_key, r.tipo, r.bin, r.shard)
    = (t.gpt_pk, t.day, t.project_key, t.tipo, t.bin, t.shard);
