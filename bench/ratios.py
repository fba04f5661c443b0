"""Summarises a pytest-benchmark JSON: fused vs reference (eager) vs torch.compile medians
and ratios per case, and the effective bandwidth of the elementwise kernels as a share of
a measured copy.

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
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["impl"]] = b
    info = data["machine_info"]
    first = data["benchmarks"][0]["extra_info"] if data["benchmarks"] else {}
    alloc = ", ".join(f"{k}={v}" for k, v in first.items() if k.startswith(("MALLOC", "LD_", "PYTORCH")))
    print(f"machine: {info.get('cpu', {}).get('brand_raw', '?')}, {info.get('cpu', {}).get('count', '?')} cpus; {alloc}")
    print(f"\n{'case':<36} {'fused ms':>9} {'eager ms':>9} {'compile ms':>11} {'vs eager':>9} {'vs compile':>11}")
    for name in sorted(g for g in groups if not g.startswith("bandwidth")):
        g = {impl: rec["stats"]["median"] * 1e3 for impl, rec in groups[name].items()}
        if "fused" not in g or "reference" not in g:
            continue
        comp = g.get("compile")
        print(f"{name:<36} {g['fused']:>9.3f} {g['reference']:>9.3f} {comp if comp else float('nan'):>11.3f} "
              f"{g['reference'] / g['fused']:>8.2f}x {(comp / g['fused']) if comp else float('nan'):>10.2f}x")
    print("torch.compile: first order only -- it refuses double backward (no compile column there).")
    for name in sorted(g for g in groups if g.startswith("bandwidth")):
        recs = groups[name]
        if "copy" not in recs:
            continue
        gbps = {k: r["extra_info"]["bytes"] / r["stats"]["median"] / 1e9 for k, r in recs.items()}
        print(f"\n{name}: copy {gbps['copy']:.1f} GB/s, shape {recs['copy']['extra_info']['shape']}")
        for k in sorted(gbps):
            if k != "copy":
                print(f"  {k:<22} {gbps[k]:>7.1f} GB/s  {100 * gbps[k] / gbps['copy']:>5.1f}% of copy")


if __name__ == "__main__":
    main(sys.argv[1])
