-- pgbench script: the driver's own admission and release statements, one
-- acquire+release pair per transaction of the script, each statement its
-- own transaction as the driver sends them: pac_acquire (a try-acquire,
-- as bench/pg_bench's), then pac_release_lease and pac_settle (which the
-- driver pipelines in one round trip; pgbench sends them one after the
-- other). pac_settle sends the collected notifications when it admits
-- nothing. Run with PGOPTIONS='-c pac.defer_notify=on', as the driver's
-- sessions are. Request ids as the driver makes them: the time in
-- microseconds (16 hex digits), then random ones. Variables: repos,
-- client_id.
\set r random(1, :repos)
\set c random(1, 1000000000)
SELECT coalesce(o_lease, '') AS lease FROM pac_acquire('bench/repo-' || :r, 'bench/run-' || :client_id || '-' || :c, 2, NULL, false, false, interval '1 hour', false, lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000000)::bigint), 16, '0') || substr(md5(random()::text), 1, 16)) \gset
SELECT count(*) FROM pac_release_lease(nullif(:lease, ''), NULL, NULL, interval '1 hour', lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000000)::bigint), 16, '0') || substr(md5(random()::text), 1, 16));
SELECT count(*) FROM pac_settle(NULL, interval '1 hour', lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000000)::bigint), 16, '0') || substr(md5(random()::text), 1, 16));
