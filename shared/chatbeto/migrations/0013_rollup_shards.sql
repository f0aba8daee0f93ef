-- Rollup shards: concurrent metrics-ingest transactions never update the same rollup row.
--
-- Every transaction that stores events of a GPT in one hour upserts the same few rollup rows
-- (one per event type and latency bin); a second replica's transaction touching them waited
-- for the first one's commit, so replicas took turns. Now each storing transaction first takes
-- a free shard (a transaction-scoped advisory lock, chatbeto_metrics_ingest.repo.rollup_shard)
-- and upserts only rows of its shard: N replicas write N disjoint sets of rows. The stats
-- already sum the rollup rows of a key, so readers sum the shards without any change. One
-- replica always finds shard 0 free, so the row count grows only with the writers' concurrency.
ALTER TABLE event_rollups ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE event_rollups DROP CONSTRAINT event_rollups_pkey;
ALTER TABLE event_rollups ADD PRIMARY KEY (gpt_pk, hour, project_key, tipo, bin, shard);

ALTER TABLE event_rollups_daily ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE event_rollups_daily DROP CONSTRAINT event_rollups_daily_pkey;
ALTER TABLE event_rollups_daily ADD PRIMARY KEY (gpt_pk, day, project_key, tipo, bin, shard);

ALTER TABLE session_rollups ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE session_rollups DROP CONSTRAINT session_rollups_pkey;
ALTER TABLE session_rollups ADD PRIMARY KEY (gpt_pk, hour, project_key, shard);

ALTER TABLE user_rollups ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE user_rollups DROP CONSTRAINT user_rollups_pkey;
ALTER TABLE user_rollups ADD PRIMARY KEY (gpt_pk, day, project_key, usuario_id, shard);

ALTER TABLE user_rollups_hourly ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE user_rollups_hourly DROP CONSTRAINT user_rollups_hourly_pkey;
ALTER TABLE user_rollups_hourly ADD PRIMARY KEY (gpt_pk, hour, project_key, usuario_id, shard);
