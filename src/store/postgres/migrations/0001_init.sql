-- kirimhook's PostgreSQL schema, version 1. `__SCHEMA__` is replaced by the quoted schema name.

-- One sequence for events and quarantine: a seq names one delivery, never reused.
CREATE SEQUENCE __SCHEMA__.seq AS bigint;

-- Admitted events: the record as `store::record` encodes it, plus the columns a replay filters on.
CREATE TABLE __SCHEMA__.events (
    seq bigint PRIMARY KEY,
    received_at_ms bigint NOT NULL,
    record bytea NOT NULL,
    event_type text,
    source text,
    phone_number_ids text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX events_received ON __SCHEMA__.events (received_at_ms, seq);

-- Authentic deliveries with an unrecognised body, kept for an operator.
CREATE TABLE __SCHEMA__.quarantine (
    seq bigint PRIMARY KEY,
    received_at_ms bigint NOT NULL,
    record bytea NOT NULL
);

-- Dedupe keys, and when they were first seen (the sweep forgets old ones).
CREATE TABLE __SCHEMA__.dedupe (
    key text PRIMARY KEY,
    first_seen_ms bigint NOT NULL
);
CREATE INDEX dedupe_first_seen ON __SCHEMA__.dedupe (first_seen_ms);

-- SHA-256 digests of signed content (`t` and body) admitted before.
CREATE TABLE __SCHEMA__.signatures (
    digest bytea PRIMARY KEY,
    first_seen_ms bigint NOT NULL
);
CREATE INDEX signatures_first_seen ON __SCHEMA__.signatures (first_seen_ms);

-- What each sink owes: one row per (sink, event), with its attempts and its lease.
-- No foreign key to events (the admission path stays cheap); a claim drops a row whose event
-- is gone, with a warning.
CREATE TABLE __SCHEMA__.queue (
    sink text NOT NULL,
    seq bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    first_attempt_ms bigint NOT NULL DEFAULT 0,
    last_attempt_ms bigint NOT NULL DEFAULT 0,
    due_ms bigint NOT NULL DEFAULT 0,
    error_status integer,
    error_message text,
    lease_owner text,
    lease_until_ms bigint NOT NULL DEFAULT 0,
    lease_gen bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, seq)
);
CREATE INDEX queue_seq ON __SCHEMA__.queue (seq);

-- Events a sink gave up on. The event is kept while a dead letter refers to it.
CREATE TABLE __SCHEMA__.dead_letters (
    sink text NOT NULL,
    seq bigint NOT NULL REFERENCES __SCHEMA__.events (seq),
    attempts integer NOT NULL,
    first_attempt_ms bigint NOT NULL,
    last_attempt_ms bigint NOT NULL,
    next_attempt_ms bigint NOT NULL,
    error_status integer,
    error_message text,
    PRIMARY KEY (sink, seq)
);
CREATE INDEX dead_letters_seq ON __SCHEMA__.dead_letters (seq);
