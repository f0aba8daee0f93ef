-- Room on each page of the rollup tables for their rows' next versions. metrics-ingest
-- updates every row of a GPT's current hour, day and week (per user too) in each storing
-- transaction; on full pages (the default fillfactor, 100) those updates could not stay on
-- their page, so each one added an index entry, and every later upsert of the key walked the
-- dead versions' entries until a vacuum. With half of each page free, the updates are HOT:
-- one index entry per key, the dead versions pruned on the page. Measured: a 1,000-event
-- batch of 1,000 users cost Postgres 33-38 us per event, 26-30 us with these settings. New
-- pages only: existing ones fill up as before until rewritten.
ALTER TABLE event_rollups SET (fillfactor = 50);
ALTER TABLE event_rollups_daily SET (fillfactor = 50);
ALTER TABLE session_rollups SET (fillfactor = 50);
ALTER TABLE user_rollups_hourly SET (fillfactor = 50);
ALTER TABLE user_rollups SET (fillfactor = 50);
ALTER TABLE user_rollups_weekly SET (fillfactor = 50);
