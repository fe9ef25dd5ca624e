-- The whole current schema of the homeserver: a new database gets exactly
-- this. It is also applied (idempotently) at every start of an existing one,
-- so only additive, idempotent statements belong here; what cannot be said
-- that way (changing or moving data, altering columns) is a numbered
-- migration in homeserver/storage/migrations/, applied once, in order, after
-- this file, each in its own transaction and recorded in schema_version
-- (homeserver/storage/database.py).

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

-- ------------------------------------------------------------- the event log
-- Append-only: rows never change. State that changes later (redacted by,
-- blocked rooms) lives in its own tables. The only way rows leave is
-- purge_room() in homeserver/storage/purge.py, which sets
-- homeserver.purging_room for its transaction and writes purge_audit.

CREATE TABLE IF NOT EXISTS rooms (
    room_id       text PRIMARY KEY,
    room_version  text NOT NULL,
    creator       text NOT NULL,
    created_ts    bigint NOT NULL
);

-- Stream positions come from stream_counter. A writer reserves its
-- positions and records the lowest in stream_inflight in one short
-- transaction, and deletes that row in its event transaction, so readers can
-- compute the highest position below which nothing is still being written.
-- Both tables are unlogged (no fsync); after a crash the counter is re-seeded
-- from max(events.stream_ordering).
CREATE UNLOGGED TABLE IF NOT EXISTS stream_counter (
    id   integer PRIMARY KEY,
    pos  bigint NOT NULL
);
-- The listening connection of every server process on this database: a
-- writer sends pg_notify only when another process is there to hear it.
CREATE UNLOGGED TABLE IF NOT EXISTS stream_listeners (
    backend_pid  integer PRIMARY KEY,
    started_ts   bigint NOT NULL
);

CREATE UNLOGGED TABLE IF NOT EXISTS stream_inflight (
    pos         bigint PRIMARY KEY,
    backend_pid integer NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    stream_ordering   bigint PRIMARY KEY,
    event_id          text NOT NULL UNIQUE,
    room_id           text NOT NULL,
    type              text NOT NULL,
    state_key         text,
    sender            text NOT NULL,
    depth             bigint NOT NULL,
    origin_server_ts  bigint NOT NULL,
    received_ts       bigint NOT NULL,
    json              text NOT NULL,          -- the PDU as received/created
    redacted_json     text,                   -- set when the content hash failed
    rejected_reason   text,                   -- auth failure: never part of state
    soft_failed       boolean NOT NULL DEFAULT false,
    outlier           boolean NOT NULL DEFAULT false,
    state_group       bigint,                 -- state after this event (NULL: outlier)
    txn_user_id       text,                   -- local sender's transaction id, for echo
    txn_device_id     text,
    txn_id            text
);
CREATE INDEX IF NOT EXISTS events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX IF NOT EXISTS events_room_topo ON events (room_id, depth, stream_ordering);
CREATE UNIQUE INDEX IF NOT EXISTS events_txn ON events (txn_user_id, txn_device_id, txn_id)
    WHERE txn_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS event_edges (
    event_id       text NOT NULL,
    prev_event_id  text NOT NULL,
    room_id        text NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX IF NOT EXISTS event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE IF NOT EXISTS event_auth (
    event_id  text NOT NULL,
    auth_id   text NOT NULL,
    room_id   text NOT NULL,
    PRIMARY KEY (event_id, auth_id)
);

-- State snapshots: a chain of deltas. A group lists only the entries that
-- differ from prev_group; after chain_length reaches the cap a full snapshot
-- (prev_group NULL) is written, so reads walk a bounded chain.
CREATE TABLE IF NOT EXISTS state_groups (
    group_id      bigint PRIMARY KEY,
    room_id       text NOT NULL,
    prev_group    bigint,
    chain_length  integer NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS state_group_seq;
CREATE TABLE IF NOT EXISTS state_group_entries (
    group_id   bigint NOT NULL,
    room_id    text NOT NULL,
    type       text NOT NULL,
    state_key  text NOT NULL,
    event_id   text,                      -- NULL: the key is absent from this state
    PRIMARY KEY (group_id, type, state_key)
);

CREATE TABLE IF NOT EXISTS purge_audit (
    room_id      text NOT NULL,
    purged_ts    bigint NOT NULL,
    purged_by    text NOT NULL,
    reason       text,
    event_count  bigint NOT NULL
);

CREATE OR REPLACE FUNCTION refuse_log_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND current_setting('homeserver.purging_room', true) = OLD.room_id THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the event log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$ LANGUAGE plpgsql;

-- Optimistic writers (one statement, no room lock) fail with this when the
-- room's head moved under them; they then retry under the lock.
CREATE OR REPLACE FUNCTION hs_require(ok boolean, what text) RETURNS boolean AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'hs_require: %', what;
    END IF;
    RETURN true;
END $$ LANGUAGE plpgsql;

-- An optimistic writer's premise (services/persister.py commit_plain): it
-- removes ALL the room's forward extremities, and no writer holds the room's
-- lock (0x6873 = persister._ROOM_LOCK_NS). Volatile, so it reads with a fresh
-- snapshot after taking the lock: a writer that committed between the
-- statement's start and the lock is seen.
CREATE OR REPLACE FUNCTION hs_head_is(room text, removed text[], added text[])
RETURNS boolean AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(26739, hashtext(room)) THEN
        RAISE EXCEPTION 'hs_require: room locked';
    END IF;
    IF EXISTS (SELECT 1 FROM forward_extremities WHERE room_id = room
               AND NOT (event_id = ANY(removed)) AND NOT (event_id = ANY(added))) THEN
        RAISE EXCEPTION 'hs_require: other extremities';
    END IF;
    RETURN true;
END $$ LANGUAGE plpgsql VOLATILE;

CREATE OR REPLACE FUNCTION refuse_log_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: TRUNCATE on % refused', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$ LANGUAGE plpgsql;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['events', 'event_edges', 'event_auth', 'state_groups',
                             'state_group_entries', 'rooms', 'purge_audit'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION refuse_log_change()', t || '_append_only', t);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_no_truncate', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_truncate()', t || '_no_truncate', t);
    END LOOP;
END $$;

-- --------------------------------------------------------------- projections
-- Everything below is derived from the log in the same transaction as the
-- append, and can be dropped and rebuilt (homeserver rebuild / verify).

CREATE TABLE IF NOT EXISTS current_state (
    room_id    text NOT NULL,
    type       text NOT NULL,
    state_key  text NOT NULL,
    event_id   text NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

CREATE TABLE IF NOT EXISTS room_members (
    room_id          text NOT NULL,
    user_id          text NOT NULL,
    membership       text NOT NULL,
    event_id         text NOT NULL,
    sender           text NOT NULL,
    stream_ordering  bigint NOT NULL,
    displayname      text,
    avatar_url       text,
    is_direct        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS room_members_user ON room_members (user_id, membership);

CREATE TABLE IF NOT EXISTS forward_extremities (
    room_id   text NOT NULL,
    event_id  text NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- The room's head: last stream position and greatest depth.
CREATE TABLE IF NOT EXISTS room_heads (
    room_id          text PRIMARY KEY,
    stream_ordering  bigint NOT NULL,
    max_depth        bigint NOT NULL
);

-- Room summary for the directory, /publicRooms and the admin API.
CREATE TABLE IF NOT EXISTS room_stats (
    room_id             text PRIMARY KEY,
    name                text,
    topic               text,
    canonical_alias     text,
    avatar_url          text,
    join_rule           text,
    history_visibility  text,
    guest_access        text,
    room_type           text,
    kind                text,
    joined_members      integer NOT NULL DEFAULT 0,
    invited_members     integer NOT NULL DEFAULT 0,
    local_joined        integer NOT NULL DEFAULT 0,
    last_event_ts       bigint
);

-- The per-user stream of membership changes, for /sync.
CREATE TABLE IF NOT EXISTS user_membership_stream (
    user_id          text NOT NULL,
    room_id          text NOT NULL,
    stream_ordering  bigint NOT NULL,
    membership       text NOT NULL,
    event_id         text NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
);

CREATE TABLE IF NOT EXISTS event_redactions (
    redacted_id   text NOT NULL,
    redaction_id  text NOT NULL,
    room_id       text NOT NULL,
    PRIMARY KEY (redacted_id, redaction_id)
);

-- ------------------------------------------------ local (non-event) data
-- Aliases and directory visibility are server-local in Matrix, not events.
CREATE TABLE IF NOT EXISTS room_aliases (
    alias       text PRIMARY KEY,
    room_id     text NOT NULL,
    creator     text NOT NULL,
    servers     text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS room_aliases_room ON room_aliases (room_id);

CREATE TABLE IF NOT EXISTS room_directory (
    room_id     text PRIMARY KEY,
    visibility  text NOT NULL
);

CREATE TABLE IF NOT EXISTS blocked_rooms (
    room_id     text PRIMARY KEY,
    blocked_by  text NOT NULL,
    blocked_ts  bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS forgotten_rooms (
    user_id  text NOT NULL,
    room_id  text NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

CREATE TABLE IF NOT EXISTS account_data (
    user_id          text NOT NULL,
    room_id          text NOT NULL DEFAULT '',   -- '' for global account data
    type             text NOT NULL,
    content          jsonb NOT NULL,
    stream_ordering  bigint NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);

-- ---------------------------------------------------- sync and ephemeral data
CREATE TABLE IF NOT EXISTS user_filters (
    user_id    text NOT NULL,
    filter_id  bigserial,
    filter     jsonb NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- Read receipts (m.read, m.read.private), one row per (room, type, user, thread).
CREATE TABLE IF NOT EXISTS receipts (
    room_id          text NOT NULL,
    receipt_type     text NOT NULL,
    user_id          text NOT NULL,
    thread_id        text NOT NULL DEFAULT '',
    event_id         text NOT NULL,
    ts               bigint NOT NULL,
    stream_ordering  bigint NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX IF NOT EXISTS receipts_stream ON receipts (room_id, stream_ordering);

-- Typing notifications: ephemeral, so unlogged; shared by every process.
CREATE UNLOGGED TABLE IF NOT EXISTS typing (
    room_id          text NOT NULL,
    user_id          text NOT NULL,
    expires_ts       bigint NOT NULL,
    stream_ordering  bigint NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS typing_stream ON typing (room_id, stream_ordering);

-- Stripped state shown with invites and knocks to rooms this server is not
-- in (filled from federation's invite_room_state).
CREATE TABLE IF NOT EXISTS invite_room_state (
    room_id   text NOT NULL,
    user_id   text NOT NULL,
    events    jsonb NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- ------------------------------------------- room kinds and lifecycle (local)
-- One one-to-one room per pair of users (user_a < user_b).
CREATE TABLE IF NOT EXISTS dm_pairs (
    user_a   text NOT NULL,
    user_b   text NOT NULL,
    room_id  text NOT NULL,
    PRIMARY KEY (user_a, user_b)
);

-- Invites that the server withdraws when they expire.
CREATE TABLE IF NOT EXISTS invite_expiry (
    room_id     text NOT NULL,
    user_id     text NOT NULL,
    inviter     text NOT NULL,
    event_id    text NOT NULL,
    expires_ts  bigint NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS invite_expiry_due ON invite_expiry (expires_ts);

-- Every operator action, for the record.
CREATE TABLE IF NOT EXISTS admin_audit (
    id        bigserial PRIMARY KEY,
    ts        bigint NOT NULL,
    admin     text NOT NULL,
    action    text NOT NULL,
    target    text,
    details   jsonb NOT NULL DEFAULT '{}'
);

-- ================================================================ federation
-- Owned by homeserver/storage/federation.py. Remote servers' signing keys,
-- the outbound queue (kept here so nothing is lost on restart), per
-- destination backoff, and the transactions already received.

-- One row per (server, key): current keys are valid until
-- min(valid_until_ts, fetched + 7 days); old keys until their expired_ts.
CREATE TABLE IF NOT EXISTS federation_server_keys (
    server_name     text NOT NULL,
    key_id          text NOT NULL,
    verify_key      text NOT NULL,
    valid_until_ts  bigint NOT NULL,
    is_old          boolean NOT NULL DEFAULT false,
    fetched_ts      bigint NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The last signed /_matrix/key/v2/server response of each server, served
-- again (with our signature added) by the notary API.
CREATE TABLE IF NOT EXISTS federation_key_responses (
    server_name     text PRIMARY KEY,
    response        text NOT NULL,
    valid_until_ts  bigint NOT NULL,
    fetched_ts      bigint NOT NULL
);

-- The outbound queue: PDUs (by event id) and EDUs (by body) per destination,
-- sent in id order, deleted once the destination acknowledged them.
CREATE TABLE IF NOT EXISTS federation_outbox (
    id           bigserial PRIMARY KEY,
    destination  text NOT NULL,
    event_id     text,
    edu          text,
    created_ts   bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS federation_outbox_dest ON federation_outbox (destination, id);

-- Backoff and the sending lease (one process sends to a destination at a time).
CREATE TABLE IF NOT EXISTS federation_destinations (
    destination      text PRIMARY KEY,
    retry_after_ts   bigint NOT NULL DEFAULT 0,
    backoff_ms       bigint NOT NULL DEFAULT 0,
    failures         integer NOT NULL DEFAULT 0,
    last_success_ts  bigint,
    lease_owner      text,
    lease_until_ts   bigint NOT NULL DEFAULT 0
);

-- Transactions received, so a retried PUT /send is answered, not re-applied.
CREATE TABLE IF NOT EXISTS federation_received_txns (
    origin       text NOT NULL,
    txn_id       text NOT NULL,
    response     text NOT NULL,
    received_ts  bigint NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- Backfilled (older) events take negative stream positions from here, so
-- they sort before everything the room already has and never reach /sync.
CREATE SEQUENCE IF NOT EXISTS federation_backfill_seq;

-- The state before an event whose prev events are not all in our timeline
-- (joins through send_join, gaps closed with /state_ids), so /state_ids at
-- that event can be answered.
CREATE TABLE IF NOT EXISTS federation_state_before (
    event_id     text PRIMARY KEY,
    state_group  bigint NOT NULL
);

-- ------------------------------------------------------- state-reset alarms
-- A resolution that moved a current state key back to an ancestor of its
-- event, or dropped it (services/room_head.py). Diagnostic, not derived.
CREATE TABLE IF NOT EXISTS state_reset_alarms (
    room_id       text NOT NULL,
    type          text NOT NULL,
    state_key     text NOT NULL,
    old_event_id  text NOT NULL,
    new_event_id  text,
    ts            bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS state_reset_alarms_room ON state_reset_alarms (room_id);

-- Events adopted as a room's whole head (our join through a resident, an
-- out-of-band membership): the extremities before them stop being ones.
-- Part of the log (append-only), read by the projection rebuild.
CREATE TABLE IF NOT EXISTS adopted_heads (
    event_id  text PRIMARY KEY,
    room_id   text NOT NULL
);

-- ------------------------------------------------------------------- search
-- Full-text search over the log itself (storage/search.py): the spec's keys
-- content.body / content.name / content.topic. Keep the expression and the
-- predicate identical to storage/search.py's DOCUMENT and _SEARCHABLE.
CREATE INDEX IF NOT EXISTS events_fulltext ON events USING gin ((
    to_tsvector('english'::regconfig, COALESCE((json::jsonb)->'content'->>'body', '')
    || ' ' || COALESCE((json::jsonb)->'content'->>'name', '') || ' '
    || COALESCE((json::jsonb)->'content'->>'topic', ''))
)) WHERE type IN ('m.room.message', 'm.room.name', 'm.room.topic') AND NOT outlier
    AND NOT soft_failed AND rejected_reason IS NULL;

-- ------------------------------------------------------------------ reports
-- Rooms and events reported by users (POST /rooms/{id}/report[/{eventId}]),
-- listed in the operator API.
CREATE TABLE IF NOT EXISTS reports (
    id        bigserial PRIMARY KEY,
    ts        bigint NOT NULL,
    room_id   text NOT NULL,
    event_id  text,
    reporter  text NOT NULL,
    reason    text,
    score     integer
);
CREATE INDEX IF NOT EXISTS events_room_ts ON events (room_id, origin_server_ts);

-- ----------------------------------------------------------------- presence
-- The latest presence of each user (local: set by clients; remote: from
-- m.presence EDUs). A change takes a stream position, for /sync.
CREATE TABLE IF NOT EXISTS presence (
    user_id           text PRIMARY KEY,
    state             text NOT NULL,
    status_msg        text,
    last_active_ts    bigint NOT NULL,
    currently_active  boolean NOT NULL DEFAULT false,
    stream_ordering   bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS presence_stream ON presence (stream_ordering);

-- (Issue 16's one-time wipe of remote keys cached under the old trust rules
-- is migration 0002, homeserver/storage/migrations/.)
-- ============================================== event relations (client-rooms)
-- Owned by homeserver/storage/relations.py. A projection of the log: one row
-- per accepted event whose content carries an ``m.relates_to`` with a string
-- rel_type and event_id (Client-Server API "Forming relationships between
-- events"). It is derived by a trigger on the events table, so every write
-- path (the persister's transaction and the one-statement message append)
-- fills it in the append's own transaction; ``homeserver rebuild``/``verify``
-- derive it again from the same view. Redacted relations stay in the table
-- and are left out when read (event_redactions), as rows never change.
CREATE TABLE IF NOT EXISTS event_relations (
    event_id          text PRIMARY KEY,
    room_id           text NOT NULL,
    relates_to_id     text NOT NULL,
    rel_type          text NOT NULL,
    type              text NOT NULL,
    sender            text NOT NULL,
    stream_ordering   bigint NOT NULL,
    origin_server_ts  bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS event_relations_parent
    ON event_relations (relates_to_id, rel_type, stream_ordering);
CREATE INDEX IF NOT EXISTS event_relations_threads
    ON event_relations (room_id, stream_ordering) WHERE rel_type = 'm.thread';

-- An event's relation (its content's m.relates_to) when it has a usable one,
-- else NULL: the one definition the trigger, the rebuild and the seed share.
CREATE OR REPLACE FUNCTION hs_relation(pdu text, redacted_pdu text) RETURNS jsonb AS $$
    SELECT CASE WHEN jsonb_typeof(r -> 'event_id') = 'string'
                 AND jsonb_typeof(r -> 'rel_type') = 'string' THEN r END
    FROM (SELECT COALESCE(redacted_pdu, pdu)::jsonb -> 'content' -> 'm.relates_to' AS r) x
$$ LANGUAGE sql IMMUTABLE;

-- Statement-level, over the inserted rows alone (no read of events): rows
-- without the key (nearly all) cost one strpos each and no JSON parsing.
CREATE OR REPLACE FUNCTION hs_derive_relations() RETURNS trigger AS $$
BEGIN
    INSERT INTO event_relations
        SELECT n.event_id, n.room_id, r.rel ->> 'event_id', r.rel ->> 'rel_type', n.type,
               n.sender, n.stream_ordering, n.origin_server_ts
        FROM new_events n, LATERAL (SELECT hs_relation(n.json, n.redacted_json) AS rel) r
        WHERE strpos(n.json, 'm.relates_to') > 0 AND r.rel IS NOT NULL
          AND NOT n.outlier AND NOT n.soft_failed AND n.rejected_reason IS NULL
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

-- The relation rows the log implies (the rebuild and the seed read it).
CREATE OR REPLACE VIEW event_relations_derived AS
    SELECT e.event_id, e.room_id, r.rel ->> 'event_id' AS relates_to_id,
           r.rel ->> 'rel_type' AS rel_type, e.type, e.sender, e.stream_ordering,
           e.origin_server_ts
    FROM events e, LATERAL (SELECT hs_relation(e.json, e.redacted_json) AS rel) r
    WHERE strpos(e.json, 'm.relates_to') > 0 AND r.rel IS NOT NULL
      AND NOT e.outlier AND NOT e.soft_failed AND e.rejected_reason IS NULL;

DROP TRIGGER IF EXISTS events_relations ON events;
CREATE TRIGGER events_relations AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION hs_derive_relations();
-- Databases that had events before this table existed: migration 0003.

-- ---------------------------------------------------------------- faults
-- Who this database belongs to, written at the first start: every command
-- reads the server name from here, and a server configured with another
-- name is refused (a database's ids all carry the name it was made with).
CREATE TABLE IF NOT EXISTS server_identity (
    only_row        boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    server_name     text NOT NULL,
    signing_key_id  text NOT NULL,
    created_ts      bigint NOT NULL
);
-- ------------------------------------------------------------------------
-- Push rules, notifications and pushers (services/push.py).
-- A user's own rules and changes to server-default rules, one document
-- per user; ``version`` moves on every change (caches of compiled rules).
CREATE TABLE IF NOT EXISTS push_rules (
    user_id  text PRIMARY KEY,
    doc      jsonb NOT NULL,
    version  bigint NOT NULL DEFAULT 1
);
-- Events that notify a user (the actions of the rule that matched), found
-- at read time: push_evaluated says how far each (user, room) was
-- evaluated, written in the same statement as the rows it found.
CREATE TABLE IF NOT EXISTS push_actions (
    user_id          text NOT NULL,
    room_id          text NOT NULL,
    stream_ordering  bigint NOT NULL,
    event_id         text NOT NULL,
    thread_id        text NOT NULL,  -- 'main' or the thread root's event id
    highlight        boolean NOT NULL,
    actions          jsonb NOT NULL,
    ts               bigint NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
);
CREATE INDEX IF NOT EXISTS push_actions_room ON push_actions (user_id, room_id, stream_ordering);
CREATE TABLE IF NOT EXISTS push_evaluated (
    user_id  text NOT NULL,
    room_id  text NOT NULL,
    upto     bigint NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
-- Unread counts materialised at a position (derived; storage/push.py): a
-- user who never reads a busy room would otherwise have every /sync count
-- all their notifications since the last receipt. Valid while the user's
-- receipts in the room are still those of ``sig``; counts are per thread,
-- {"thread": [notifications, highlights]}.
CREATE TABLE IF NOT EXISTS push_summary (
    user_id  text NOT NULL,
    room_id  text NOT NULL,
    pos      bigint NOT NULL,
    sig      text NOT NULL,
    counts   jsonb NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
-- Pushers (POST /pushers/set); delivery to push gateways comes later.
CREATE TABLE IF NOT EXISTS pushers (
    user_id              text NOT NULL,
    app_id               text NOT NULL,
    pushkey              text NOT NULL,
    kind                 text NOT NULL,
    app_display_name     text NOT NULL,
    device_display_name  text NOT NULL,
    profile_tag          text,
    lang                 text NOT NULL,
    data                 jsonb NOT NULL,
    created_ts           bigint NOT NULL,
    PRIMARY KEY (app_id, pushkey, user_id)
);
CREATE INDEX IF NOT EXISTS pushers_user ON pushers (user_id);

-- ===================================================== invite rejections owed
-- An invite rejected while no server of the room could be reached: the leave
-- was made locally (out of band, leave_event_id); the rejection is sent
-- through ``servers`` (make_leave/send_leave) once one answers.
CREATE TABLE IF NOT EXISTS federation_pending_rejections (
    user_id          text NOT NULL,
    room_id          text NOT NULL,
    leave_event_id   text NOT NULL,
    servers          text[] NOT NULL,
    content          text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    retry_after_ts   bigint NOT NULL,
    created_ts       bigint NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- ------------------------------------------------------------ rate limits
-- Buckets of the limits shared by all processes (login, registration):
-- ``level`` actions as of ``at`` (epoch seconds); ``empty_at`` is when the
-- bucket has drained, after which the row may be deleted.
CREATE TABLE IF NOT EXISTS rate_limit_buckets (
    name      text NOT NULL,
    key       text NOT NULL,
    level     double precision NOT NULL,
    at        double precision NOT NULL,
    empty_at  double precision NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE INDEX IF NOT EXISTS rate_limit_buckets_empty ON rate_limit_buckets (empty_at);

-- Registration tokens (m.login.registration_token), managed by operators.
-- ``pending`` counts registrations under way with the token; a token is
-- usable while pending + completed < uses_allowed (NULL: unlimited) and
-- before expiry_time (ms, NULL: never).
CREATE TABLE IF NOT EXISTS registration_tokens (
    token         text PRIMARY KEY,
    uses_allowed  integer,
    pending       integer NOT NULL DEFAULT 0,
    completed     integer NOT NULL DEFAULT 0,
    expiry_time   bigint,
    created_ts    bigint NOT NULL
);
