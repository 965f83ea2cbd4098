#!/usr/bin/env python3
"""The PostgreSQL driver against the floor, paired runs on one server.

The disk's fsync latency on a shared machine moves by 2-5x from one minute
to the next, and so do both rates; a ratio of two runs minutes apart says
little. So each point (repositories x clients) runs in rounds: the floor
(bench/pg_floor.sql under pgbench, loaded by the caller), then the driver
(bench/pg_bench at the same point), SECONDS each, back to back; each
round gives one ratio, and the median over the rounds is reported.

Rates are admitted pairs per second: the driver's granted_per_s, and the
floor's deleted slots (pg_stat_user_tables.n_tup_del of pac_floor.slots,
flushed when pgbench's sessions end) per second. On one repository most
attempts are refused on both sides, and a refusal is not a pair.

  pg_vs_floor.py BUILD_DIR [--rounds N] [--seconds S] [--points 1x1,100x16]
  pg_vs_floor.py BUILD_DIR --soak MINUTES   # the driver alone, minute by
      minute, and paired rounds against the floor before and after

Environment: PAC_TEST_PG_* as scripts/pg-test-server.sh writes them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def pg_env():
    env = dict(os.environ)
    with open(env["PAC_TEST_PG_PASSWORD_FILE"]) as f:
        env["PGPASSWORD"] = f.read().strip()
    env["PGSSLMODE"] = "disable"
    return env


def conn_args():
    return ["-h", "127.0.0.1", "-p", os.environ["PAC_TEST_PG_PORT"],
            "-U", "pac_user"]


def floor_deleted(env):
    out = subprocess.run(
        ["psql", "-tA", *conn_args(), "-d", "pac_concurrency", "-c",
         "SELECT n_tup_del FROM pg_stat_user_tables "
         "WHERE schemaname = 'pac_floor' AND relname = 'slots'"],
        env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def run_floor(repos, clients, seconds, env):
    before = floor_deleted(env)
    jobs = min(clients, 2)
    subprocess.run(
        ["/usr/lib/postgresql/15/bin/pgbench", "-n", "-M", "extended",
         "-f", "bench/pg_floor_pair.sql", "-D", f"repos={repos}",
         "-c", str(clients), "-j", str(jobs), "-T", str(seconds),
         *conn_args(), "pac_concurrency"],
        env=env, check=True, capture_output=True, text=True)
    return (floor_deleted(env) - before) / seconds


def run_driver(build, repos, clients, seconds):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [f"{build}/bench/pg_bench",
             f"--benchmark_filter=BM_PG_AcquireRelease/repos:{repos}/.*"
             f"/threads:{clients}$",
             f"--benchmark_min_time={seconds}",
             f"--benchmark_out={out.name}", "--benchmark_out_format=json"],
            check=True, capture_output=True, text=True)
        data = json.load(open(out.name))
    for b in data["benchmarks"]:
        return b["granted_per_s"]
    raise SystemExit(f"pg_bench ran nothing for {repos}x{clients}")


def rounds_at(args, repos, clients, env):
    """args.rounds paired rounds at one point: floors, drivers, ratios."""
    floors, drivers, ratios = [], [], []
    for _ in range(args.rounds):
        f = run_floor(repos, clients, args.seconds, env)
        d = run_driver(args.build, repos, clients, args.seconds)
        floors.append(f)
        drivers.append(d)
        ratios.append(d / f if f else 0)
    return floors, drivers, ratios


def paired(args):
    env = pg_env()
    points = [tuple(int(x) for x in p.split("x")) for p in args.points.split(",")]
    print(f"{'point':24} {'floor pairs/s':>14} {'driver pairs/s':>15} "
          f"{'ratio':>6}   (median of {args.rounds} paired rounds; each round's ratio)")
    for repos, clients in points:
        floors, drivers, ratios = rounds_at(args, repos, clients, env)
        print(f"{f'repos:{repos} clients:{clients}':24} "
              f"{statistics.median(floors):14.0f} "
              f"{statistics.median(drivers):15.0f} "
              f"{statistics.median(ratios):6.2f}   "
              + " ".join(f"{r:.2f}" for r in ratios))
        sys.stdout.flush()


def server_cpu_seconds():
    """CPU seconds the server has used: the postmaster's own and its reaped
    children's (each minute's backends exit with its pg_bench), plus its
    live children's (autovacuum, WAL writer, checkpointer)."""
    data = os.path.join(
        os.path.dirname(os.environ["PAC_TEST_PG_PASSWORD_FILE"]), "data")
    with open(os.path.join(data, "postmaster.pid")) as f:
        pm = int(f.readline())
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid):
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command name, which may hold spaces.
            return f.read().rsplit(")", 1)[1].split()

    fields = stat(pm)
    total = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == pm:
            continue
        try:
            fields = stat(pid)
        except OSError:
            continue
        if int(fields[1]) == pm:  # ppid
            total += int(fields[11]) + int(fields[12])
    return total / tick


def soak(args):
    """The driver alone for MINUTES at 100 repositories and 16 clients,
    minute by minute, with the server's CPU per admitted pair beside each
    rate; and the driver against the floor in paired rounds before the
    first minute and after the last. The disk moves each minute's rate
    (and, at 16 clients on 2 cores, so does contention for the CPU);
    the paired ratio before and after is what a slower database would
    lower."""
    env = pg_env()
    print(f"driver alone, 100 repositories, 16 clients, {args.soak} minutes "
          "back to back on one server (autovacuum at its defaults)")
    before_rounds = rounds_at(args, 100, 16, env)[2]
    before = statistics.median(before_rounds)
    print(f"before: driver / floor {before:.2f} (median of "
          + " ".join(f"{r:.2f}" for r in before_rounds) + ")")
    sys.stdout.flush()
    rates, cpus = [], []
    for minute in range(1, args.soak + 1):
        cpu0, t0 = server_cpu_seconds(), time.monotonic()
        rates.append(run_driver(args.build, 100, 16, 60))
        wall = time.monotonic() - t0
        time.sleep(0.5)  # the minute's backends exit and are reaped
        # Per pair over the whole call (the bench's start-up is a second
        # or so of the minute, alike in every minute).
        cpus.append((server_cpu_seconds() - cpu0) / (rates[-1] * wall) * 1e6)
        print(f"minute {minute}: {rates[-1]:.0f} pairs/s, "
              f"server CPU {cpus[-1]:.0f} us per pair")
        sys.stdout.flush()
    after_rounds = rounds_at(args, 100, 16, env)[2]
    after = statistics.median(after_rounds)
    print(f"after: driver / floor {after:.2f} (median of "
          + " ".join(f"{r:.2f}" for r in after_rounds) + ")")
    print(f"last minute / first minute: rate {rates[-1] / rates[0]:.2f}, "
          f"server CPU per pair {cpus[-1] / cpus[0]:.2f}; "
          f"driver / floor after / before: {after / before:.2f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("build")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--points", default="1x1,1x16,100x1,100x16")
    p.add_argument("--soak", type=int, default=0)
    args = p.parse_args()
    if args.soak:
        soak(args)
    else:
        paired(args)


if __name__ == "__main__":
    main()
