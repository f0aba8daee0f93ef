-- Uploaded ChatGPT exports waiting for the import worker. The gateway streams the upload here
-- in chunks (any gateway may take the upload, any worker may run the job); the worker deletes
-- the chunks once the job is finished. An upload's id is its job's id.

CREATE TABLE import_uploads (
    id          uuid PRIMARY KEY,
    -- Known once the multipart form is read (the file part may come before projectId).
    project_id  bigint REFERENCES projects (id) ON DELETE CASCADE,
    filename    text,
    size_bytes  bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE import_chunks (
    upload_id  uuid NOT NULL REFERENCES import_uploads (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (upload_id, seq)
);
-- Chunks are already compressed or will be read once: don't spend CPU recompressing them.
ALTER TABLE import_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
