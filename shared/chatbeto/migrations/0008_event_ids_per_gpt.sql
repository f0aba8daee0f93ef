-- Event ids are scoped to their GPT (contract 3.2): a retried id of the same GPT is stored once,
-- another GPT's (another project's) event with the same id is a different event.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (gpt_pk, id);

-- What a model call cost (USD, priced from its usage); NULL when unknown or not a model call.
ALTER TABLE events ADD COLUMN cost_usd numeric;
