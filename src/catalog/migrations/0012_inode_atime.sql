-- Schema version 10: inodes keep an access time (relatime: advanced by reads when older than
-- the file's mtime or ctime, or a day old). Existing files start at their mtime.
ALTER TABLE inodes ADD COLUMN atime_ns INTEGER NOT NULL DEFAULT 0;
UPDATE inodes SET atime_ns = mtime_ns;
