-- The whole database schema of the homeserver, applied idempotently at every
-- start (homeserver/storage/database.py). Only additive, idempotent statements
-- belong here; the applied version is recorded in schema_version.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    applied_ts  bigint NOT NULL
);

-- ---------------------------------------------------------------- accounts
CREATE TABLE IF NOT EXISTS users (
    user_id        text PRIMARY KEY,
    password_hash  text,
    is_admin       boolean NOT NULL DEFAULT false,
    is_guest       boolean NOT NULL DEFAULT false,
    deactivated    boolean NOT NULL DEFAULT false,
    created_ts     bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS profiles (
    user_id      text PRIMARY KEY REFERENCES users (user_id),
    displayname  text,
    avatar_url   text
);

CREATE TABLE IF NOT EXISTS devices (
    user_id       text NOT NULL REFERENCES users (user_id),
    device_id     text NOT NULL,
    display_name  text,
    created_ts    bigint NOT NULL,
    last_seen_ts  bigint,
    PRIMARY KEY (user_id, device_id)
);

-- Access tokens are stored only as their SHA-256: a leaked table grants nothing.
CREATE TABLE IF NOT EXISTS access_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (user_id),
    device_id   text NOT NULL,
    created_ts  bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS access_tokens_device ON access_tokens (user_id, device_id);
