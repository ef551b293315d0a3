-- Schema version 13: verifiers of exclusive creates (NFSv3 CREATE EXCLUSIVE, NFSv4.1 OPEN
-- EXCLUSIVE4_1), kept apart from the file's times. A retransmitted create whose verifier
-- matches opens the file it made, also after a restart, while the file shows the time it was
-- made. Written in the create's own transaction; rows older than an hour are pruned by the next
-- exclusive create (no client retransmits a create that long), and go with their inode.
CREATE TABLE create_verifiers (
    inode      INTEGER PRIMARY KEY REFERENCES inodes (id) ON DELETE CASCADE,
    verifier   BLOB NOT NULL,
    made_unix  INTEGER NOT NULL
) STRICT;
CREATE INDEX create_verifiers_made ON create_verifiers (made_unix);
