-- Per user and ISO week (Monday 00:00 UTC, as date_trunc('week') and the stats' week buckets):
-- the coarse tier of the stats' user table. A period's user table reads this for its whole
-- weeks, the daily tier only for the days around them (at most 6 at each end), the hourly tier
-- and the raw rows for the partial days and hours at its very edges. One row per GPT, week and
-- active user instead of one per day: a 30-day period of a busy GPT read ~30 x its daily active
-- users from the daily tier, now ~4 x its weekly ones plus at most 12 days. (A calendar-month
-- tier would leave a 30-day period, which rarely holds a whole month, as it was.)
--
-- metrics-ingest keeps it in the same transaction and shard as the other rollups
-- (chatbeto_metrics_ingest.repo), from the rows inserted now, so it counts each row once.
CREATE TABLE user_rollups_weekly (
    gpt_pk       bigint NOT NULL,
    project_key  bigint NOT NULL,
    week         timestamptz NOT NULL,
    usuario_id   text NOT NULL,
    sessions     bigint NOT NULL,
    events       bigint NOT NULL,
    last_seen    timestamptz NOT NULL,
    shard        smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (gpt_pk, week, project_key, usuario_id, shard)
);

-- Backfill from the daily tier, which holds every stored row's counts (and still holds the
-- history of rows that retention has dropped), shard by shard.
INSERT INTO user_rollups_weekly
SELECT gpt_pk, project_key, date_trunc('week', day, 'UTC'), usuario_id, sum(sessions),
       sum(events), max(last_seen), shard
FROM user_rollups
GROUP BY gpt_pk, project_key, date_trunc('week', day, 'UTC'), usuario_id, shard;
