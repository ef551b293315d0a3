-- Schema version 12: the small-file journal (docs/design.md, "Small files made durable through
-- the catalog"). A small file's bytes, written here in the transaction that acknowledges them,
-- stand in for syncing its new staging file and that file's directory entry: one WAL sync
-- instead of three. A row is the staging file's whole content; it goes when the file is
-- uploaded, removed, or written again (its staging file and entry are synced first), and at
-- start-up every row left is written back to its staging file before anything is served.
CREATE TABLE small_journal (
    inode   INTEGER PRIMARY KEY REFERENCES inodes (id) ON DELETE CASCADE,
    data    BLOB NOT NULL
) STRICT;
