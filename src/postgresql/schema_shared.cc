// The PostgreSQL server-side helpers of shared limits (docs/policies.md,
// "Shared limits"): whether a grant fits every limit its repository draws
// from, membership changes, and the admission across the
// members of limits (pac_shared_pass), which pac_promote runs for a member
// and the reaper runs as a safety net (pac_shared_sweep). Migrate
// (schema.cc) creates them after kPoliciesSql and before the functions of
// schema_functions.cc and schema_operations.cc, which call them.
//
// Locks: a step takes a repository's row first, then the rows of the
// shared limits (pac_shared_limits) it needs, in name order in one
// statement. A grant in a member holds its limits' rows while it counts,
// so two grants in members of one limit are serialized there. The pass
// takes other members' rows with SKIP LOCKED only (it never waits for a
// repository row while it holds a limit's): the step holding a skipped
// row runs a pass of its own when it may admit, and the reaper's sweep
// catches the rest.
#include "src/postgresql/schema.h"

namespace pac::concurrency::internal {

const char* const kSharedSql = R"SQL(
-- Locks the rows of the shared limits p_repo draws from (the caller holds
-- the repository's row, so they do not change meanwhile), in name order;
-- returns whether it fits them all (pac_acquire calls it for a member
-- only). True for a repository of none.
CREATE OR REPLACE FUNCTION pac_shared_grant_check(p_repo TEXT,
                                                  p_now TIMESTAMPTZ)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
  v_names TEXT[];
BEGIN
  SELECT array_agg(x.name) INTO v_names
    FROM (SELECT l.name FROM pac_shared_limits l
           WHERE l.name IN (SELECT m.name FROM pac_shared_members m
                             WHERE m.repository_key = p_repo)
           ORDER BY l.name FOR UPDATE) x;
  IF v_names IS NULL THEN
    RETURN true;
  END IF;
  RETURN NOT EXISTS (
    SELECT 1 FROM pac_shared_limits l
     WHERE l.name = ANY (v_names) AND l.concurrency_limit > 0
       AND l.concurrency_limit <= (
           SELECT count(*) FROM pac_shared_members m
             JOIN concurrency_slots s ON s.repository_key = m.repository_key
            WHERE m.name = l.name AND s.state = 'running'
              AND s.expires_at > p_now));
END $$;

-- Admits the queued runs of the members of shared limits p_names while
-- they fit (their repository's limit and every shared limit of theirs):
-- of the heads that fit, the one queued earliest (queue_seq) first; a
-- head that does not fit is passed over. Locks the rows of p_names and of
-- every limit their members draw from, in name order; a member's row is
-- taken with SKIP LOCKED (a skipped member's own step admits it), and a
-- member that draws from a limit not locked here is left to another pass.
-- Rows as pac_promote's, for the runs of p_repo (which the caller holds
-- locked; NULL: none); the others' holders learn of theirs from the
-- 'admitted' notifications.
CREATE OR REPLACE FUNCTION pac_shared_pass(p_repo TEXT, p_names TEXT[],
                                           p_ttl INTERVAL, p_now TIMESTAMPTZ)
RETURNS TABLE(o_kind TEXT, o_run TEXT, o_lease TEXT, o_acquired TIMESTAMPTZ,
              o_expires TIMESTAMPTZ, o_token BIGINT, o_pos BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
  v_locked TEXT[];
  v_held TEXT[] := CASE WHEN p_repo IS NULL THEN '{}'::text[]
                        ELSE ARRAY[p_repo] END;
  v_skip TEXT[] := '{}';
  v_id INTEGER;
  v_repo TEXT;
  r RECORD;
BEGIN
  SELECT coalesce(array_agg(x.name), '{}') INTO v_locked
    FROM (SELECT l.name FROM pac_shared_limits l
           WHERE l.name = ANY (p_names)
              OR l.name IN (SELECT m2.name FROM pac_shared_members m1
                              JOIN pac_shared_members m2
                                ON m2.repository_key = m1.repository_key
                             WHERE m1.name = ANY (p_names))
           ORDER BY l.name FOR UPDATE) x;
  -- Nobody queued in the members: nothing to admit (looked at under the
  -- limits' locks, which a run queued by a grant's check held too).
  IF NOT EXISTS (SELECT 1 FROM pac_shared_members m
                  WHERE m.name = ANY (p_names)
                    AND EXISTS (SELECT 1 FROM concurrency_slots q
                                 WHERE q.repository_key = m.repository_key
                                   AND q.state = 'queued')) THEN
    RETURN;
  END IF;
  LOOP
    -- The members with a queue, the full limits (each counted once), then
    -- the earliest head that fits.
    WITH cand AS MATERIALIZED (
      SELECT DISTINCT m.repository_key AS repo FROM pac_shared_members m
       WHERE m.name = ANY (p_names) AND m.repository_key <> ALL (v_skip)
         AND EXISTS (SELECT 1 FROM concurrency_slots q
                      WHERE q.repository_key = m.repository_key
                        AND q.state = 'queued')),
    full_limits AS MATERIALIZED (
      SELECT l.name FROM pac_shared_limits l
       WHERE l.name = ANY (v_locked) AND l.concurrency_limit > 0
         AND l.concurrency_limit <= (
             SELECT count(*) FROM pac_shared_members m2
               JOIN concurrency_slots s
                 ON s.repository_key = m2.repository_key
              WHERE m2.name = l.name AND s.state = 'running'
                AND s.expires_at > p_now))
    SELECT h.id, c.repo INTO v_id, v_repo
      FROM cand c
      JOIN pac_repositories t ON t.repository_key = c.repo
      JOIN concurrency_slots h ON h.id = pac_head(c.repo, pac_mode(c.repo))
     WHERE (t.concurrency_limit = 0 OR
            (SELECT count(*) FROM concurrency_slots s
              WHERE s.repository_key = c.repo AND s.state = 'running'
                AND s.expires_at > p_now) < t.concurrency_limit)
       AND NOT EXISTS (SELECT 1 FROM pac_shared_members mm
                        WHERE mm.repository_key = c.repo
                          AND (mm.name <> ALL (v_locked)
                               OR mm.name IN (SELECT f.name
                                                FROM full_limits f)))
     ORDER BY h.queue_seq
     LIMIT 1;
    EXIT WHEN NOT FOUND;
    IF v_repo <> ALL (v_held) THEN
      -- Its row first; then choose again, with its queue now still.
      PERFORM 1 FROM pac_repositories t
       WHERE t.repository_key = v_repo FOR UPDATE SKIP LOCKED;
      IF FOUND THEN
        v_held := v_held || v_repo;
      ELSE
        v_skip := v_skip || v_repo;
      END IF;
      CONTINUE;
    END IF;
    UPDATE concurrency_slots s
       SET state = 'running', lease_id = gen_random_uuid()::text,
           fencing_token = nextval('pac_fencing_seq'), acquired_at = p_now,
           expires_at = p_now + p_ttl, updated_at = p_now
     WHERE s.id = v_id AND s.state = 'queued'
    RETURNING s.pipeline_run_key, s.lease_id, s.acquired_at, s.expires_at,
              s.fencing_token INTO r;
    CONTINUE WHEN NOT FOUND;
    PERFORM pac_notify(v_repo, 'admitted', r.pipeline_run_key);
    IF v_repo = p_repo THEN
      o_kind := 'admitted'; o_run := r.pipeline_run_key; o_lease := r.lease_id;
      o_acquired := r.acquired_at; o_expires := r.expires_at;
      o_token := r.fencing_token; o_pos := 0;
      RETURN NEXT;
    END IF;
  END LOOP;
END $$;

-- The reaper's safety net: a pass over every shared limit whose members
-- have queued runs (a pass that skipped a member whose step then did not
-- admit). Returns how many limits it passed over.
CREATE OR REPLACE FUNCTION pac_shared_sweep(p_ttl INTERVAL) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
  v_names TEXT[];
BEGIN
  SELECT array_agg(DISTINCT m.name) INTO v_names
    FROM pac_shared_members m
   WHERE EXISTS (SELECT 1 FROM concurrency_slots q
                  WHERE q.repository_key = m.repository_key
                    AND q.state = 'queued');
  IF v_names IS NULL THEN
    RETURN 0;
  END IF;
  PERFORM * FROM pac_shared_pass(NULL, v_names, p_ttl, clock_timestamp());
  RETURN cardinality(v_names);
END $$;

-- Sets (p_limit >= 0) or forgets (NULL) shared limit p_name, then admits
-- its members' runs that now fit. A forgotten limit's row stays while
-- members name it (the lock their grants take).
CREATE OR REPLACE FUNCTION pac_set_shared_limit(p_name TEXT, p_limit INTEGER,
                                                p_ttl INTERVAL)
RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pac_check_isolation();
  IF p_limit IS NULL THEN
    UPDATE pac_shared_limits l SET concurrency_limit = NULL,
                                   updated_at = clock_timestamp()
     WHERE l.name = p_name;
    DELETE FROM pac_shared_limits l
     WHERE l.name = p_name
       AND NOT EXISTS (SELECT 1 FROM pac_shared_members m
                        WHERE m.name = p_name);
  ELSE
    INSERT INTO pac_shared_limits (name, concurrency_limit, updated_at)
         VALUES (p_name, p_limit, clock_timestamp())
    ON CONFLICT (name) DO UPDATE
       SET concurrency_limit = EXCLUDED.concurrency_limit,
           updated_at = EXCLUDED.updated_at;
  END IF;
  PERFORM * FROM pac_shared_pass(NULL, ARRAY[p_name], p_ttl,
                                 clock_timestamp());
END $$;

-- Records the shared limits p_repo draws from (its row locked by the
-- caller): each named limit gets a row (with no limit until one is set),
-- and the rows of the limits it leaves and joins are locked, in name
-- order, before the membership changes. Returns the names it left and
-- joined (the ones a pass must look at).
CREATE OR REPLACE FUNCTION pac_set_membership(p_repo TEXT, p_names TEXT[])
RETURNS TEXT[] LANGUAGE plpgsql AS $$
DECLARE
  v_old TEXT[];
  v_all TEXT[];
BEGIN
  SELECT coalesce(array_agg(m.name ORDER BY m.name), '{}') INTO v_old
    FROM pac_shared_members m WHERE m.repository_key = p_repo;
  IF v_old = coalesce(p_names, '{}') THEN
    RETURN '{}';
  END IF;
  INSERT INTO pac_shared_limits (name, concurrency_limit)
  SELECT n, NULL FROM unnest(p_names) n
  ON CONFLICT (name) DO NOTHING;
  SELECT coalesce(array_agg(DISTINCT n), '{}') INTO v_all
    FROM unnest(v_old || coalesce(p_names, '{}')) n;
  PERFORM 1 FROM pac_shared_limits l WHERE l.name = ANY (v_all)
   ORDER BY l.name FOR UPDATE;
  DELETE FROM pac_shared_members m
   WHERE m.repository_key = p_repo AND m.name <> ALL (coalesce(p_names, '{}'));
  INSERT INTO pac_shared_members (repository_key, name)
  SELECT p_repo, n FROM unnest(p_names) n
  ON CONFLICT DO NOTHING;
  -- A forgotten limit no member names any more goes.
  DELETE FROM pac_shared_limits l
   WHERE l.name = ANY (v_old) AND l.concurrency_limit IS NULL
     AND NOT EXISTS (SELECT 1 FROM pac_shared_members m
                      WHERE m.name = l.name);
  RETURN v_all;
END $$;
)SQL";

}  // namespace pac::concurrency::internal
