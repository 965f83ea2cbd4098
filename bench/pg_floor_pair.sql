-- pgbench script: one floor pair (bench/pg_floor.sql): the admission, and
-- when granted the release, each its own transaction as the driver's are.
-- Variables: repos, client_id.
\set r random(1, :repos)
\set c random(1, 1000000000)
SELECT pac_floor.acquire('bench/repo-' || :r, 'bench/run-' || :client_id || '-' || :c)::int AS granted \gset
\if :granted
DELETE FROM pac_floor.slots WHERE run = 'bench/run-' || :client_id || '-' || :c;
\endif
