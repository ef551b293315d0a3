-- Schema version 3: snapshots, their schedules, stored volumes and restores.

-- A snapshot row tracks the job and caches the manifest's header; the manifest in the bucket
-- (`snapshots/<id>/manifest`) is the truth and the commit point. `volume_id` is not a foreign
-- key: snapshots outlive their volume.
CREATE TABLE snapshots (
    id              TEXT PRIMARY KEY NOT NULL,
    volume_id       INTEGER NOT NULL,
    volume_name     TEXT NOT NULL,
    size_bytes      INTEGER NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    scheduled       INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL
        CHECK (state IN ('requested', 'staging', 'uploading', 'complete', 'failed')),
    error           TEXT,
    requested_unix  INTEGER NOT NULL,
    completed_unix  INTEGER,
    chunks          INTEGER NOT NULL DEFAULT 0,
    new_chunks      INTEGER NOT NULL DEFAULT 0,
    uploaded_bytes  INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX snapshots_by_volume ON snapshots (volume_id, requested_unix);

CREATE TABLE snapshot_schedules (
    volume_id   INTEGER PRIMARY KEY NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    every_secs  INTEGER NOT NULL CHECK (every_secs >= 60),
    keep        INTEGER NOT NULL CHECK (keep >= 1),
    last_unix   INTEGER
) STRICT;

-- Stored volumes keep their data on a local file or device; restores record their origin.
ALTER TABLE volumes ADD COLUMN local_path TEXT;
ALTER TABLE volumes ADD COLUMN origin_snapshot TEXT;

-- Chunks of stored volumes changed locally and not yet uploaded (persisted at each flush).
CREATE TABLE stored_dirty (
    volume_id    INTEGER NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    chunk_index  INTEGER NOT NULL,
    PRIMARY KEY (volume_id, chunk_index)
) STRICT, WITHOUT ROWID;

-- Garbage collection: chunks an upload is about to PUT are pinned first, so a concurrent
-- sweep never deletes a chunk that is about to be referenced (pins expire after the grace).
CREATE TABLE chunk_pins (
    chunk_id     BLOB PRIMARY KEY NOT NULL,
    pinned_unix  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX volume_chunks_by_id ON volume_chunks (chunk_id);

-- Chunks of a stored volume restored from a snapshot and not yet downloaded to its local disk.
CREATE TABLE stored_pending (
    volume_id    INTEGER NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    chunk_index  INTEGER NOT NULL,
    PRIMARY KEY (volume_id, chunk_index)
) STRICT, WITHOUT ROWID;
