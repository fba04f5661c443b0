"""Prints reference/fused median ratios per benchmark group from a pytest-benchmark JSON.

    python -m pytest bench --benchmark-only --benchmark-json out.json
    python bench/ratios.py out.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["impl"]] = b["stats"]["median"]
    info = data["machine_info"]
    print(f"machine: {info.get('cpu', {}).get('brand_raw', '?')}, {info.get('cpu', {}).get('count', '?')} cpus")
    print(f"{'case':<40} {'fused ms':>10} {'reference ms':>13} {'speed-up':>9}")
    for group in sorted(groups):
        g = groups[group]
        if "fused" in g and "reference" in g:
            print(f"{group:<40} {g['fused'] * 1e3:>10.3f} {g['reference'] * 1e3:>13.3f} {g['reference'] / g['fused']:>8.2f}x")


if __name__ == "__main__":
    main(sys.argv[1])
