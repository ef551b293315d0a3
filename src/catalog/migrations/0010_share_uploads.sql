-- Schema version 8 (numbered 0010; its position in schema.rs is what counts): the multipart
-- uploads the file gateway has open in the bucket (early uploads of large files, ADR 0011).
-- A row lives from the upload's start until it is completed or aborted, so an upload a crash
-- cut short is aborted at the next start instead of lingering, unseen, in the bucket.
CREATE TABLE share_uploads (
    upload_id    TEXT PRIMARY KEY,
    -- The object key the upload is for (as the bucket knows it, below tidegate's prefix).
    key          TEXT NOT NULL,
    started_unix INTEGER NOT NULL
) STRICT;
