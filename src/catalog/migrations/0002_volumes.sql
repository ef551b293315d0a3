-- Schema version 2: block volumes and the chunk map (which chunk holds each 1 MiB of a volume).
CREATE TABLE volumes (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    size_bytes    INTEGER NOT NULL,
    block_size    INTEGER NOT NULL,
    chunk_size    INTEGER NOT NULL,
    mode          TEXT NOT NULL CHECK (mode IN ('cached', 'stored')),
    serial        TEXT NOT NULL,
    uuid          BLOB NOT NULL,
    created_unix  INTEGER NOT NULL
) STRICT;

-- A missing row means the chunk was never written, or is all zeros: it reads as zeros and
-- costs nothing in the bucket.
CREATE TABLE volume_chunks (
    volume_id    INTEGER NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    chunk_index  INTEGER NOT NULL,
    chunk_id     BLOB NOT NULL,
    PRIMARY KEY (volume_id, chunk_index)
) STRICT, WITHOUT ROWID;
