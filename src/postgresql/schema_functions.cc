// The PostgreSQL server-side functions that make admission and release one
// round trip each (pac_acquire, pac_release, pac_release_lease,
// pac_settle), with the promotion and notification helpers they share. The
// import's step, the reaper, the cleanup and the queue's clearing are in
// schema_operations.cc, the queue policies' helpers in schema_policies.cc.
// Migrate (schema.cc) (re)creates them whenever the schema moves to this
// build's version.
#include "src/postgresql/schema.h"

namespace pac::concurrency::internal {

const char* const kFunctionsSql = R"SQL(
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
  v_set TEXT;  -- what set_config and pg_notify return, unused
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
    v_set := set_config('pac.pending_notify', v_pending || v_payload || E'\n',
                        false);
  ELSE
    v_set := pg_notify('pac_concurrency', v_payload);
  END IF;
END $$;

-- Sends the notifications pac_notify deferred, in order; returns how many.
CREATE OR REPLACE FUNCTION pac_flush_notify() RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
  v_pending TEXT := current_setting('pac.pending_notify', true);
  v_payload TEXT;
  v_set TEXT;  -- what set_config and pg_notify return, unused
  n INTEGER := 0;
BEGIN
  IF v_pending IS NULL OR v_pending = '' THEN
    RETURN 0;
  END IF;
  v_set := set_config('pac.pending_notify', '', false);
  FOREACH v_payload IN ARRAY string_to_array(rtrim(v_pending, E'\n'), E'\n') LOOP
    v_set := pg_notify('pac_concurrency', v_payload);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- pac_flush_notify in a transaction of its own that writes nothing else.
-- A NOTIFY gives its transaction an id, so a commit record, and with
-- synchronous_commit that commit waited for a WAL flush of its own: one
-- more disk flush per release. Off for this transaction alone: listeners
-- see the commit at once, and a crash could lose only the record of a
-- transaction that changed nothing.
CREATE OR REPLACE FUNCTION pac_send_notify() RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
  v_set TEXT := set_config('synchronous_commit', 'off', true);
BEGIN
  RETURN pac_flush_notify();
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
  v_mode TEXT;  -- read once there is room
  v_names TEXT[];  -- the shared limits it draws from
BEGIN
  PERFORM pac_time_out(p_repo, p_now);
  FOR r IN DELETE FROM concurrency_slots s
           WHERE s.repository_key = p_repo AND s.state = 'running'
             AND s.expires_at <= p_now
           RETURNING s.pipeline_run_key LOOP
    PERFORM pac_notify(p_repo, 'expired', r.pipeline_run_key);
  END LOOP;
  -- A member of shared limits: admission across their members.
  SELECT array_agg(m.name) INTO v_names FROM pac_shared_members m
   WHERE m.repository_key = p_repo;
  IF v_names IS NOT NULL THEN
    RETURN QUERY SELECT * FROM pac_shared_pass(p_repo, v_names, p_ttl, p_now);
    RETURN;
  END IF;
  SELECT count(*) INTO n FROM concurrency_slots s
   WHERE s.repository_key = p_repo AND s.state = 'running';
  WHILE p_limit = 0 OR n < p_limit LOOP
    IF v_mode IS NULL THEN
      v_mode := pac_mode(p_repo);
    END IF;
    -- The head: by the queue index (oldest-first), else by pac_head.
    UPDATE concurrency_slots s
       SET state = 'running', lease_id = gen_random_uuid()::text,
           fencing_token = nextval('pac_fencing_seq'), acquired_at = p_now,
           expires_at = p_now + p_ttl, updated_at = p_now
     WHERE s.id = CASE WHEN v_mode = 'oldest-first' THEN
                    (SELECT q.id FROM concurrency_slots q
                      WHERE q.repository_key = p_repo AND q.state = 'queued'
                      ORDER BY q.creation_time, q.queue_seq LIMIT 1)
                  ELSE pac_head(p_repo, v_mode) END
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

-- Answers kept for a retry. An attempt whose answer was lost after its
-- commit (the connection dropped) is sent again with the same request id;
-- where a second step would answer differently from the first, the first
-- keeps its answer in pac_outcomes (rows older than ten minutes go with
-- pac_forget_outcomes) and the second answers that: every release that
-- released or admitted something (a second one finds nothing left), and an
-- acquire that admitted others. Only a retry looks its id up (p_retry: the
-- driver sends the same request again; a first attempt's id is new, so it
-- would find nothing), and only where a first attempt may have changed the
-- answer (a release that found nothing to release; an acquire whose run
-- is recorded already, or that would not queue it), and while it holds
-- the repository row's lock, which the first attempt held until its
-- commit: a retry waits for an attempt the server is still running and
-- then finds its answer.
-- The rows of a kept answer (an array of objects k, run, lease, acq, exp,
-- tok, pos, n), in their order.
CREATE OR REPLACE FUNCTION pac_rows(p_result JSONB)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE sql STABLE AS $$
  SELECT x.k, x.run, x.lease, x.acq, x.exp, x.tok, x.pos
    FROM jsonb_to_recordset(p_result) AS x(k TEXT, run TEXT, lease TEXT,
                                          acq TIMESTAMPTZ, exp TIMESTAMPTZ,
                                          tok BIGINT, pos BIGINT, n BIGINT)
   ORDER BY x.n;
$$;

-- The rows kept under `p_request`, none if nothing is kept. A join, not
-- pac_rows of a subquery: a function whose argument is a subquery is not
-- inlined, and a SQL function that is not is parsed again at every call.
CREATE OR REPLACE FUNCTION pac_kept_rows(p_request TEXT)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE sql STABLE AS $$
  SELECT x.o_kind, x.o_run, x.o_lease, x.o_acquired, x.o_expires, x.o_token,
         x.o_pos
    FROM pac_outcomes o, LATERAL pac_rows(o.result) x
   WHERE o.request_id = p_request;
$$;

-- One row of an answer as the JSON pac_rows reads back; n keeps the order.
CREATE OR REPLACE FUNCTION pac_row_json(p_kind TEXT, p_run TEXT, p_lease TEXT,
                                        p_acquired TIMESTAMPTZ,
                                        p_expires TIMESTAMPTZ, p_token BIGINT,
                                        p_pos BIGINT, p_n BIGINT)
RETURNS JSONB LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('k', p_kind, 'run', p_run, 'lease', p_lease,
                            'acq', p_acquired, 'exp', p_expires,
                            'tok', p_token, 'pos', p_pos, 'n', p_n);
$$;

-- pac_promote's rows as a JSON array of pac_row_json objects numbered
-- from p_after + 1 (pac_rows reads them back): how a caller both answers
-- them and keeps them for a retry.
CREATE OR REPLACE FUNCTION pac_admit(p_repo TEXT, p_limit INTEGER,
                                     p_ttl INTERVAL, p_now TIMESTAMPTZ,
                                     p_after BIGINT)
RETURNS JSONB LANGUAGE sql AS $$
  SELECT coalesce(jsonb_agg(pac_row_json(p.o_kind, p.o_run, p.o_lease,
                                         p.o_acquired, p.o_expires, p.o_token,
                                         p.o_pos, p_after + p.n)
                            ORDER BY p.n), '[]'::jsonb)
    FROM pac_promote(p_repo, p_limit, p_ttl, p_now) WITH ORDINALITY
      AS p(o_kind, o_run, o_lease, o_acquired, o_expires, o_token, o_pos, n);
$$;

-- A repository's state as admission needs it, from three index probes:
-- its unexpired running rows, whether one has expired, whether it has a
-- queue, and the state of run p_run (NULL if it has no row). A SQL
-- function returning a set (of one row): the planner inlines it into the
-- caller's statement, and the caller's plan is kept (a function that
-- returns a plain record is planned again at every call).
CREATE OR REPLACE FUNCTION pac_look(p_repo TEXT, p_run TEXT, p_now TIMESTAMPTZ)
RETURNS TABLE(o_live INTEGER, o_expired BOOLEAN, o_queued BOOLEAN,
              o_mine TEXT)
LANGUAGE sql STABLE AS $$
  SELECT r.live, r.expired,
         EXISTS (SELECT 1 FROM concurrency_slots q
                  WHERE q.repository_key = p_repo AND q.state = 'queued'),
         (SELECT m.state::text FROM concurrency_slots m
           WHERE m.repository_key = p_repo AND m.pipeline_run_key = p_run)
    FROM (SELECT count(*) FILTER (WHERE s.expires_at > p_now)::integer AS live,
                 coalesce(bool_or(s.expires_at <= p_now), false) AS expired
            FROM concurrency_slots s
           WHERE s.repository_key = p_repo AND s.state = 'running') r;
$$;

-- Admission, in one statement and without nested steps (each PL/pgSQL
-- call and row hand-over costs as much as a statement): lock the
-- repository row (inserting it if there is none), record its limit (with
-- p_keep, only if none is recorded: the recorded one is kept), reclaim
-- expired leases and admit the queue, then grant, find or queue the
-- caller. p_run NULL only sets the limit. Rows: 'admitted' for others,
-- then one of 'acquired', 'queued' (o_pos) or 'full' for the caller; or
-- only 'removed' (o_lease: the reason) for a run removed from the queue.
CREATE OR REPLACE FUNCTION pac_acquire(p_repo TEXT, p_run TEXT, p_limit INTEGER,
                                       p_creation TIMESTAMPTZ, p_enqueue BOOLEAN,
                                       p_adopt BOOLEAN, p_ttl INTERVAL,
                                       p_keep BOOLEAN, p_request TEXT,
                                       p_group TEXT DEFAULT NULL,
                                       p_max_queue INTERVAL DEFAULT NULL,
                                       p_priority INTEGER DEFAULT 0,
                                       p_retry BOOLEAN DEFAULT false,
                                       p_cancel BOOLEAN DEFAULT false)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_ct TIMESTAMPTZ;  -- the caller's place in its supersede group
  v_seq BIGINT;
  v_old INTEGER;
  v_count INTEGER;
  v_expired BOOLEAN;
  v_queued BOOLEAN;
  v_mine TEXT;  -- the state of the caller's run, NULL if it has no row
  v_mode TEXT;  -- the queue's order, read when the caller is queued
  v_member BOOLEAN;  -- the repository draws from shared limits
  v_fits BOOLEAN := true;  -- the shared limits have room (a grant's check)
  v_kept JSONB;
  v_admitted JSONB;
  v_n BIGINT := 0;
  r RECORD;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    PERFORM pac_check_isolation();
  END IF;
  -- A call that would not queue its run is refused without the lock when
  -- the slots are full at this statement's snapshot (a state that was
  -- true at one moment, so a true answer) and nothing there would change:
  -- no expired lease to reclaim, no limit to record, no run of its own. A
  -- refusal then neither waits for the lock nor writes, and does not hold
  -- up the releases that wait for the lock behind it.
  IF p_run IS NOT NULL AND NOT p_enqueue AND NOT p_adopt AND p_group IS NULL
  THEN
    SELECT t.concurrency_limit, l.o_live, l.o_expired, l.o_mine
      INTO v_old, v_count, v_expired, v_mine
      FROM pac_repositories t, pac_look(p_repo, p_run, v_now) l
     WHERE t.repository_key = p_repo;
    IF FOUND AND v_old > 0 AND (p_keep OR v_old = p_limit) THEN
      IF v_count >= v_old AND NOT v_expired AND v_mine IS NULL THEN
        IF p_retry THEN
          RETURN QUERY SELECT * FROM pac_kept_rows(p_request);
          IF FOUND THEN
            RETURN;
          END IF;
        END IF;
        o_kind := 'full'; o_run := p_run; o_pos := 0;
        RETURN NEXT;
        RETURN;
      END IF;
    END IF;
  END IF;
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
  -- The live leases, whether there is an expired lease to reclaim or a
  -- queue, the caller's run, and whether the repository draws from shared
  -- limits (which does not change while this call holds its row).
  SELECT l.o_live, l.o_expired, l.o_queued, l.o_mine,
         EXISTS (SELECT 1 FROM pac_shared_members m
                  WHERE m.repository_key = p_repo)
    INTO v_count, v_expired, v_queued, v_mine, v_member
    FROM pac_look(p_repo, p_run, v_now) l;
  -- Queued runs past their deadline leave first (the caller's too).
  IF v_queued AND pac_time_out(p_repo, v_now) > 0 THEN
    SELECT l.o_queued, l.o_mine INTO v_queued, v_mine
      FROM pac_look(p_repo, p_run, v_now) l;
  END IF;
  IF p_retry AND (v_mine IS NOT NULL OR p_run IS NULL OR NOT p_enqueue) THEN
    RETURN QUERY SELECT * FROM pac_kept_rows(p_request);
    IF FOUND THEN
      RETURN;
    END IF;
  END IF;
  -- A run removed from the queue (its row's state is the reason, as
  -- 'cleared') is refused before anything is written, unless adopted.
  IF v_mine IS NOT NULL AND v_mine NOT IN ('running', 'queued')
     AND NOT p_adopt THEN
    o_kind := 'removed'; o_run := p_run; o_lease := v_mine; o_pos := 0;
    RETURN NEXT;
    RETURN;
  END IF;
  -- A supersede group (p_group): of its queued runs only the newest stays.
  -- A newer one queued removes the caller (its row becomes the record, as
  -- a refusal); else the group's other queued runs are removed. Running
  -- runs are left alone.
  IF p_group IS NOT NULL AND p_run IS NOT NULL AND NOT p_adopt
     AND v_mine IS DISTINCT FROM 'running' THEN
    SELECT s.creation_time, s.queue_seq INTO v_ct, v_seq
      FROM concurrency_slots s
     WHERE s.repository_key = p_repo AND s.pipeline_run_key = p_run
       AND s.state = 'queued';
    IF NOT FOUND THEN
      v_ct := coalesce(p_creation, v_now);  -- where it would join: last
      v_seq := NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM concurrency_slots q
                WHERE q.repository_key = p_repo AND q.state = 'queued'
                  AND q.group_key = p_group AND q.pipeline_run_key <> p_run
                  AND (q.creation_time > v_ct OR (q.creation_time = v_ct
                       AND v_seq IS NOT NULL AND q.queue_seq > v_seq))) THEN
      INSERT INTO concurrency_slots AS s
             (repository_key, pipeline_run_key, state, acquired_at, expires_at,
              created_at, updated_at, creation_time, group_key)
      VALUES (p_repo, p_run, 'superseded', NULL, 'infinity', v_now, v_now,
              v_ct, p_group)
      ON CONFLICT (repository_key, pipeline_run_key) DO UPDATE
         SET state = 'superseded', updated_at = EXCLUDED.updated_at;
      PERFORM pac_notify(p_repo, 'removed:superseded', p_run);
      o_kind := 'removed'; o_run := p_run; o_lease := 'superseded'; o_pos := 0;
      RETURN NEXT;
      RETURN;
    END IF;
    FOR r IN UPDATE concurrency_slots s
                SET state = 'superseded', updated_at = v_now
              WHERE s.repository_key = p_repo AND s.state = 'queued'
                AND s.group_key = p_group AND s.pipeline_run_key <> p_run
          RETURNING s.pipeline_run_key LOOP
      PERFORM pac_notify(p_repo, 'removed:superseded', r.pipeline_run_key);
      v_queued := NULL;  -- read again below
    END LOOP;
    IF v_queued IS NULL THEN
      SELECT l.o_queued INTO v_queued FROM pac_look(p_repo, p_run, v_now) l;
    END IF;
  END IF;
  v_kept := '[]'::jsonb;
  IF p_keep THEN
    p_limit := v_old;
  END IF;
  IF v_old IS DISTINCT FROM p_limit THEN
    UPDATE pac_repositories t SET concurrency_limit = p_limit, updated_at = v_now
     WHERE t.repository_key = p_repo;
    PERFORM pac_notify(p_repo, 'limit', NULL);
  END IF;
  -- Only then pac_promote (most calls have nothing to reclaim or admit).
  IF v_expired OR (v_queued AND (p_limit = 0 OR v_count < p_limit)) THEN
    v_admitted := pac_admit(p_repo, p_limit, p_ttl, v_now, v_n);
    RETURN QUERY SELECT * FROM pac_rows(v_admitted);
    v_n := v_n + jsonb_array_length(v_admitted);
    v_kept := v_kept || v_admitted;
    SELECT l.o_live, l.o_queued, l.o_mine INTO v_count, v_queued, v_mine
      FROM pac_look(p_repo, p_run, v_now) l;
  END IF;

  -- A grant in a member of shared limits holds their rows and fits them.
  IF v_member AND p_run IS NOT NULL AND NOT p_adopt
     AND v_mine IS DISTINCT FROM 'running'
     AND (p_limit = 0 OR v_count < p_limit) AND NOT v_queued THEN
    v_fits := pac_shared_grant_check(p_repo, v_now);
  END IF;
  -- The caller's row, in o_*: its lease, a new one, its place, or 'full'.
  o_kind := NULL; o_run := p_run; o_lease := NULL; o_acquired := NULL;
  o_expires := NULL; o_token := NULL; o_pos := 0;
  <<answer>>
  BEGIN
    EXIT answer WHEN p_run IS NULL;
    IF v_mine = 'running' THEN
      SELECT s.lease_id, s.acquired_at, s.expires_at, s.fencing_token,
             s.cancel_requested INTO r
        FROM concurrency_slots s
       WHERE s.repository_key = p_repo AND s.pipeline_run_key = p_run;
      o_kind := 'acquired'; o_lease := r.lease_id; o_acquired := r.acquired_at;
      o_expires := r.expires_at; o_token := r.fencing_token;
      -- o_pos of a lease found: 1 if its run was asked to stop.
      o_pos := CASE WHEN r.cancel_requested THEN 1 ELSE 0 END;
      EXIT answer;
    END IF;
    -- A grant: the run's own row taken over (an adoption of its queue
    -- entry, or of the record of its removal), else a new row by a plain
    -- INSERT (an INSERT ... ON CONFLICT checks the unique index first and
    -- confirms its row after: a speculative insertion, one more WAL
    -- record). No row of the run appears or goes while this call holds
    -- the repository's row.
    IF p_adopt OR ((p_limit = 0 OR v_count < p_limit) AND NOT v_queued
                   AND v_fits) THEN
      IF v_mine IS NOT NULL THEN
        UPDATE concurrency_slots s
           SET state = 'running', acquired_at = v_now,
               expires_at = v_now + p_ttl, updated_at = v_now,
               lease_id = gen_random_uuid()::text,
               fencing_token = nextval('pac_fencing_seq'), queue_seq = NULL,
               group_key = coalesce(p_group, s.group_key),
               cancel_requested = false
         WHERE s.repository_key = p_repo AND s.pipeline_run_key = p_run
        RETURNING s.lease_id, s.acquired_at, s.expires_at, s.fencing_token
          INTO r;
      END IF;
      IF v_mine IS NULL OR NOT FOUND THEN
        INSERT INTO concurrency_slots
               (repository_key, pipeline_run_key, state, acquired_at,
                expires_at, created_at, updated_at, lease_id, fencing_token,
                creation_time, group_key)
        VALUES (p_repo, p_run, 'running', v_now, v_now + p_ttl, v_now, v_now,
                gen_random_uuid()::text, nextval('pac_fencing_seq'),
                coalesce(p_creation, v_now), p_group)
        RETURNING lease_id, acquired_at, expires_at, fencing_token INTO r;
      END IF;
      o_kind := 'acquired'; o_lease := r.lease_id; o_acquired := r.acquired_at;
      o_expires := r.expires_at; o_token := r.fencing_token;
      EXIT answer;
    END IF;
    IF v_mine IS NULL THEN
      IF NOT p_enqueue THEN
        o_kind := 'full';
        EXIT answer;
      END IF;
      INSERT INTO concurrency_slots
             (repository_key, pipeline_run_key, state, acquired_at, expires_at,
              created_at, updated_at, creation_time, queue_seq, group_key,
              queue_max, queue_priority, queue_deadline)
      VALUES (p_repo, p_run, 'queued', NULL, 'infinity', v_now, v_now,
              coalesce(p_creation, v_now), nextval('pac_queue_seq'), p_group,
              p_max_queue, p_priority,
              v_now + coalesce(p_max_queue,
                               (SELECT p.max_queue FROM pac_repository_policies p
                                 WHERE p.repository_key = p_repo)));
    END IF;
    v_mode := pac_mode(p_repo);
    IF v_mode = 'oldest-first' THEN  -- an index range, as it always was
      SELECT count(*) INTO o_pos
        FROM concurrency_slots q, concurrency_slots me
       WHERE me.repository_key = p_repo AND me.pipeline_run_key = p_run
         AND q.repository_key = p_repo AND q.state = 'queued'
         AND (q.creation_time, q.queue_seq) <= (me.creation_time, me.queue_seq);
    ELSE
      o_pos := pac_place(p_repo, p_run, v_mode);
    END IF;
    o_kind := 'queued';
  END;
  -- A new submit with p_cancel (its run had no row: this call queued it or
  -- granted it a slot) asks the group's other running runs to stop.
  IF p_cancel AND p_group IS NOT NULL AND NOT p_adopt AND v_mine IS NULL
     AND o_kind IN ('acquired', 'queued') THEN
    FOR r IN UPDATE concurrency_slots s
                SET cancel_requested = true, updated_at = v_now
              WHERE s.repository_key = p_repo AND s.state = 'running'
                AND s.group_key = p_group AND s.pipeline_run_key <> p_run
                AND NOT s.cancel_requested AND s.expires_at > v_now
          RETURNING s.pipeline_run_key LOOP
      PERFORM pac_notify(p_repo, 'cancel', r.pipeline_run_key);
    END LOOP;
  END IF;
  IF o_kind IS NOT NULL THEN
    v_n := v_n + 1;
    RETURN NEXT;
  END IF;
  -- Kept only when it admitted others (they come first): the caller's own
  -- part (its lease, its place) a second attempt finds again as it was.
  IF p_request IS NOT NULL AND v_kept <> '[]'::jsonb THEN
    IF o_kind IS NOT NULL THEN
      v_kept := v_kept || pac_row_json(o_kind, o_run, o_lease, o_acquired,
                                       o_expires, o_token, o_pos, v_n);
    END IF;
    INSERT INTO pac_outcomes (request_id, result, created_at)
         VALUES (p_request, v_kept, v_now);
  END IF;
END $$;

-- Release, in one statement: by lease id (only that lease) or by key (the
-- run's lease, or its queue entry), then admit the queue head into the
-- freed slot. Rows: 'released' or 'dequeued' for the caller, 'admitted' for
-- the runs that took the slot.
CREATE OR REPLACE FUNCTION pac_release(p_lease TEXT, p_run TEXT, p_repo TEXT,
                                       p_ttl INTERVAL, p_request TEXT,
                                       p_retry BOOLEAN DEFAULT false)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_repo TEXT := p_repo;
  v_run TEXT := p_run;
  v_limit INTEGER;
  v_state TEXT;
  v_kept JSONB;
  v_admitted JSONB;
  v_n BIGINT := 0;
  r RECORD;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    PERFORM pac_check_isolation();
  END IF;
  IF p_lease IS NOT NULL THEN
    SELECT s.repository_key, s.pipeline_run_key INTO r
      FROM concurrency_slots s WHERE s.lease_id = p_lease;
    IF FOUND THEN
      IF (p_run IS NOT NULL AND r.pipeline_run_key <> p_run) OR
         (p_repo IS NOT NULL AND r.repository_key <> p_repo) THEN
        RETURN;
      END IF;
      v_repo := r.repository_key;
      v_run := r.pipeline_run_key;
    ELSE
      v_repo := NULL;
    END IF;
  END IF;
  IF v_repo IS NOT NULL THEN
    SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
     WHERE t.repository_key = v_repo FOR UPDATE;
    IF NOT FOUND THEN
      v_repo := NULL;
    ELSIF p_lease IS NOT NULL THEN
      DELETE FROM concurrency_slots s
       WHERE s.lease_id = p_lease AND s.state = 'running'
      RETURNING s.state INTO v_state;
    ELSE
      DELETE FROM concurrency_slots s
       WHERE s.repository_key = v_repo AND s.pipeline_run_key = v_run
      RETURNING s.state INTO v_state;
    END IF;
  END IF;
  IF v_state IS NULL AND p_retry THEN
    RETURN QUERY SELECT * FROM pac_kept_rows(p_request);
    IF FOUND THEN
      RETURN;
    END IF;
  END IF;
  IF v_repo IS NULL THEN
    RETURN;
  END IF;
  v_kept := '[]'::jsonb;
  IF v_state IS NOT NULL THEN
    IF v_state = 'running' THEN
      PERFORM pac_notify(v_repo, 'released', v_run);
      o_kind := 'released';
    ELSE
      o_kind := 'dequeued';
    END IF;
    o_run := v_run; o_pos := 0; v_n := 1;
    RETURN NEXT;
    v_kept := jsonb_build_array(pac_row_json(o_kind, o_run, NULL, NULL, NULL,
                                             NULL, 0, 1));
  END IF;
  -- A queue to admit, or a member of shared limits whose freed slot may
  -- admit another member's run.
  IF EXISTS (SELECT 1 FROM concurrency_slots q
              WHERE q.repository_key = v_repo AND q.state = 'queued')
     OR EXISTS (SELECT 1 FROM pac_shared_members m
                 WHERE m.repository_key = v_repo) THEN
    v_admitted := pac_admit(v_repo, v_limit, p_ttl, v_now, v_n);
    RETURN QUERY SELECT * FROM pac_rows(v_admitted);
    v_n := v_n + jsonb_array_length(v_admitted);
    v_kept := v_kept || v_admitted;
  END IF;
  IF p_request IS NOT NULL AND v_n > 0 THEN
    INSERT INTO pac_outcomes (request_id, result, created_at)
         VALUES (p_request, v_kept, v_now);
  END IF;
END $$;

-- The rows of pac_release_lease's answer, kept as a JSON array of
-- pac_row_json objects, each with its repository ('repo').
CREATE OR REPLACE FUNCTION pac_lease_rows(p_result JSONB)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT,
              o_repo TEXT)
LANGUAGE sql STABLE AS $$
  SELECT x.k, x.run, x.lease, x.acq, x.exp, x.tok, x.pos, x.repo
    FROM jsonb_to_recordset(p_result) AS x(k TEXT, run TEXT, lease TEXT,
                                          acq TIMESTAMPTZ, exp TIMESTAMPTZ,
                                          tok BIGINT, pos BIGINT, n BIGINT,
                                          repo TEXT)
   ORDER BY x.n;
$$;

-- Release by lease id, the driver's way (only that lease; with p_run or
-- p_repo, only if the lease is theirs). When the lease's repository has a
-- queue, the release and the admission of its head are one transaction
-- under the repository row's lock (pac_release). When it has none, one
-- DELETE without the lock: a release that waited for the lock waited
-- behind every admission of its repository, each holding the lock through
-- its commit, while the slot it was freeing stayed taken. Counts made
-- under the lock while that DELETE is not yet committed still see the
-- slot taken: never more admitted. A run queued meanwhile (under the
-- lock, unseen here) is admitted by pac_settle, which the queuer runs
-- after its commit, and the driver after this one when the statement it
-- pipelines after this call (pg_release.cc) finds a queue beside a free
-- slot. The repository is left in pac.settle_repo and in the kept answer
-- for it. Rows: 'released' and 'admitted' as pac_release's, each
-- with o_repo, or none.
CREATE OR REPLACE FUNCTION pac_release_lease(p_lease TEXT, p_run TEXT,
                                             p_repo TEXT, p_ttl INTERVAL,
                                             p_request TEXT,
                                             p_retry BOOLEAN DEFAULT false)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT,
              o_repo TEXT)
LANGUAGE plpgsql AS $$
DECLARE
  v_repo TEXT;
  v_kept JSONB;
  v_set TEXT;  -- what set_config and pac_notify return, unused
  r RECORD;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    PERFORM pac_check_isolation();
  END IF;
  -- No queue in the lease's repository, and no shared limit: the DELETE
  -- alone, without the lock, and with it in one statement the answer kept
  -- for a retry (pac_row_json's fields that are not NULL).
  WITH d AS (
    DELETE FROM concurrency_slots s
     WHERE s.lease_id = p_lease AND s.state = 'running'
       AND (p_run IS NULL OR s.pipeline_run_key = p_run)
       AND (p_repo IS NULL OR s.repository_key = p_repo)
       AND NOT EXISTS (SELECT 1 FROM concurrency_slots q
                        WHERE q.repository_key = s.repository_key
                          AND q.state = 'queued')
       AND NOT EXISTS (SELECT 1 FROM pac_shared_members m
                        WHERE m.repository_key = s.repository_key)
    RETURNING s.repository_key, s.pipeline_run_key),
  k AS (
    INSERT INTO pac_outcomes (request_id, result, created_at)
    SELECT p_request,
           jsonb_build_array(jsonb_build_object(
               'k', 'released', 'run', d.pipeline_run_key, 'pos', 0, 'n', 1,
               'repo', d.repository_key)),
           clock_timestamp()
      FROM d WHERE p_request IS NOT NULL)
  SELECT d.repository_key, d.pipeline_run_key INTO r FROM d;
  IF FOUND THEN
    -- The answer row straight away (not read back from the kept JSON);
    -- its notification, and the repository for pac_settle.
    v_set := pac_notify(r.repository_key, 'released', r.pipeline_run_key);
    v_set := set_config('pac.settle_repo', r.repository_key, false);
    o_kind := 'released'; o_run := r.pipeline_run_key; o_lease := NULL;
    o_acquired := NULL; o_expires := NULL; o_token := NULL; o_pos := 0;
    o_repo := r.repository_key;
    RETURN NEXT;
    RETURN;
  END IF;
  -- A queue waits (or the lease is gone: then pac_release answers
  -- nothing): the release and its admission in one step, under the lock.
  SELECT s.repository_key INTO v_repo FROM concurrency_slots s
   WHERE s.lease_id = p_lease;
  SELECT coalesce(jsonb_agg(pac_row_json(x.o_kind, x.o_run, x.o_lease,
                                         x.o_acquired, x.o_expires,
                                         x.o_token, x.o_pos, x.n)
                            || jsonb_build_object('repo', v_repo)
                            ORDER BY x.n), '[]'::jsonb)
    INTO v_kept
    FROM pac_release(p_lease, p_run, p_repo, p_ttl, NULL) WITH ORDINALITY
      AS x(o_kind, o_run, o_lease, o_acquired, o_expires, o_token, o_pos, n);
  IF v_kept <> '[]'::jsonb THEN
    IF p_request IS NOT NULL THEN
      INSERT INTO pac_outcomes (request_id, result, created_at)
           VALUES (p_request, v_kept, clock_timestamp());
    END IF;
  ELSIF p_retry THEN
    -- Nothing to release: perhaps a retry whose first attempt released (a
    -- first attempt still running held the row, and this call waited).
    SELECT o.result INTO v_kept FROM pac_outcomes o
     WHERE o.request_id = p_request;
  END IF;
  IF v_kept IS NOT NULL AND v_kept <> '[]'::jsonb THEN
    v_set := set_config('pac.settle_repo', v_kept -> 0 ->> 'repo', false);
    RETURN QUERY SELECT * FROM pac_lease_rows(v_kept);
  END IF;
END $$;

-- Admits the queue of p_repo into its free slots, in a transaction of its
-- own, after a change that committed without the repository row's lock
-- (p_repo NULL: the repository pac_release_lease left in pac.settle_repo),
-- or after one that queued runs (pac_acquire, pac_import), which a release
-- without the lock may have missed: whichever of the two commits last
-- sees the other's change here. Looks first without the lock (a queue,
-- and a free slot or an expired lease for its head); most calls stop
-- there and write nothing; after a release they send the notifications
-- their connection collected (pac_send_notify). One that admits keeps its
-- answer under p_request || '/settle' and ends with a 'notify' row: the
-- driver sends the notifications after this commit. Rows as
-- pac_promote's. The statement the driver pipelines after a release
-- (kAfterReleaseSql, pg_release.cc) makes the same look without the lock
-- in plain SQL, and sends the notifications as pac_flush_notify does.
CREATE OR REPLACE FUNCTION pac_settle(p_repo TEXT, p_ttl INTERVAL,
                                      p_request TEXT,
                                      p_retry BOOLEAN DEFAULT false)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_repo TEXT := p_repo;
  -- Looked up on a retry only; a first attempt keeps its answer here.
  v_request TEXT := p_request || '/settle';
  v_limit INTEGER;
  v_queued BOOLEAN;
  v_count INTEGER;
  v_kept JSONB;
  v_admitted JSONB;
  v_n BIGINT := 0;
  v_set TEXT;  -- what set_config returns, unused
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    PERFORM pac_check_isolation();
  END IF;
  IF v_repo IS NULL THEN
    v_repo := nullif(current_setting('pac.settle_repo', true), '');
    v_set := set_config('pac.settle_repo', '', false);
    IF v_repo IS NULL AND p_request IS NOT NULL THEN
      -- Not this session's release (a pooler that hands each transaction
      -- to another server connection): the release kept its repository.
      SELECT o.result -> 0 ->> 'repo' INTO v_repo FROM pac_outcomes o
       WHERE o.request_id = p_request;
    END IF;
  END IF;
  <<settle>>
  BEGIN
    EXIT settle WHEN v_repo IS NULL;
    IF p_retry AND v_request IS NOT NULL THEN
      RETURN QUERY SELECT * FROM pac_kept_rows(v_request);
      IF FOUND THEN
        EXIT settle;
      END IF;
    END IF;
    SELECT t.concurrency_limit,
           EXISTS (SELECT 1 FROM concurrency_slots q
                    WHERE q.repository_key = v_repo AND q.state = 'queued')
      INTO v_limit, v_queued
      FROM pac_repositories t WHERE t.repository_key = v_repo;
    EXIT settle WHEN NOT FOUND OR NOT v_queued;
    IF v_limit > 0 THEN
      SELECT count(*) INTO v_count FROM concurrency_slots s
       WHERE s.repository_key = v_repo AND s.state = 'running'
         AND s.expires_at > v_now;
      EXIT settle WHEN v_count >= v_limit;
    END IF;
    SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
     WHERE t.repository_key = v_repo FOR UPDATE;
    EXIT settle WHEN NOT FOUND;
    IF p_retry AND v_request IS NOT NULL THEN
      -- A first attempt that was still running held the lock until now.
      RETURN QUERY SELECT * FROM pac_kept_rows(v_request);
      IF FOUND THEN
        EXIT settle;
      END IF;
    END IF;
    v_kept := '[]'::jsonb;
    v_admitted := pac_admit(v_repo, v_limit, p_ttl, v_now, v_n);
    RETURN QUERY SELECT * FROM pac_rows(v_admitted);
    v_n := v_n + jsonb_array_length(v_admitted);
    v_kept := v_kept || v_admitted;
    IF v_n > 0 AND v_request IS NOT NULL THEN
      INSERT INTO pac_outcomes (request_id, result, created_at)
           VALUES (v_request, v_kept, v_now);
    END IF;
    o_kind := 'notify'; o_run := NULL; o_lease := NULL; o_acquired := NULL;
    o_expires := NULL; o_token := NULL; o_pos := 0;
    RETURN NEXT;
    RETURN;
  END;
  -- After a release (p_repo NULL), its notifications go now. Not after a
  -- call that named its repository (whose caller sent its own already):
  -- several of those share one transaction (kSettleManySql), and
  -- pac_send_notify's asynchronous commit would cover another's writes.
  IF p_repo IS NULL THEN
    v_count := pac_send_notify();
  END IF;
END $$;

)SQL";

}  // namespace pac::concurrency::internal
