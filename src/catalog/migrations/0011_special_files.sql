-- Schema version 9 (numbered 0011; its position in schema.rs is what counts): special files in
-- shares. FIFOs, sockets and block and character devices become inode kinds, and a device's
-- major and minor numbers get columns. SQLite cannot change a CHECK constraint in place, so the
-- table is rebuilt with the same rows and ids.
CREATE TABLE inodes_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    share_id        INTEGER NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    parent          INTEGER,
    name            TEXT NOT NULL,
    path            TEXT NOT NULL,
    kind            TEXT NOT NULL
        CHECK (kind IN ('file', 'dir', 'symlink', 'fifo', 'socket', 'block', 'char')),
    mode            INTEGER NOT NULL,
    uid             INTEGER NOT NULL,
    gid             INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    ctime_ns        INTEGER NOT NULL,
    target          TEXT,
    remote_key      TEXT,
    etag            TEXT,
    extra_meta      TEXT NOT NULL DEFAULT '',
    staged          INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 1,
    synced_version  INTEGER NOT NULL DEFAULT 0,
    refreshed_unix  INTEGER NOT NULL DEFAULT 0,
    -- A block or character device's numbers; 0 for every other kind.
    rdev_major      INTEGER NOT NULL DEFAULT 0,
    rdev_minor      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (share_id, parent, name)
) STRICT;

INSERT INTO inodes_new (id, share_id, parent, name, path, kind, mode, uid, gid, size, mtime_ns,
        ctime_ns, target, remote_key, etag, extra_meta, staged, version, synced_version,
        refreshed_unix)
    SELECT id, share_id, parent, name, path, kind, mode, uid, gid, size, mtime_ns, ctime_ns,
        target, remote_key, etag, extra_meta, staged, version, synced_version, refreshed_unix
    FROM inodes;

-- File ids are never reused: the new table starts counting where the old one stopped, even
-- when its last ids were deleted (the copy alone would only know the highest id still there).
DELETE FROM sqlite_sequence WHERE name = 'inodes_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'inodes_new', seq FROM sqlite_sequence WHERE name = 'inodes';

DROP TABLE inodes;
-- The rename carries the sqlite_sequence row along.
ALTER TABLE inodes_new RENAME TO inodes;

CREATE INDEX inodes_by_parent ON inodes (parent, id);
CREATE INDEX inodes_dirty ON inodes (share_id) WHERE version != synced_version;
CREATE INDEX inodes_by_key ON inodes (share_id, remote_key) WHERE remote_key IS NOT NULL;
