-- Schema version 1: gateway identity and settings, and the record of integrity failures.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

-- Every chunk or object that failed verification, so `status` can report it after the fact.
CREATE TABLE integrity_events (
    id       INTEGER PRIMARY KEY,
    at_unix  INTEGER NOT NULL,
    object   TEXT NOT NULL,
    reason   TEXT NOT NULL
) STRICT;
