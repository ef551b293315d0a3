-- Schema version 4: file shares, their inode table (stable 64-bit file ids) and the bucket
-- deletions still owed (a deleted or renamed file's old object).
CREATE TABLE shares (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT NOT NULL UNIQUE,
    bucket_prefix      TEXT NOT NULL UNIQUE,
    read_only          INTEGER NOT NULL,
    squash             TEXT NOT NULL CHECK (squash IN ('root', 'all', 'none')),
    -- Comma-separated CIDRs; empty means every client.
    allowed_clients    TEXT NOT NULL,
    default_uid        INTEGER NOT NULL,
    default_gid        INTEGER NOT NULL,
    default_file_mode  INTEGER NOT NULL,
    default_dir_mode   INTEGER NOT NULL,
    refresh_secs       INTEGER NOT NULL,
    created_unix       INTEGER NOT NULL,
    last_upload_unix   INTEGER
) STRICT;

-- AUTOINCREMENT: an id is never reused, so a file handle naming a deleted file stays stale
-- instead of silently naming a newer one.
CREATE TABLE inodes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    share_id        INTEGER NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    parent          INTEGER,
    name            TEXT NOT NULL,
    -- Relative to the share root, no leading '/'; '' for the root.
    path            TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'symlink')),
    mode            INTEGER NOT NULL,
    uid             INTEGER NOT NULL,
    gid             INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    ctime_ns        INTEGER NOT NULL,
    target          TEXT,
    -- Where the inode's object is in the bucket now; NULL when it has none.
    remote_key      TEXT,
    etag            TEXT,
    -- User metadata we do not interpret, kept across re-uploads ("key=value" lines).
    extra_meta      TEXT NOT NULL DEFAULT '',
    -- The local staging file holds the file's authoritative bytes.
    staged          INTEGER NOT NULL DEFAULT 0,
    -- Bumped by every local change; the bucket holds `synced_version`.
    version         INTEGER NOT NULL DEFAULT 1,
    synced_version  INTEGER NOT NULL DEFAULT 0,
    refreshed_unix  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (share_id, parent, name)
) STRICT;

CREATE INDEX inodes_by_parent ON inodes (parent, id);
CREATE INDEX inodes_dirty ON inodes (share_id) WHERE version != synced_version;
CREATE INDEX inodes_by_key ON inodes (share_id, remote_key) WHERE remote_key IS NOT NULL;

CREATE TABLE pending_deletes (
    share_id  INTEGER NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    key       TEXT NOT NULL PRIMARY KEY
) STRICT;
