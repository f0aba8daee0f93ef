-- Project names are unique, ignoring case (the CLI and the API refuse a taken name).
-- Databases made before this may hold duplicates: every project but the oldest of each name
-- gets its id appended ("support" → "support (7)"), which keeps rows, ids and keys intact.
UPDATE projects p
SET name = left(p.name, 200 - length(' (' || p.id || ')')) || ' (' || p.id || ')'
WHERE EXISTS (
    SELECT 1 FROM projects older
    WHERE lower(older.name) = lower(p.name) AND older.id < p.id
);

CREATE UNIQUE INDEX projects_name_key ON projects (lower(name));
