#!/usr/bin/env python3
"""Prints driver/floor throughput ratios from a Google Benchmark JSON file."""
import json
import re
import sys


def main(path):
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


if __name__ == "__main__":
    main(sys.argv[1])
