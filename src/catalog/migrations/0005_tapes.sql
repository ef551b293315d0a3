-- Schema version 5: the virtual tape library. Tapes (where each one is, its state on the way to
-- and from the shelf), the record index of each tape (runs of equal-sized records, or of
-- filemarks), each tape's chunk map (1 MiB pieces of its data stream), and the archive parts of
-- shelved tapes.
-- Ids are AUTOINCREMENT so a deleted tape's id (which names its cache objects) never returns.
CREATE TABLE tapes (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    barcode               TEXT NOT NULL UNIQUE,
    size_bytes            INTEGER NOT NULL,
    state                 TEXT NOT NULL CHECK (state IN ('available', 'in_transit', 'archiving',
                              'archived', 'retrieving', 'retrieved', 'damaged')),
    -- Where the tape is in the library; both NULL when it is on the shelf.
    element_type          TEXT CHECK (element_type IN ('slot', 'drive', 'mail')),
    element_index         INTEGER,
    -- The storage slot the tape last sat in: the changer reports it as a drive's source.
    home_slot             INTEGER,
    read_only             INTEGER NOT NULL DEFAULT 0,
    -- End of data: bytes of record data and logical objects (records + filemarks).
    data_bytes            INTEGER NOT NULL DEFAULT 0,
    objects               INTEGER NOT NULL DEFAULT 0,
    created_unix          INTEGER NOT NULL,
    retention_until_unix  INTEGER,
    lock_mode             TEXT CHECK (lock_mode IN ('governance', 'compliance')),
    -- SHA-256 tree hash of the data stream, once archived.
    tree_hash             BLOB,
    archived_unix         INTEGER,
    -- Bytes archived or retrieved so far (progress of the running step).
    progress_bytes        INTEGER NOT NULL DEFAULT 0,
    error                 TEXT,
    UNIQUE (element_type, element_index)
) STRICT;

-- A run is `count` records of `record_bytes` each, or `count` filemarks (`record_bytes` = -1),
-- starting at logical object `first_object` and byte `byte_offset` of the data stream.
-- `filemarks_before` counts the filemarks ahead of the run, so a position's file number is a
-- lookup rather than a scan.
CREATE TABLE tape_runs (
    tape_id           INTEGER NOT NULL REFERENCES tapes (id) ON DELETE CASCADE,
    first_object      INTEGER NOT NULL,
    byte_offset       INTEGER NOT NULL,
    count             INTEGER NOT NULL,
    record_bytes      INTEGER NOT NULL,
    filemarks_before  INTEGER NOT NULL,
    PRIMARY KEY (tape_id, first_object)
) STRICT, WITHOUT ROWID;

CREATE TABLE tape_chunks (
    tape_id      INTEGER NOT NULL REFERENCES tapes (id) ON DELETE CASCADE,
    chunk_index  INTEGER NOT NULL,
    chunk_id     BLOB NOT NULL,
    PRIMARY KEY (tape_id, chunk_index)
) STRICT, WITHOUT ROWID;

-- The archive parts of a tape on (or going to) the shelf, in order; written as each part's
-- object is in the bucket, so archiving resumes after the last one.
CREATE TABLE shelf_parts (
    tape_id      INTEGER NOT NULL REFERENCES tapes (id) ON DELETE CASCADE,
    part         INTEGER NOT NULL,
    plain_bytes  INTEGER NOT NULL,
    tree_hash    BLOB NOT NULL,
    PRIMARY KEY (tape_id, part)
) STRICT, WITHOUT ROWID;
