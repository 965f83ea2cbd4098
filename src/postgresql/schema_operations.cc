// The PostgreSQL server-side functions of the operations beside admission
// and release: the import's step (pac_import), the background reaper
// (pac_reap) and the forgetting of kept answers (pac_forget_outcomes), a
// repository's policy (pac_set_policy), its cleanup
// (pac_cleanup) and the clearing of its queue (pac_clear_queue). They use the
// helpers of schema_functions.cc, and Migrate (schema.cc) creates them after
// those.
#include "src/postgresql/schema.h"

namespace pac::concurrency::internal {

const char* const kOperationsSql = R"SQL(
-- An import's step for one repository (ImportRuns), in one statement: the
-- limit recorded as pac_acquire records it (p_set false: the recorded
-- one is kept), the running runs given slots (above the limit too), the
-- waiting runs queued in the given order with p_times (a run the table
-- holds keeps its lease or its place, and a removed one stays removed and
-- out of the answer; a removed run shown running is adopted), then the
-- queue admitted into free
-- slots. p_groups and p_priorities give each waiting run its supersede
-- group ('' for none) and priority. Rows: 'admitted' for every run the
-- step admitted from the queue;
-- then 'running' with the lease of each p_running run, in order; then for
-- each p_waiting run in order 'held' (its lease) or 'queued' (o_pos, with
-- o_acquired its creation time, o_expires its enqueue time and o_token its
-- sequence).
CREATE OR REPLACE FUNCTION pac_import(p_repo TEXT, p_limit INTEGER,
                                      p_set BOOLEAN, p_running TEXT[],
                                      p_waiting TEXT[], p_times TIMESTAMPTZ[],
                                      p_ttl INTERVAL,
                                      p_groups TEXT[] DEFAULT NULL,
                                      p_priorities INTEGER[] DEFAULT NULL)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_limit INTEGER;
  v_seqs BIGINT[];
  v_places JSONB;
  v_max_queue INTERVAL;
  v_mode TEXT := pac_mode(p_repo);
  r RECORD;
BEGIN
  -- Locks the repository row until the commit; reclaims expired leases.
  RETURN QUERY SELECT * FROM pac_acquire(p_repo, NULL, p_limit, NULL, true,
                                         false, p_ttl, NOT p_set, NULL);
  SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
   WHERE t.repository_key = p_repo;
  FOR r IN UPDATE concurrency_slots s
              SET state = 'running', lease_id = gen_random_uuid()::text,
                  fencing_token = nextval('pac_fencing_seq'),
                  acquired_at = v_now, expires_at = v_now + p_ttl,
                  updated_at = v_now, queue_seq = NULL
            WHERE s.repository_key = p_repo AND s.state <> 'running'
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
  SELECT p.max_queue INTO v_max_queue FROM pac_repository_policies p
   WHERE p.repository_key = p_repo;
  INSERT INTO concurrency_slots
         (repository_key, pipeline_run_key, state, acquired_at, expires_at,
          created_at, updated_at, creation_time, queue_seq, queue_deadline,
          group_key, queue_priority)
  SELECT p_repo, w.run, 'queued', NULL, 'infinity', v_now, v_now,
         p_times[w.n], v_seqs[w.n], v_now + v_max_queue,
         nullif(p_groups[w.n], ''), coalesce(p_priorities[w.n], 0)
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
                   row_number() OVER (ORDER BY
                     CASE WHEN v_mode = 'priority' THEN q.queue_priority END
                       DESC NULLS LAST,
                     CASE WHEN v_mode = 'newest-first' THEN q.creation_time
                       END DESC NULLS LAST,
                     q.creation_time, q.queue_seq) AS pos
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
       AND s.state IN ('running', 'queued')  -- a removed run stays out
     ORDER BY w.n;
END $$;

-- Background cleanup: every repository with an expired lease is locked,
-- reclaimed and its queue admitted. Returns how many repositories. A
-- repository without a pac_repositories row (the original Go code wrote
-- none) has its expired leases deleted, and told, all the same: there is
-- no row to lock and no limit to admit under, but left there they would
-- be the earliest expiry every driver's reaper finds past, and calls this
-- for again, every 5 ms.
CREATE OR REPLACE FUNCTION pac_reap(p_ttl INTERVAL) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
  v_repo TEXT;
  v_limit INTEGER;
  v_names TEXT[] := '{}';  -- shared limits of members reaped
  v_row BOOLEAN;
  v_member BOOLEAN;
  r RECORD;
  n INTEGER := 0;
BEGIN
  PERFORM pac_check_isolation();
  FOR v_repo IN SELECT s.repository_key FROM concurrency_slots s
                 WHERE s.state = 'running' AND s.expires_at <= clock_timestamp()
                UNION
                SELECT q.repository_key FROM concurrency_slots q
                 WHERE q.state = 'queued'
                   AND q.queue_deadline <= clock_timestamp() LOOP
    SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
     WHERE t.repository_key = v_repo FOR UPDATE;
    v_row := FOUND;  -- no row: none, or cleaned up meanwhile
    v_member := EXISTS (SELECT 1 FROM pac_shared_members m
                         WHERE m.repository_key = v_repo);
    IF NOT v_row OR v_member THEN
      -- Without a row: the expired leases go, nothing to admit. A member:
      -- they go now, and the pass across its shared limits runs once every
      -- repository row is taken (a pass holds the limits' rows, and must
      -- not wait for a repository's while it does).
      IF v_member THEN
        PERFORM pac_time_out(v_repo, clock_timestamp());
        v_names := v_names || ARRAY(SELECT m.name FROM pac_shared_members m
                                     WHERE m.repository_key = v_repo);
      END IF;
      FOR r IN DELETE FROM concurrency_slots s
                WHERE s.repository_key = v_repo AND s.state = 'running'
                  AND s.expires_at <= clock_timestamp()
            RETURNING s.pipeline_run_key LOOP
        PERFORM pac_notify(v_repo, 'expired', r.pipeline_run_key);
      END LOOP;
      n := n + 1;
      CONTINUE;
    END IF;
    PERFORM * FROM pac_promote(v_repo, coalesce(v_limit, 0), p_ttl,
                               clock_timestamp());
    n := n + 1;
  END LOOP;
  IF cardinality(v_names) > 0 THEN
    PERFORM * FROM pac_shared_pass(NULL, v_names, p_ttl, clock_timestamp());
  END IF;
  RETURN n;
END $$;

-- Forgets the answers kept for retries (pac_outcomes) once ten minutes
-- old, by two ranges of the key's index, no scan: the ids whose time
-- (their first 16 hex digits, pg_common.h) is older, and the rows as old
-- among the ids from '001' up, which no time before the year 2112 makes:
-- the random ids of an earlier version (all but 1 in 4,096 of them).
-- Returns how many went.
CREATE OR REPLACE FUNCTION pac_forget_outcomes()
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
  v_before TIMESTAMPTZ := clock_timestamp() - interval '10 minutes';
  n BIGINT;
  m BIGINT;
BEGIN
  DELETE FROM pac_outcomes o
   WHERE o.request_id < lpad(to_hex((extract(epoch FROM v_before)
                                     * 1000000)::bigint), 16, '0');
  GET DIAGNOSTICS n = ROW_COUNT;
  DELETE FROM pac_outcomes o
   WHERE o.request_id >= '001' AND o.created_at < v_before;
  GET DIAGNOSTICS m = ROW_COUNT;
  RETURN n + m;
END $$;

-- Clears a repository's queue (Driver::ClearQueue): under its row's lock
-- every queued row becomes a record of a removed run, state 'cleared',
-- which pac_acquire refuses and a release by key deletes. Returns the runs
-- in admission order.
CREATE OR REPLACE FUNCTION pac_clear_queue(p_repo TEXT)
RETURNS TABLE(o_run TEXT) LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_runs TEXT[];
  v_run TEXT;
  v_mode TEXT;
BEGIN
  PERFORM pac_check_isolation();
  PERFORM 1 FROM pac_repositories t WHERE t.repository_key = p_repo FOR UPDATE;
  v_mode := pac_mode(p_repo);
  WITH u AS (UPDATE concurrency_slots s
                SET state = 'cleared', updated_at = v_now
              WHERE s.repository_key = p_repo AND s.state = 'queued'
          RETURNING s.pipeline_run_key, s.creation_time, s.queue_seq,
                    s.queue_priority)
  SELECT array_agg(u.pipeline_run_key::text
                   ORDER BY
                     CASE WHEN v_mode = 'priority' THEN u.queue_priority END
                       DESC NULLS LAST,
                     CASE WHEN v_mode = 'newest-first' THEN u.creation_time
                       END DESC NULLS LAST,
                     u.creation_time, u.queue_seq)
    INTO v_runs FROM u;
  FOREACH v_run IN ARRAY coalesce(v_runs, '{}') LOOP
    PERFORM pac_notify(p_repo, 'removed:cleared', v_run);
    o_run := v_run;
    RETURN NEXT;
  END LOOP;
END $$;

-- Records a repository's policy (p_max NULL and 'oldest-first': none; the
-- row goes). A mode orders every read and admission from its commit on
-- (the queue is ordered when read: nothing to rewrite). Live:
-- the deadlines of its queued runs without a limit of their own follow,
-- and, under the repository row's lock, runs now past theirs time out (and
-- the queue is admitted, as after any change). A repository without a row
-- has no queue to follow.
CREATE OR REPLACE FUNCTION pac_set_policy(p_repo TEXT, p_max INTERVAL,
                                          p_mode TEXT, p_ttl INTERVAL,
                                          p_shared TEXT[] DEFAULT '{}')
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
  v_now TIMESTAMPTZ := clock_timestamp();
  v_limit INTEGER;
  v_placeholder BOOLEAN;
  v_changed TEXT[];  -- shared limits left or joined
BEGIN
  PERFORM pac_check_isolation();
  IF p_max IS NULL AND p_mode = 'oldest-first' THEN
    DELETE FROM pac_repository_policies p WHERE p.repository_key = p_repo;
  ELSE
    INSERT INTO pac_repository_policies (repository_key, max_queue, queue_mode,
                                         updated_at)
         VALUES (p_repo, p_max, p_mode, v_now)
    ON CONFLICT (repository_key) DO UPDATE
       SET max_queue = EXCLUDED.max_queue, queue_mode = EXCLUDED.queue_mode,
           updated_at = EXCLUDED.updated_at;
  END IF;
  -- The repository's row, locked. Without one, a first acquire or import
  -- may be creating it (its queued runs still unseen): a placeholder row
  -- waits for that transaction's insert. If the placeholder goes in, no
  -- such transaction committed, and any that comes waits for this one:
  -- it is taken out again (a policy alone lists nothing), and the later
  -- transaction reads the policy this one commits.
  LOOP
    SELECT t.concurrency_limit INTO v_limit FROM pac_repositories t
     WHERE t.repository_key = p_repo FOR UPDATE;
    EXIT WHEN FOUND;
    v_placeholder := NULL;
    INSERT INTO pac_repositories (repository_key, concurrency_limit)
         VALUES (p_repo, 0) ON CONFLICT (repository_key) DO NOTHING
      RETURNING true INTO v_placeholder;
    IF v_placeholder THEN
      -- No runs: the membership alone (under the placeholder's insert).
      PERFORM pac_set_membership(p_repo, p_shared);
      DELETE FROM pac_repositories t WHERE t.repository_key = p_repo;
      RETURN;
    END IF;
  END LOOP;
  v_changed := pac_set_membership(p_repo, p_shared);
  UPDATE concurrency_slots s SET queue_deadline = s.created_at + p_max
   WHERE s.repository_key = p_repo AND s.state = 'queued'
     AND s.queue_max IS NULL;
  PERFORM * FROM pac_promote(p_repo, v_limit, p_ttl, clock_timestamp());
  -- Leaving a limit frees room its other members may take.
  IF cardinality(v_changed) > 0 THEN
    PERFORM * FROM pac_shared_pass(p_repo, v_changed, p_ttl,
                                   clock_timestamp());
  END IF;
END $$;

-- Removes everything of one repository, and nothing else.
CREATE OR REPLACE FUNCTION pac_cleanup(p_repo TEXT, p_ttl INTERVAL)
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
  v_left TEXT[];  -- the shared limits it drew from
BEGIN
  PERFORM pac_check_isolation();
  PERFORM 1 FROM pac_repositories t WHERE t.repository_key = p_repo FOR UPDATE;
  v_left := pac_set_membership(p_repo, '{}');
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
  DELETE FROM pac_repository_policies p WHERE p.repository_key = p_repo;
  DELETE FROM pac_repositories t WHERE t.repository_key = p_repo;
  PERFORM pac_notify(p_repo, 'cleaned', NULL);
  -- Its slots were freed: the other members may take them.
  IF cardinality(v_left) > 0 THEN
    PERFORM * FROM pac_shared_pass(NULL, v_left, p_ttl, clock_timestamp());
  END IF;
END $$;
)SQL";

}  // namespace pac::concurrency::internal
