#!/usr/bin/env python3
"""Prints driver/floor throughput ratios from Google Benchmark JSON files.

  bench_ratios.py memory_bench.json
  bench_ratios.py --pg pg_bench.json pgbench.txt pgfloor.txt
  bench_ratios.py --etcd etcd_bench.1.json [etcd_bench.2.json ...]
"""
import json
import re
import statistics
import sys


def memory(path):
    with open(path) as f:
        data = json.load(f)
    rates = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        m = re.match(r"BM_(\w+?)_AcquireRelease/(repos:\d+)/real_time/(threads:\d+)",
                     b["run_name"])
        if m:
            rates[(m.group(1), m.group(2), m.group(3))] = b["items_per_second"]
    print(f"{'point':28} {'floor Mpairs/s':>15} {'leases floor':>13} "
          f"{'driver':>8} {'/floor':>7} {'/leases floor':>14}")
    for (kind, repos, threads), rate in sorted(rates.items()):
        if kind != "Memory":
            continue
        floor = rates.get(("Floor", repos, threads))
        book = rates.get(("FloorWithLeases", repos, threads))
        print(f"{repos + ' ' + threads:28} {floor / 1e6:15.2f} {book / 1e6:13.2f} "
              f"{rate / 1e6:8.2f} {rate / floor:7.2f} {rate / book:14.2f}")
    # The cost of a shared limit: 100 members against 100 repositories.
    for b in data["benchmarks"]:
        m = re.match(r"BM_Memory_AcquireRelease_SharedLimit/real_time/(threads:\d+)",
                     b["run_name"])
        if m and b.get("aggregate_name") == "median":
            plain = rates.get(("Memory", "repos:100", m.group(1)))
            if plain:
                print(f"shared limit, 100 members, {m.group(1)}: "
                      f"{b['items_per_second'] / 1e3:.1f}k pairs/s, "
                      f"{b['items_per_second'] / plain:.3f} of the pair without")


def pg(bench_json, pgbench_txt, floor_txt):
    with open(bench_json) as f:
        data = json.load(f)

    def read(path):
        rates = {}
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2]:
                    rates[(parts[0], parts[1])] = float(parts[2])
        return rates

    same, floor = read(pgbench_txt), read(floor_txt)
    print(f"{'point':28} {'floor':>7} {'same SQL':>9} {'driver':>7} "
          f"{'granted/s':>10} {'driver/floor':>13} {'driver/same SQL':>16}")
    for b in data["benchmarks"]:
        m = re.match(r"BM_PG_AcquireRelease/(repos:\d+)/.*(threads:\d+)", b["name"])
        if m:
            key = (m.group(1), m.group(2))
            rate = b["items_per_second"]
            fl, sq = floor.get(key), same.get(key)
            r1 = f"{rate / fl:13.2f}" if fl else f"{'n/a':>13}"
            r2 = f"{rate / sq:16.2f}" if sq else f"{'n/a':>16}"
            print(f"{key[0] + ' ' + key[1]:28} {fl or 0:7.0f} {sq or 0:9.0f} "
                  f"{rate:7.0f} {b.get('granted_per_s', 0):10.0f} {r1} {r2}")
        elif b["name"].startswith("BM_PG_AcquireRelease_SharedLimit"):
            t = re.search(r"threads:\d+", b["name"]).group(0)
            plain = next((x["items_per_second"] for x in data["benchmarks"]
                          if x["name"].startswith("BM_PG_AcquireRelease/repos:100/")
                          and x["name"].endswith(t)), None)
            if plain:
                print(f"shared limit, 100 members, {t}: {b['items_per_second']:.0f} "
                      f"pairs/s, {b['items_per_second'] / plain:.2f} of the pair without")
        elif b["name"].startswith("BM_PG_ReleaseToWatcher"):
            print(f"release -> watcher across processes: p50 {b['p50_ms']:.2f} ms, "
                  f"p99 {b['p99_ms']:.2f} ms, max {b['max_ms']:.2f} ms")


def etcd_run(bench_json):
    """One run: {point: (raw Put/s, raw Txn pairs/s (grouped for a shared
    driver at 16 threads), pairs/s, granted/s)}, the hand-off rates and the
    release-to-watcher latencies (p50, p99, max)."""
    with open(bench_json) as f:
        data = json.load(f)
    put, txn, grouped, points, handoff, latency = {}, {}, {}, {}, {}, None
    for b in data["benchmarks"]:
        m = re.match(r"BM_Etcd_RawPut/.*(threads:\d+)", b["name"])
        if m:
            put[m.group(1)] = b["items_per_second"]
        m = re.match(r"BM_Etcd_RawTxnPair/.*(threads:\d+)", b["name"])
        if m:
            txn[m.group(1)] = b["items_per_second"]
        m = re.match(r"BM_Etcd_RawTxnPairGrouped/.*(threads:\d+)", b["name"])
        if m:
            grouped[m.group(1)] = b["items_per_second"]
    for b in data["benchmarks"]:
        m = re.match(r"BM_Etcd_AcquireRelease/(repos:\d+)/shared:(\d)/.*(threads:\d+)",
                     b["name"])
        if m:
            one = m.group(2) == "1" or m.group(3) == "threads:1"
            drivers = "1 driver" if one else "a driver each"
            point = f"{m.group(1)} {m.group(3)} {drivers}"
            # The Txn floor of a shared driver at 16 threads is the grouped
            # one (its Txns share requests); of a driver each, Txns alone.
            floor = txn.get(m.group(3), 0)
            if m.group(2) == "1" and m.group(3) in grouped:
                floor = grouped[m.group(3)]
            points[point] = (put.get(m.group(3), 0), floor,
                             b["items_per_second"], b.get("granted_per_s", 0))
        m = re.match(r"BM_Etcd_HandOff/repo:1/shared:(\d)", b["name"])
        if m:
            drivers = "one shared driver" if m.group(1) == "1" else "a driver each"
            handoff[drivers] = b["items_per_second"]
        if b["name"].startswith("BM_Etcd_ReleaseToWatcherAcrossProcesses"):
            latency = (b["p50_ms"], b["p99_ms"], b["max_ms"])
    # The cost of a shared limit: 100 members against 100 repositories.
    for b in data["benchmarks"]:
        m = re.match(r"BM_Etcd_AcquireRelease_SharedLimit/.*(threads:\d+)", b["name"])
        plain = points.get(f"repos:100 {m.group(1)} "
                           f"{'1 driver' if m.group(1) == 'threads:1' else 'a driver each'}"
                           ) if m else None
        if plain:
            print(f"shared limit, 100 members, {m.group(1)}: "
                  f"{b['items_per_second']:.0f} pairs/s, "
                  f"{b['items_per_second'] / plain[2]:.2f} of the pair without")
    return points, handoff, latency


def etcd(bench_jsons):
    runs = [etcd_run(path) for path in bench_jsons]
    print("raw Txn pairs/s: the driver's Txn pair without the driver, each Txn "
          "sent alone; for one shared driver at 16 threads, grouped into shared "
          "requests by the driver's batcher (BM_Etcd_RawTxnPairGrouped)")
    header = (f"{'point':38} {'raw Put/s':>10} {'raw Txn pairs/s':>16} {'pairs/s':>9} "
              f"{'granted/s':>10} {'pairs/Put':>10} {'pairs/Txn pair':>15}")
    ratio = lambda a, b: a / b if b else 0.0
    for i, (points, handoff, latency) in enumerate(runs, 1):
        if len(runs) > 1:
            print(f"--- run {i} of {len(runs)}")
        print(header)
        for point, (p, t, rate, granted) in points.items():
            print(f"{point:38} {p:10.0f} {t:16.0f} {rate:9.0f} {granted:10.0f} "
                  f"{ratio(rate, p):10.2f} {ratio(rate, t):15.2f}")
        for drivers, rate in handoff.items():
            print(f"hand-off, 1 repository (limit 2), 16 queued clients, {drivers}: "
                  f"{rate:.0f} admitted pairs/s")
        if latency:
            print(f"release -> watcher in another process: p50 {latency[0]:.1f} ms, "
                  f"p99 {latency[1]:.1f} ms, max {latency[2]:.1f} ms")
    if len(runs) < 2:
        return
    # Each ratio is taken against its own run's floors (the same server),
    # then the median over the runs; [min-max] beside it.
    med = statistics.median
    span = lambda xs: f"[{min(xs):.2f}-{max(xs):.2f}]"
    print(f"--- median of {len(runs)} runs (each ratio against its own run's floors)")
    print(f"{'point':38} {'raw Put/s':>10} {'pairs/s':>9} {'pairs/Put':>10} "
          f"{'range':>11} {'pairs/Txn pair':>15}")
    for point in runs[0][0]:
        rows = [r[0][point] for r in runs if point in r[0]]
        by_put = [ratio(x[2], x[0]) for x in rows]
        by_txn = [ratio(x[2], x[1]) for x in rows]
        print(f"{point:38} {med([x[0] for x in rows]):10.0f} "
              f"{med([x[2] for x in rows]):9.0f} {med(by_put):10.2f} "
              f"{span(by_put):>11} {med(by_txn):15.2f}")
    for drivers in runs[0][1]:
        rates = [r[1][drivers] for r in runs if drivers in r[1]]
        print(f"hand-off, {drivers}: median {med(rates):.0f} admitted pairs/s "
              f"[{min(rates):.0f}-{max(rates):.0f}]")
    p99s = [r[2][1] for r in runs if r[2]]
    if p99s:
        print(f"release -> watcher in another process: p99 median {med(p99s):.1f} ms, "
              f"worst run {max(p99s):.1f} ms")


if __name__ == "__main__":
    if sys.argv[1] == "--etcd":
        etcd(sys.argv[2:])
    elif sys.argv[1] == "--pg":
        pg(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        memory(sys.argv[1])
