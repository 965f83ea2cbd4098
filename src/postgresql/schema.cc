#include "src/postgresql/schema.h"

#include <iterator>
#include <string>

#include "src/common/strings.h"

namespace pac::concurrency::internal {
namespace {

// Migration 1: the specification's tables plus what the driver needs.
constexpr const char* kMigration1 = R"SQL(
CREATE TABLE IF NOT EXISTS concurrency_slots (
    id SERIAL PRIMARY KEY,
    repository_key VARCHAR(255) NOT NULL,
    pipeline_run_key VARCHAR(255) NOT NULL,
    state VARCHAR(50) NOT NULL DEFAULT 'running',
    acquired_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    UNIQUE(repository_key, pipeline_run_key)
);
-- Added by pac-concurrency: the lease, its fencing token, and the queue order.
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS lease_id TEXT UNIQUE;
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS fencing_token BIGINT;
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS creation_time TIMESTAMP WITH TIME ZONE;
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS queue_seq BIGINT;
CREATE INDEX IF NOT EXISTS concurrency_slots_queue_idx
    ON concurrency_slots (repository_key, creation_time, queue_seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS concurrency_slots_expiry_idx
    ON concurrency_slots (expires_at) WHERE state = 'running';

CREATE TABLE IF NOT EXISTS repository_states (
    id SERIAL PRIMARY KEY,
    repository_key VARCHAR(255) NOT NULL UNIQUE,
    state VARCHAR(50) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS pipeline_run_states (
    id SERIAL PRIMARY KEY,
    pipeline_run_key VARCHAR(255) NOT NULL UNIQUE,
    state VARCHAR(50) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

-- One row per repository: its limit, and the row every admission and
-- release of the repository locks (FOR UPDATE), which makes count-and-grant
-- one atomic step.
CREATE TABLE IF NOT EXISTS pac_repositories (
    repository_key VARCHAR(255) PRIMARY KEY,
    concurrency_limit INTEGER NOT NULL DEFAULT 0,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE SEQUENCE IF NOT EXISTS pac_fencing_seq;
CREATE SEQUENCE IF NOT EXISTS pac_queue_seq;
)SQL";

// Migration 2: keys as long as the contract allows (63 + 1 + 253
// characters: a namespace and a name), beyond the specification's 255.
// Widening a VARCHAR rewrites no row. pac_acquire and pac_release take a
// request id (and pac_acquire p_keep): their previous signatures go (a
// call would be ambiguous beside the new ones). pac_outcomes keeps answers.
constexpr const char* kMigration2 = R"SQL(
DROP FUNCTION IF EXISTS pac_acquire(TEXT, TEXT, INTEGER, TIMESTAMPTZ, BOOLEAN,
                                    BOOLEAN, INTERVAL);
DROP FUNCTION IF EXISTS pac_release(TEXT, TEXT, TEXT, INTERVAL);
-- Answers kept by request id (pac_kept). Unlogged: no WAL per release;
-- a crash empties it, and a retry then answers as before this table.
CREATE UNLOGGED TABLE IF NOT EXISTS pac_outcomes (
    request_id TEXT PRIMARY KEY,
    result JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL
);
ALTER TABLE concurrency_slots ALTER COLUMN repository_key TYPE VARCHAR(320),
                              ALTER COLUMN pipeline_run_key TYPE VARCHAR(320);
ALTER TABLE repository_states ALTER COLUMN repository_key TYPE VARCHAR(320);
ALTER TABLE pipeline_run_states ALTER COLUMN pipeline_run_key TYPE VARCHAR(320);
ALTER TABLE pac_repositories ALTER COLUMN repository_key TYPE VARCHAR(320);
)SQL";

// Migration 3: no table changes; pac_import is among the functions.
constexpr const char* kMigration3 = R"SQL(
SELECT 1;
)SQL";

// Migration 4: no table changes; pac_notify defers its notifications to
// pac_flush_notify for sessions that ask (pac.defer_notify).
constexpr const char* kMigration4 = R"SQL(
SELECT 1;
)SQL";

// Migration 5: no table changes; pac_import numbers the queue once per call.
constexpr const char* kMigration5 = R"SQL(
SELECT 1;
)SQL";

// The functions, as this build has them: (re)created whenever the schema
// moves to this build's version.
constexpr const char* kFunctions = R"SQL(
-- Every function below counts and grants under the repository row's lock
-- and relies on READ COMMITTED: each statement sees what committed before
-- it, so a caller that waited for the lock counts the grants made
-- meanwhile. Under REPEATABLE READ or SERIALIZABLE it would count from a
-- snapshot taken before it waited. The driver sets READ COMMITTED on its
-- connections; this refuses any other.
CREATE OR REPLACE FUNCTION pac_check_isolation() RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'pac-concurrency needs READ COMMITTED transactions, not %',
      upper(current_setting('transaction_isolation'))
      USING ERRCODE = 'invalid_transaction_state';
  END IF;
END $$;

-- A NOTIFY takes a database-wide lock at commit and holds it through the
-- commit's WAL flush, so transactions that notify commit one at a time,
-- never in a group: at 16 clients that made admission a third as fast
-- (docs/postgresql.md, "Notifications"). A session with pac.defer_notify
-- on (the driver's) collects the payloads in a session setting instead,
-- which the transaction's commit keeps and its rollback drops, and sends
-- them with pac_flush_notify in a transaction of its own after the
-- commit: that one writes no WAL, so it holds the lock only briefly.
-- Other sessions (a driver of an earlier version) notify at once.
CREATE OR REPLACE FUNCTION pac_notify(p_repo TEXT, p_type TEXT, p_run TEXT)
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
  v_payload TEXT := p_repo || E'\t' || p_type || E'\t' || coalesce(p_run, '');
  v_pending TEXT;
BEGIN
  IF current_setting('pac.defer_notify', true) = 'on' THEN
    v_pending := coalesce(current_setting('pac.pending_notify', true), '');
    IF length(v_pending) > 8192 THEN
      -- A large change (an import admitting thousands): what is collected
      -- goes with this transaction's commit, as without deferral, rather
      -- than into an ever longer setting copied at every call.
      PERFORM pac_flush_notify();
      v_pending := '';
    END IF;
    PERFORM set_config('pac.pending_notify', v_pending || v_payload || E'\n',
                       false);
  ELSE
    PERFORM pg_notify('pac_concurrency', v_payload);
  END IF;
END $$;

-- Sends the notifications pac_notify deferred, in order; returns how many.
CREATE OR REPLACE FUNCTION pac_flush_notify() RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
  v_pending TEXT := current_setting('pac.pending_notify', true);
  v_payload TEXT;
  n INTEGER := 0;
BEGIN
  IF v_pending IS NULL OR v_pending = '' THEN
    RETURN 0;
  END IF;
  PERFORM set_config('pac.pending_notify', '', false);
  FOREACH v_payload IN ARRAY string_to_array(rtrim(v_pending, E'\n'), E'\n') LOOP
    PERFORM pg_notify('pac_concurrency', v_payload);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- Reclaims the expired leases of a repository whose pac_repositories row the
-- caller holds locked, then admits queue heads into free slots, oldest first.
CREATE OR REPLACE FUNCTION pac_promote(p_repo TEXT, p_limit INTEGER,
                                       p_ttl INTERVAL, p_now TIMESTAMPTZ)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  r RECORD;
  n INTEGER;
BEGIN
  FOR r IN DELETE FROM concurrency_slots s
           WHERE s.repository_key = p_repo AND s.state = 'running'
             AND s.expires_at <= p_now
           RETURNING s.pipeline_run_key LOOP
    PERFORM pac_notify(p_repo, 'expired', r.pipeline_run_key);
  END LOOP;
  SELECT count(*) INTO n FROM concurrency_slots s
   WHERE s.repository_key = p_repo AND s.state = 'running';
  WHILE p_limit = 0 OR n < p_limit LOOP
    UPDATE concurrency_slots s
       SET state = 'running', lease_id = gen_random_uuid()::text,
           fencing_token = nextval('pac_fencing_seq'), acquired_at = p_now,
           expires_at = p_now + p_ttl, updated_at = p_now
     WHERE s.id = (SELECT q.id FROM concurrency_slots q
                    WHERE q.repository_key = p_repo AND q.state = 'queued'
                    ORDER BY q.creation_time, q.queue_seq LIMIT 1)
    RETURNING s.pipeline_run_key, s.lease_id, s.acquired_at, s.expires_at,
              s.fencing_token INTO r;
    EXIT WHEN NOT FOUND;
    n := n + 1;
    PERFORM pac_notify(p_repo, 'admitted', r.pipeline_run_key);
    o_kind := 'admitted'; o_run := r.pipeline_run_key; o_lease := r.lease_id;
    o_acquired := r.acquired_at; o_expires := r.expires_at;
    o_token := r.fencing_token; o_pos := 0;
    RETURN NEXT;
  END LOOP;
END $$;

-- Admission, in one statement: lock the repository row, record its limit
-- (with p_keep, only if none is recorded: the recorded one is kept),
-- reclaim expired leases and admit the queue, then grant, find or queue the
-- caller. p_run NULL only sets the limit. Rows: 'admitted' for others,
-- then one of 'acquired', 'queued' (o_pos) or 'full' for the caller.
CREATE OR REPLACE FUNCTION pac_acquire_step(p_repo TEXT, p_run TEXT,
                                            p_limit INTEGER,
                                            p_creation TIMESTAMPTZ,
                                            p_enqueue BOOLEAN, p_adopt BOOLEAN,
                                            p_ttl INTERVAL, p_keep BOOLEAN)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_old INTEGER;
  v_state TEXT;
  v_count INTEGER;
  v_expired BOOLEAN;
  v_queued BOOLEAN;
  r RECORD;
BEGIN
  PERFORM pac_check_isolation();
  -- Lock the repository's row, inserting it first if there is none. The
  -- row may be deleted (a cleanup) between the insert and the lock: then
  -- insert it again, until this call holds it.
  LOOP
    SELECT t.concurrency_limit INTO v_old FROM pac_repositories t
     WHERE t.repository_key = p_repo FOR UPDATE;
    EXIT WHEN FOUND;
    INSERT INTO pac_repositories (repository_key, concurrency_limit)
         VALUES (p_repo, p_limit) ON CONFLICT (repository_key) DO NOTHING;
  END LOOP;
  IF p_keep THEN
    p_limit := v_old;
  END IF;
  IF v_old IS DISTINCT FROM p_limit THEN
    UPDATE pac_repositories t SET concurrency_limit = p_limit, updated_at = v_now
     WHERE t.repository_key = p_repo;
    PERFORM pac_notify(p_repo, 'limit', NULL);
  END IF;
  -- One look at the repository's rows: the live leases, and whether there
  -- is an expired lease to reclaim or a queue to admit into a free slot.
  -- Only then pac_promote (most calls have neither).
  SELECT count(*) FILTER (WHERE s.state = 'running' AND s.expires_at > v_now),
         coalesce(bool_or(s.state = 'running' AND s.expires_at <= v_now), false),
         coalesce(bool_or(s.state = 'queued'), false)
    INTO v_count, v_expired, v_queued
    FROM concurrency_slots s WHERE s.repository_key = p_repo;
  IF v_expired OR (v_queued AND (p_limit = 0 OR v_count < p_limit)) THEN
    RETURN QUERY SELECT * FROM pac_promote(p_repo, p_limit, p_ttl, v_now);
    SELECT count(*) FILTER (WHERE s.state = 'running'),
           coalesce(bool_or(s.state = 'queued'), false)
      INTO v_count, v_queued
      FROM concurrency_slots s WHERE s.repository_key = p_repo;
  END IF;
  IF p_run IS NULL THEN
    RETURN;
  END IF;

  SELECT s.state, s.lease_id, s.acquired_at, s.expires_at, s.fencing_token
    INTO r FROM concurrency_slots s
   WHERE s.repository_key = p_repo AND s.pipeline_run_key = p_run;
  v_state := CASE WHEN FOUND THEN r.state ELSE NULL END;
  IF v_state = 'running' THEN
    o_kind := 'acquired'; o_run := p_run; o_lease := r.lease_id;
    o_acquired := r.acquired_at; o_expires := r.expires_at;
    o_token := r.fencing_token; o_pos := 0;
    RETURN NEXT;
    RETURN;
  END IF;

  IF p_adopt OR ((p_limit = 0 OR v_count < p_limit) AND NOT v_queued) THEN
    INSERT INTO concurrency_slots AS s
           (repository_key, pipeline_run_key, state, acquired_at, expires_at,
            created_at, updated_at, lease_id, fencing_token, creation_time)
    VALUES (p_repo, p_run, 'running', v_now, v_now + p_ttl, v_now, v_now,
            gen_random_uuid()::text, nextval('pac_fencing_seq'),
            coalesce(p_creation, v_now))
    ON CONFLICT (repository_key, pipeline_run_key) DO UPDATE
       SET state = 'running', acquired_at = EXCLUDED.acquired_at,
           expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at,
           lease_id = EXCLUDED.lease_id, fencing_token = EXCLUDED.fencing_token,
           queue_seq = NULL
    RETURNING s.lease_id, s.acquired_at, s.expires_at, s.fencing_token INTO r;
    o_kind := 'acquired'; o_run := p_run; o_lease := r.lease_id;
    o_acquired := r.acquired_at; o_expires := r.expires_at;
    o_token := r.fencing_token; o_pos := 0;
    RETURN NEXT;
    RETURN;
  END IF;

  IF v_state IS NULL THEN
    IF NOT p_enqueue THEN
      o_kind := 'full'; o_run := p_run; o_pos := 0;
      RETURN NEXT;
      RETURN;
    END IF;
    INSERT INTO concurrency_slots
           (repository_key, pipeline_run_key, state, acquired_at, expires_at,
            created_at, updated_at, creation_time, queue_seq)
    VALUES (p_repo, p_run, 'queued', NULL, 'infinity', v_now, v_now,
            coalesce(p_creation, v_now), nextval('pac_queue_seq'));
  END IF;
  SELECT count(*) INTO o_pos
    FROM concurrency_slots q, concurrency_slots me
   WHERE me.repository_key = p_repo AND me.pipeline_run_key = p_run
     AND q.repository_key = p_repo AND q.state = 'queued'
     AND (q.creation_time, q.queue_seq) <= (me.creation_time, me.queue_seq);
  o_kind := 'queued'; o_run := p_run;
  RETURN NEXT;
END $$;

-- Release, in one statement: by lease id (only that lease) or by key (the
-- run's lease, or its queue entry), then admit the queue head into the
-- freed slot. Rows: 'released' or 'dequeued' for the caller, 'admitted' for
-- the runs that took the slot.
CREATE OR REPLACE FUNCTION pac_release_step(p_lease TEXT, p_run TEXT,
                                            p_repo TEXT, p_ttl INTERVAL)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_repo TEXT := p_repo;
  v_run TEXT := p_run;
  v_limit INTEGER;
  v_state TEXT;
  r RECORD;
BEGIN
  PERFORM pac_check_isolation();
  IF p_lease IS NOT NULL THEN
    SELECT s.repository_key, s.pipeline_run_key INTO r
      FROM concurrency_slots s WHERE s.lease_id = p_lease;
    IF NOT FOUND THEN
      RETURN;
    END IF;
    IF (p_run IS NOT NULL AND r.pipeline_run_key <> p_run) OR
       (p_repo IS NOT NULL AND r.repository_key <> p_repo) THEN
      RETURN;
    END IF;
    v_repo := r.repository_key;
    v_run := r.pipeline_run_key;
  END IF;
  SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
   WHERE t.repository_key = v_repo FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  IF p_lease IS NOT NULL THEN
    DELETE FROM concurrency_slots s
     WHERE s.lease_id = p_lease AND s.state = 'running'
    RETURNING s.state INTO v_state;
  ELSE
    DELETE FROM concurrency_slots s
     WHERE s.repository_key = v_repo AND s.pipeline_run_key = v_run
    RETURNING s.state INTO v_state;
  END IF;
  IF v_state = 'running' THEN
    PERFORM pac_notify(v_repo, 'released', v_run);
    o_kind := 'released'; o_run := v_run; o_pos := 0;
    RETURN NEXT;
  ELSIF v_state = 'queued' THEN
    o_kind := 'dequeued'; o_run := v_run; o_pos := 0;
    RETURN NEXT;
  END IF;
  IF EXISTS (SELECT 1 FROM concurrency_slots q
              WHERE q.repository_key = v_repo AND q.state = 'queued') THEN
    RETURN QUERY SELECT * FROM pac_promote(v_repo, v_limit, p_ttl, v_now);
  END IF;
END $$;

-- An import's step for one repository (ImportRuns), in one statement: the
-- limit recorded as pac_acquire_step records it (p_set false: the recorded
-- one is kept), the running runs given slots (above the limit too), the
-- waiting runs queued in the given order with p_times (a run the table
-- holds keeps its lease or its place), then the queue admitted into free
-- slots. Rows: 'admitted' for every run the step admitted from the queue;
-- then 'running' with the lease of each p_running run, in order; then for
-- each p_waiting run in order 'held' (its lease) or 'queued' (o_pos, with
-- o_acquired its creation time, o_expires its enqueue time and o_token its
-- sequence).
CREATE OR REPLACE FUNCTION pac_import(p_repo TEXT, p_limit INTEGER,
                                      p_set BOOLEAN, p_running TEXT[],
                                      p_waiting TEXT[], p_times TIMESTAMPTZ[],
                                      p_ttl INTERVAL)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_limit INTEGER;
  v_seqs BIGINT[];
  v_places JSONB;
  r RECORD;
BEGIN
  -- Locks the repository row until the commit; reclaims expired leases.
  RETURN QUERY SELECT * FROM pac_acquire_step(p_repo, NULL, p_limit, NULL,
                                              true, false, p_ttl, NOT p_set);
  SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
   WHERE t.repository_key = p_repo;
  FOR r IN UPDATE concurrency_slots s
              SET state = 'running', lease_id = gen_random_uuid()::text,
                  fencing_token = nextval('pac_fencing_seq'),
                  acquired_at = v_now, expires_at = v_now + p_ttl,
                  updated_at = v_now, queue_seq = NULL
            WHERE s.repository_key = p_repo AND s.state = 'queued'
              AND s.pipeline_run_key = ANY (p_running)
        RETURNING s.pipeline_run_key LOOP
    PERFORM pac_notify(p_repo, 'admitted', r.pipeline_run_key);
  END LOOP;
  FOR r IN INSERT INTO concurrency_slots AS s
                  (repository_key, pipeline_run_key, state, acquired_at,
                   expires_at, created_at, updated_at, lease_id,
                   fencing_token, creation_time)
           SELECT p_repo, u.run, 'running', v_now, v_now + p_ttl, v_now,
                  v_now, gen_random_uuid()::text, nextval('pac_fencing_seq'),
                  v_now
             FROM unnest(p_running) WITH ORDINALITY AS u(run, n) ORDER BY u.n
           ON CONFLICT (repository_key, pipeline_run_key) DO NOTHING
        RETURNING s.pipeline_run_key LOOP
    PERFORM pac_notify(p_repo, 'admitted', r.pipeline_run_key);
  END LOOP;
  -- Sequence values in the order they were drawn (each above the last),
  -- given to the waiting runs in request order.
  SELECT array_agg(x.v ORDER BY x.v) INTO v_seqs
    FROM (SELECT nextval('pac_queue_seq') AS v
            FROM generate_series(1, coalesce(cardinality(p_waiting), 0))) x;
  INSERT INTO concurrency_slots
         (repository_key, pipeline_run_key, state, acquired_at, expires_at,
          created_at, updated_at, creation_time, queue_seq)
  SELECT p_repo, w.run, 'queued', NULL, 'infinity', v_now, v_now,
         p_times[w.n], v_seqs[w.n]
    FROM unnest(p_waiting) WITH ORDINALITY AS w(run, n)
  ON CONFLICT (repository_key, pipeline_run_key) DO NOTHING;
  RETURN QUERY SELECT * FROM pac_promote(p_repo, v_limit, p_ttl, v_now);
  RETURN QUERY
    SELECT 'running'::text, s.pipeline_run_key::text, s.lease_id,
           s.acquired_at, s.expires_at, s.fencing_token, 0::bigint
      FROM unnest(p_running) WITH ORDINALITY AS u(run, n)
      JOIN concurrency_slots s
        ON s.repository_key = p_repo AND s.pipeline_run_key = u.run
     ORDER BY u.n;
  -- Every queue place, from one ordered scan of the queue, as a map: a
  -- join on the numbered queue could be planned as a scan of the whole
  -- queue per run (a new repository's statistics say it is small).
  IF coalesce(cardinality(p_waiting), 0) > 0 THEN
    SELECT jsonb_object_agg(x.run, x.pos) INTO v_places
      FROM (SELECT q.pipeline_run_key AS run,
                   row_number() OVER (ORDER BY q.creation_time,
                                               q.queue_seq) AS pos
              FROM concurrency_slots q
             WHERE q.repository_key = p_repo AND q.state = 'queued') x;
  END IF;
  RETURN QUERY
    SELECT CASE WHEN s.state = 'running' THEN 'held' ELSE 'queued' END,
           s.pipeline_run_key::text, s.lease_id,
           CASE WHEN s.state = 'running' THEN s.acquired_at
                ELSE s.creation_time END,
           CASE WHEN s.state = 'running' THEN s.expires_at
                ELSE s.created_at END,
           coalesce(s.fencing_token, s.queue_seq),
           coalesce((v_places ->> s.pipeline_run_key)::bigint, 0)
      FROM unnest(p_waiting) WITH ORDINALITY AS w(run, n)
      JOIN concurrency_slots s
        ON s.repository_key = p_repo AND s.pipeline_run_key = w.run
     ORDER BY w.n;
END $$;

-- The answers of acquires that admitted others and of every release, kept
-- by request id for ten minutes (pac_reap deletes older ones): a call whose
-- answer was lost after its commit (the connection dropped) is sent again
-- with the same id and gets the same rows (pac_kept, pac_rows), instead of
-- a step that finds nothing left to do. Concurrent sends of one id wait
-- for each other.
-- The rows of a kept answer (an array of objects k, run, lease, acq, exp,
-- tok, pos, n), in their order.
CREATE OR REPLACE FUNCTION pac_rows(p_result JSONB)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE sql AS $$
  SELECT x.k, x.run, x.lease, x.acq, x.exp, x.tok, x.pos
    FROM jsonb_to_recordset(p_result) AS x(k TEXT, run TEXT, lease TEXT,
                                          acq TIMESTAMPTZ, exp TIMESTAMPTZ,
                                          tok BIGINT, pos BIGINT, n BIGINT)
   ORDER BY x.n;
$$;

-- The answer kept for `p_request`, or NULL; waits first for any attempt
-- with the same id that the server is still running.
CREATE OR REPLACE FUNCTION pac_kept(p_request TEXT) RETURNS JSONB
LANGUAGE plpgsql AS $$
DECLARE
  v_result JSONB;
BEGIN
  IF p_request IS NULL THEN
    RETURN NULL;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext(p_request));
  SELECT o.result INTO v_result FROM pac_outcomes o
   WHERE o.request_id = p_request;
  RETURN v_result;
END $$;

-- One row of a step's answer as the JSON pac_rows reads back; n keeps the
-- order.
CREATE OR REPLACE FUNCTION pac_row_json(r RECORD, n BIGINT) RETURNS JSONB
LANGUAGE plpgsql AS $$
BEGIN
  RETURN jsonb_build_object('k', r.o_kind, 'run', r.o_run, 'lease', r.o_lease,
                            'acq', r.o_acquired, 'exp', r.o_expires,
                            'tok', r.o_token, 'pos', r.o_pos, 'n', n);
END $$;

-- The wrappers hand the step's rows on as they come and build the JSON of
-- the answer only when it is kept (pac_outcomes, for a retry of the same
-- request id): building it for every call and reading it back cost more
-- than the step itself.
CREATE OR REPLACE FUNCTION pac_acquire(p_repo TEXT, p_run TEXT, p_limit INTEGER,
                                       p_creation TIMESTAMPTZ, p_enqueue BOOLEAN,
                                       p_adopt BOOLEAN, p_ttl INTERVAL,
                                       p_keep BOOLEAN, p_request TEXT)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_result JSONB := '[]'::jsonb;
  v_n BIGINT := 0;
  r RECORD;
BEGIN
  IF p_request IS NOT NULL THEN
    v_result := pac_kept(p_request);
    IF v_result IS NOT NULL THEN
      RETURN QUERY SELECT * FROM pac_rows(v_result);
      RETURN;
    END IF;
    v_result := '[]'::jsonb;
  END IF;
  FOR r IN SELECT * FROM pac_acquire_step(p_repo, p_run, p_limit, p_creation,
                                          p_enqueue, p_adopt, p_ttl, p_keep) LOOP
    v_n := v_n + 1;
    o_kind := r.o_kind; o_run := r.o_run; o_lease := r.o_lease;
    o_acquired := r.o_acquired; o_expires := r.o_expires;
    o_token := r.o_token; o_pos := r.o_pos;
    RETURN NEXT;
    -- Only an answer that admitted others is kept (the admissions come
    -- first): the caller's own part (its lease, its place) a second send
    -- finds again as it was.
    IF p_request IS NOT NULL AND
       (r.o_kind = 'admitted' OR v_result <> '[]'::jsonb) THEN
      v_result := v_result || pac_row_json(r, v_n);
    END IF;
  END LOOP;
  IF v_result <> '[]'::jsonb THEN
    INSERT INTO pac_outcomes (request_id, result, created_at)
         VALUES (p_request, v_result, clock_timestamp());
  END IF;
END $$;
-- A release's answer is always kept: a second send finds nothing to
-- release, and must still say what the first one released and admitted.
CREATE OR REPLACE FUNCTION pac_release(p_lease TEXT, p_run TEXT, p_repo TEXT,
                                       p_ttl INTERVAL, p_request TEXT)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_result JSONB := '[]'::jsonb;
  v_n BIGINT := 0;
  r RECORD;
BEGIN
  IF p_request IS NOT NULL THEN
    v_result := pac_kept(p_request);
    IF v_result IS NOT NULL THEN
      RETURN QUERY SELECT * FROM pac_rows(v_result);
      RETURN;
    END IF;
    v_result := '[]'::jsonb;
  END IF;
  FOR r IN SELECT * FROM pac_release_step(p_lease, p_run, p_repo, p_ttl) LOOP
    v_n := v_n + 1;
    o_kind := r.o_kind; o_run := r.o_run; o_lease := r.o_lease;
    o_acquired := r.o_acquired; o_expires := r.o_expires;
    o_token := r.o_token; o_pos := r.o_pos;
    RETURN NEXT;
    IF p_request IS NOT NULL THEN
      v_result := v_result || pac_row_json(r, v_n);
    END IF;
  END LOOP;
  IF v_result <> '[]'::jsonb THEN
    INSERT INTO pac_outcomes (request_id, result, created_at)
         VALUES (p_request, v_result, clock_timestamp());
  END IF;
END $$;

-- Background cleanup: every repository with an expired lease is locked,
-- reclaimed and its queue admitted. Returns how many repositories.
CREATE OR REPLACE FUNCTION pac_reap(p_ttl INTERVAL) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
  v_repo TEXT;
  v_limit INTEGER;
  n INTEGER := 0;
BEGIN
  PERFORM pac_check_isolation();
  FOR v_repo IN SELECT DISTINCT s.repository_key FROM concurrency_slots s
                 WHERE s.state = 'running' AND s.expires_at <= clock_timestamp() LOOP
    SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
     WHERE t.repository_key = v_repo FOR UPDATE;
    CONTINUE WHEN NOT FOUND;  -- cleaned up meanwhile, slots and all
    PERFORM * FROM pac_promote(v_repo, coalesce(v_limit, 0), p_ttl,
                               clock_timestamp());
    n := n + 1;
  END LOOP;
  DELETE FROM pac_outcomes o
   WHERE o.created_at < clock_timestamp() - interval '10 minutes';
  RETURN n;
END $$;

-- Removes everything of one repository, and nothing else.
CREATE OR REPLACE FUNCTION pac_cleanup(p_repo TEXT) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pac_check_isolation();
  PERFORM 1 FROM pac_repositories t WHERE t.repository_key = p_repo FOR UPDATE;
  -- States are keyed by run alone: a run key another repository also
  -- uses keeps its state.
  DELETE FROM pipeline_run_states p
   WHERE p.pipeline_run_key IN (SELECT s.pipeline_run_key FROM concurrency_slots s
                                 WHERE s.repository_key = p_repo)
     AND NOT EXISTS (SELECT 1 FROM concurrency_slots o
                      WHERE o.pipeline_run_key = p.pipeline_run_key
                        AND o.repository_key <> p_repo);
  DELETE FROM concurrency_slots s WHERE s.repository_key = p_repo;
  DELETE FROM repository_states r WHERE r.repository_key = p_repo;
  DELETE FROM pac_repositories t WHERE t.repository_key = p_repo;
  PERFORM pac_notify(p_repo, 'cleaned', NULL);
END $$;
)SQL";

}  // namespace

absl::Status Migrate(PgConnection& conn, const Context& ctx) {
  // One transaction under a transaction-scoped advisory lock: concurrent
  // starters wait for the first one and then find nothing to do.
  std::string sql =
      Cat("BEGIN;\n"
          "SELECT pg_advisory_xact_lock(hashtext('pac_concurrency_schema'));\n"
          "CREATE TABLE IF NOT EXISTS pac_schema_version (\n"
          "  version INTEGER PRIMARY KEY,\n"
          "  applied_at TIMESTAMP WITH TIME ZONE DEFAULT NOW());\n");
  auto begin = conn.Exec(ctx, sql);
  if (!begin.ok()) {
    (void)conn.Exec(ctx, "ROLLBACK");
    return begin.status();
  }
  auto version = conn.Exec(
      ctx, "SELECT coalesce(max(version), 0) FROM pac_schema_version");
  if (!version.ok()) {
    (void)conn.Exec(ctx, "ROLLBACK");
    return version.status();
  }
  int64_t have = version->GetInt(0, 0);
  if (have > kSchemaVersion) {
    (void)conn.Exec(ctx, "ROLLBACK");
    return absl::FailedPreconditionError(
        Cat("postgresql: the database has schema version ", have,
            ", newer than this build's ", kSchemaVersion));
  }
  const char* const migrations[] = {kMigration1, kMigration2, kMigration3,
                                    kMigration4, kMigration5};
  static_assert(std::size(migrations) == kSchemaVersion);
  for (int64_t v = have + 1; v <= kSchemaVersion; ++v) {
    auto m = conn.Exec(ctx, Cat(migrations[v - 1],
                                "\nINSERT INTO pac_schema_version (version) "
                                "VALUES (",
                                v, ");"));
    if (!m.ok()) {
      (void)conn.Exec(ctx, "ROLLBACK");
      return m.status();
    }
  }
  if (have < kSchemaVersion) {
    if (auto f = conn.Exec(ctx, kFunctions); !f.ok()) {
      (void)conn.Exec(ctx, "ROLLBACK");
      return f.status();
    }
  }
  auto commit = conn.Exec(ctx, "COMMIT");
  return commit.ok() ? absl::OkStatus() : commit.status();
}

}  // namespace pac::concurrency::internal
