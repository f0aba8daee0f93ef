-- Whole exchanges of the OpenAI-compatible surface (/v1): tool calls, tool results, non-text
-- parts, usage details; and the request id a client can look a conversation up by (a 504 does
-- not say whether the exchange was stored: `?requestId=` does).

ALTER TABLE messages DROP CONSTRAINT messages_role_check;
ALTER TABLE messages ADD CONSTRAINT messages_role_check
    CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool'));

-- An assistant message's tool calls, as OpenAI sent them ([{id, type, function: {name,
-- arguments}}]); a tool message's answer to which call.
ALTER TABLE messages ADD COLUMN tool_calls jsonb;
ALTER TABLE messages ADD COLUMN tool_call_id text;
-- Non-text content parts, described (type and what it was, never its bytes); `content` holds a
-- text placeholder for each.
ALTER TABLE messages ADD COLUMN parts jsonb;
-- Reasoning tokens of an assistant message (cached input tokens came with 0011).
ALTER TABLE messages ADD COLUMN reasoning_tokens integer;

ALTER TABLE conversations ADD COLUMN request_id text;
CREATE INDEX conversations_request ON conversations (project_id, request_id)
    WHERE request_id IS NOT NULL;
