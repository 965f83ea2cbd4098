-- pgbench script: the driver's own admission and release statements, one
-- acquire+release pair per transaction of the script (each statement its
-- own transaction, as the driver sends them), each followed by
-- pac_flush_notify as the driver sends it (run with
-- PGOPTIONS='-c pac.defer_notify=on', as the driver's sessions are).
-- Variables: repos, client_id.
\set r random(1, :repos)
\set c random(1, 1000000000)
SELECT coalesce(o_lease, '') AS lease FROM pac_acquire('bench/repo-' || :r, 'bench/run-' || :client_id || '-' || :c, 2, NULL, false, false, interval '1 hour', false, md5(random()::text)) \gset
SELECT pac_flush_notify();
SELECT count(*) FROM pac_release(nullif(:lease, ''), NULL, NULL, interval '1 hour', md5(random()::text));
SELECT pac_flush_notify();
