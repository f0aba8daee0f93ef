-- The openai-worker's additions to the conversations schema.

-- The metrics session (of the built-in `chatbeto` GPT) that this conversation's model calls
-- are recorded in: one per conversation, issued when the conversation is created.
ALTER TABLE conversations ADD COLUMN metrics_session_id uuid;
