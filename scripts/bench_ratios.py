#!/usr/bin/env python3
"""Prints driver/floor throughput ratios from Google Benchmark JSON files.

  bench_ratios.py memory_bench.json
  bench_ratios.py --pg pg_bench.json pgbench.txt
"""
import json
import re
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


def pg(bench_json, pgbench_txt):
    with open(bench_json) as f:
        data = json.load(f)
    floor = {}
    with open(pgbench_txt) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2]:
                floor[(parts[0], parts[1])] = float(parts[2])
    print(f"{'point':28} {'pgbench pairs/s':>16} {'driver pairs/s':>15} "
          f"{'granted/s':>10} {'ratio':>6}")
    for b in data["benchmarks"]:
        m = re.match(r"BM_PG_AcquireRelease/(repos:\d+)/.*(threads:\d+)", b["name"])
        if m:
            key = (m.group(1), m.group(2))
            rate = b["items_per_second"]
            fl = floor.get(key)
            ratio = f"{rate / fl:6.2f}" if fl else "   n/a"
            print(f"{key[0] + ' ' + key[1]:28} {fl or 0:16.0f} {rate:15.0f} "
                  f"{b.get('granted_per_s', 0):10.0f} {ratio}")
        elif b["name"].startswith("BM_PG_ReleaseToWatcher"):
            print(f"release -> watcher across processes: p50 {b['p50_ms']:.2f} ms, "
                  f"p99 {b['p99_ms']:.2f} ms, max {b['max_ms']:.2f} ms")


def etcd(bench_json):
    with open(bench_json) as f:
        data = json.load(f)
    put, txn = {}, {}
    for b in data["benchmarks"]:
        m = re.match(r"BM_Etcd_RawPut/.*(threads:\d+)", b["name"])
        if m:
            put[m.group(1)] = b["items_per_second"]
        m = re.match(r"BM_Etcd_RawTxnPair/.*(threads:\d+)", b["name"])
        if m:
            txn[m.group(1)] = b["items_per_second"]
    print(f"{'point':38} {'raw Put/s':>10} {'raw Txn pairs/s':>16} {'pairs/s':>9} "
          f"{'granted/s':>10} {'pairs/Put':>10} {'pairs/Txn pair':>15}")
    for b in data["benchmarks"]:
        m = re.match(r"BM_Etcd_AcquireRelease/(repos:\d+)/shared:(\d)/.*(threads:\d+)",
                     b["name"])
        if m:
            p = put.get(m.group(3))
            t = txn.get(m.group(3))
            rate = b["items_per_second"]
            drivers = "1 driver" if m.group(2) == "1" else "a driver each"
            point = f"{m.group(1)} {m.group(3)} {drivers}"
            print(f"{point:38} {p or 0:10.0f} {t or 0:16.0f} "
                  f"{rate:9.0f} {b.get('granted_per_s', 0):10.0f} "
                  f"{rate / p if p else 0:10.2f} {rate / t if t else 0:15.2f}")
    for b in data["benchmarks"]:
        m = re.match(r"BM_Etcd_HandOff/repo:1/shared:(\d)", b["name"])
        if m:
            drivers = "one shared driver" if m.group(1) == "1" else "a driver each"
            print(f"hand-off, 1 repository (limit 2), 16 queued clients, {drivers}: "
                  f"{b['items_per_second']:.0f} admitted pairs/s")
        if b["name"].startswith("BM_Etcd_ReleaseToWatcherAcrossProcesses"):
            print(f"release -> watcher in another process: p50 {b['p50_ms']:.1f} ms, "
                  f"p99 {b['p99_ms']:.1f} ms, max {b['max_ms']:.1f} ms")


if __name__ == "__main__":
    if sys.argv[1] == "--etcd":
        etcd(sys.argv[2])
    elif sys.argv[1] == "--pg":
        pg(sys.argv[2], sys.argv[3])
    else:
        memory(sys.argv[1])
