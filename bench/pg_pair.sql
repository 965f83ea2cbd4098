-- pgbench script: the driver's own admission and release statements, one
-- acquire+release pair per transaction of the script, each statement its
-- own transaction as the driver sends them: pac_acquire (a try-acquire,
-- as bench/pg_bench's), then pac_release_lease and the statement after it
-- (kAfterReleaseSql, src/postgresql/pg_release.cc: it sends the collected
-- notifications and looks for a queue; the driver pipelines the two in
-- one round trip, pgbench sends them one after the other; its request id,
-- read only on a pooler's other server connection, is a literal here).
-- Run with PGOPTIONS='-c pac.defer_notify=on', as the driver's sessions
-- are. Request ids as the driver makes them: the time in
-- microseconds (16 hex digits), then random ones. Variables: repos,
-- client_id.
\set r random(1, :repos)
\set c random(1, 1000000000)
SELECT coalesce(o_lease, '') AS lease FROM pac_acquire('bench/repo-' || :r, 'bench/run-' || :client_id || '-' || :c, 2, NULL, false, false, interval '1 hour', false, lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000000)::bigint), 16, '0') || substr(md5(random()::text), 1, 16)) \gset
SELECT count(*) FROM pac_release_lease(nullif(:lease, ''), NULL, NULL, interval '1 hour', lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000000)::bigint), 16, '0') || substr(md5(random()::text), 1, 16));
SELECT (SELECT count(pg_notify('pac_concurrency', x)) FROM unnest(string_to_array(rtrim(v.pending, E'\n'), E'\n')) x), set_config('pac.pending_notify', '', false), set_config('pac.settle_repo', '', false), set_config('synchronous_commit', 'off', true), v.repo, EXISTS (SELECT 1 FROM concurrency_slots q WHERE q.repository_key = v.repo AND q.state = 'queued') AND (SELECT t.concurrency_limit = 0 OR t.concurrency_limit > (SELECT count(*) FROM concurrency_slots s WHERE s.repository_key = v.repo AND s.state = 'running' AND s.expires_at > clock_timestamp()) FROM pac_repositories t WHERE t.repository_key = v.repo) FROM (SELECT current_setting('pac.pending_notify', true) AS pending, coalesce(nullif(current_setting('pac.settle_repo', true), ''), (SELECT o.result -> 0 ->> 'repo' FROM pac_outcomes o WHERE o.request_id = 'none')) AS repo OFFSET 0) v;
