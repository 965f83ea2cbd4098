// The PostgreSQL server-side helpers of the queue policies
// (docs/policies.md): the removal of queued runs past their deadline
// (pac_time_out) and the queue's order (pac_mode, pac_head, pac_place).
// Migrate (schema.cc) creates them before the functions of
// schema_functions.cc and schema_operations.cc, which call them.
#include "src/postgresql/schema.h"

namespace pac::concurrency::internal {

const char* const kPoliciesSql = R"SQL(
-- Removes the queued runs of a repository (whose pac_repositories row the
-- caller holds locked) that are past their queue deadline: each row
-- becomes a record with state 'timed-out', as a cleared run's. Returns how
-- many. One index probe when none is due.
CREATE OR REPLACE FUNCTION pac_time_out(p_repo TEXT, p_now TIMESTAMPTZ)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
  r RECORD;
  n INTEGER := 0;
BEGIN
  FOR r IN UPDATE concurrency_slots s
              SET state = 'timed-out', updated_at = p_now
            WHERE s.repository_key = p_repo AND s.state = 'queued'
              AND s.queue_deadline <= p_now
        RETURNING s.pipeline_run_key LOOP
    PERFORM pac_notify(p_repo, 'removed:timed-out', r.pipeline_run_key);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- A repository's queue mode (pac_repository_policies), 'oldest-first'
-- when none is recorded.
CREATE OR REPLACE FUNCTION pac_mode(p_repo TEXT) RETURNS TEXT
LANGUAGE sql STABLE AS $$
  SELECT coalesce((SELECT p.queue_mode FROM pac_repository_policies p
                    WHERE p.repository_key = p_repo), 'oldest-first');
$$;

-- The id of the queue head under mode p_mode: the newest-first and
-- priority orders sort the repository's queued rows (a top-1 sort, one
-- pass); oldest-first reads the queue index.
CREATE OR REPLACE FUNCTION pac_head(p_repo TEXT, p_mode TEXT) RETURNS INTEGER
LANGUAGE sql STABLE AS $$
  SELECT q.id FROM concurrency_slots q
   WHERE q.repository_key = p_repo AND q.state = 'queued'
   ORDER BY CASE WHEN p_mode = 'priority' THEN q.queue_priority END
              DESC NULLS LAST,
            CASE WHEN p_mode = 'newest-first' THEN q.creation_time END
              DESC NULLS LAST,
            q.creation_time, q.queue_seq
   LIMIT 1;
$$;

-- The 1-based place of the queued run p_run under mode p_mode.
CREATE OR REPLACE FUNCTION pac_place(p_repo TEXT, p_run TEXT, p_mode TEXT)
RETURNS BIGINT LANGUAGE sql STABLE AS $$
  SELECT count(*) FROM concurrency_slots q, concurrency_slots me
   WHERE me.repository_key = p_repo AND me.pipeline_run_key = p_run
     AND q.repository_key = p_repo AND q.state = 'queued'
     AND CASE p_mode
           WHEN 'newest-first' THEN
             q.creation_time > me.creation_time OR
             (q.creation_time = me.creation_time AND q.queue_seq <= me.queue_seq)
           WHEN 'priority' THEN
             q.queue_priority > me.queue_priority OR
             (q.queue_priority = me.queue_priority AND
              (q.creation_time, q.queue_seq) <= (me.creation_time, me.queue_seq))
           ELSE (q.creation_time, q.queue_seq) <= (me.creation_time, me.queue_seq)
         END;
$$;
)SQL";

}  // namespace pac::concurrency::internal
