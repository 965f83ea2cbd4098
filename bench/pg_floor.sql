-- The floor of bench.sh's PostgreSQL comparison, written from the
-- description in the task's floors/README.md (not shipped, not used by the
-- driver): the smallest safe one-round-trip admission. A function locks
-- the repository's row (FOR UPDATE), counts the live slots and inserts
-- one; a release is one DELETE. No queue, fencing, NOTIFY or lease ids.
-- Lives in its own schema, pac_floor, so the driver's tables are untouched.
DROP SCHEMA IF EXISTS pac_floor CASCADE;
CREATE SCHEMA pac_floor;
CREATE TABLE pac_floor.repos (
  repo   TEXT PRIMARY KEY,
  lim    INTEGER NOT NULL
);
CREATE TABLE pac_floor.slots (
  repo       TEXT NOT NULL REFERENCES pac_floor.repos,
  run        TEXT NOT NULL UNIQUE,
  expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ON pac_floor.slots (repo, expires_at);
INSERT INTO pac_floor.repos SELECT 'bench/repo-' || g, 2 FROM generate_series(1, 100) g;

CREATE FUNCTION pac_floor.acquire(p_repo TEXT, p_run TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
  v_lim INTEGER;
  v_live INTEGER;
BEGIN
  SELECT lim INTO v_lim FROM pac_floor.repos WHERE repo = p_repo FOR UPDATE;
  SELECT count(*) INTO v_live FROM pac_floor.slots
   WHERE repo = p_repo AND expires_at > now();
  IF v_live >= v_lim THEN
    RETURN false;
  END IF;
  INSERT INTO pac_floor.slots VALUES (p_repo, p_run, now() + interval '1 hour');
  RETURN true;
END $$;
