-- Schema version 7 (numbered 0009; its position in schema.rs is what counts): the multipart
-- upload an import has open in the target for each large object, so that an import resumed
-- after a crash or a lost network continues it instead of sending the object again. Rows live
-- from the upload's start until it completes or is aborted. Upload ids reveal nothing of the
-- object; the name id is the same HMAC as in job_objects.
CREATE TABLE job_target_uploads (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name_id     BLOB NOT NULL,
    upload_id   TEXT NOT NULL,
    -- Parts are this size (the last one shorter): a rerun with another part size starts over.
    part_size   INTEGER NOT NULL,
    PRIMARY KEY (job_id, name_id)
) STRICT;
