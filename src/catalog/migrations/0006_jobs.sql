-- Schema version 6: bulk import/export jobs (docs/design.md §7) and the objects a device holds.
-- Object names, metadata and segment lists are sealed by gateway/import (the device's disks
-- alone reveal nothing); the catalog sees opaque name ids and blobs, plus sizes and states.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('import', 'export')),
    -- s3://bucket[/prefix] (the import target or the export source) and how to reach it.
    bucket_url      TEXT NOT NULL,
    endpoint        TEXT,
    region          TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    -- HMAC of the job id under a key-check subkey of the job key: recognises the right key.
    key_check       TEXT NOT NULL,
    created_unix    INTEGER NOT NULL,
    updated_unix    INTEGER NOT NULL,
    sealed_unix     INTEGER,
    finished_unix   INTEGER
) STRICT;

CREATE TABLE job_objects (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- HMAC(names subkey, object key): equal keys meet here without being readable.
    name_id     BLOB NOT NULL,
    -- The sealed object record (key, size, hashes, metadata, segment list).
    record      BLOB NOT NULL,
    size        INTEGER NOT NULL,
    -- stored (on the device) | imported (verified in the target) | failed
    state       TEXT NOT NULL CHECK (state IN ('stored', 'imported', 'failed')),
    reason      TEXT,
    PRIMARY KEY (job_id, name_id)
) STRICT;

-- Multipart uploads in progress on the device, and their parts.
CREATE TABLE job_uploads (
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    upload_id     TEXT NOT NULL,
    record        BLOB NOT NULL,
    created_unix  INTEGER NOT NULL,
    PRIMARY KEY (job_id, upload_id)
) STRICT;

CREATE TABLE job_parts (
    job_id       TEXT NOT NULL,
    upload_id    TEXT NOT NULL,
    part_number  INTEGER NOT NULL,
    record       BLOB NOT NULL,
    size         INTEGER NOT NULL,
    PRIMARY KEY (job_id, upload_id, part_number),
    FOREIGN KEY (job_id, upload_id) REFERENCES job_uploads (job_id, upload_id) ON DELETE CASCADE
) STRICT;
