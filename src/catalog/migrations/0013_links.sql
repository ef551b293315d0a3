-- Schema version 11: hard links (docs/decisions/0013-hard-links.md). An inode keeps its first
-- name in `inodes` (parent, name, path); every further name is a row here, and each name has its
-- own complete object in the bucket. `nlink` counts the inode's names (1 + its rows here).
ALTER TABLE inodes ADD COLUMN nlink INTEGER NOT NULL DEFAULT 1;

CREATE TABLE links (
    -- AUTOINCREMENT: a link's READDIR cookie is derived from its id and must not name a later
    -- entry after the link is removed.
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    share_id        INTEGER NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    parent          INTEGER NOT NULL,
    name            TEXT NOT NULL,
    -- Relative to the share root, as `inodes.path`.
    path            TEXT NOT NULL,
    inode           INTEGER NOT NULL REFERENCES inodes (id) ON DELETE CASCADE,
    -- Where this name's object is in the bucket now; NULL until it is first copied there.
    remote_key      TEXT,
    etag            TEXT,
    -- The inode version this name's object holds; 0 (never a version) after a move, so the
    -- object is copied to its new key.
    synced_version  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (parent, name)
) STRICT;

CREATE INDEX links_by_inode ON links (inode, id);
CREATE INDEX links_by_parent ON links (parent, id);
CREATE INDEX links_by_key ON links (share_id, remote_key) WHERE remote_key IS NOT NULL;
