"""Summarises a pytest-benchmark JSON: fused vs reference (eager) vs torch.compile medians
and ratios per case, and the effective bandwidth of the elementwise kernels as a share of
a measured copy.

    python -m pytest bench --benchmark-only --benchmark-json out.json
    python bench/ratios.py out.json
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict

OPS = ("actnorm", "invconv", "coupling")  # the op-level cases (one fused kernel each)
TARGET_EAGER, TARGET_COMPILE = 2.0, 1.1  # "CPU fused flow ops >= 2x eager, >= 1.1x torch.compile"


def fmt_ratio(r: float | None, width: int) -> str:
    return f"{'-':>{width}} " if r is None or math.isnan(r) else f"{r:>{width}.2f}x"


def target_summary(rows: dict[str, tuple[float, float | None]]) -> str | None:
    """One line: which op cases meet each target; rows maps case -> (vs eager, vs compile or None)."""
    ops = {name: r for name, r in rows.items() if name.split(" ", 1)[0] in OPS}
    if not ops:
        return None
    eager_ok = [n for n, (e, _) in sorted(ops.items()) if e >= TARGET_EAGER]
    with_comp = {n: c for n, (_, c) in ops.items() if c is not None}
    comp_ok = [n for n, c in sorted(with_comp.items()) if c >= TARGET_COMPILE]
    missing = "" if len(with_comp) == len(ops) else f", {len(ops) - len(with_comp)} without a compile row"
    return (
        f"op targets: >= {TARGET_EAGER:g}x eager {len(eager_ok)}/{len(ops)}: "
        f"{', '.join(eager_ok) or 'none'}; >= {TARGET_COMPILE:g}x compile {len(comp_ok)}/{len(with_comp)}"
        f"{missing}: {', '.join(comp_ok) or 'none'}"
    )


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["impl"]] = b
    info = data["machine_info"]
    first = data["benchmarks"][0]["extra_info"] if data["benchmarks"] else {}
    alloc = ", ".join(f"{k}={v}" for k, v in first.items() if k.startswith(("MALLOC", "LD_", "PYTORCH")))
    print(
        f"machine: {info.get('cpu', {}).get('brand_raw', '?')}, {info.get('cpu', {}).get('count', '?')} cpus; {alloc}"
    )
    print(
        f"\n{'case':<36} {'fused ms':>9} {'eager ms':>9} {'compile ms':>11} {'vs eager':>9} {'vs compile':>11}"
    )
    ratios: dict[str, tuple[float, float | None]] = {}
    for name in sorted(g for g in groups if not g.startswith("bandwidth")):
        g = {impl: rec["stats"]["median"] * 1e3 for impl, rec in groups[name].items()}
        if "fused" not in g or "reference" not in g:
            continue
        comp = g.get("compile")
        vs_eager = g["reference"] / g["fused"]
        vs_comp = comp / g["fused"] if comp is not None else None
        ratios[name] = (vs_eager, vs_comp)
        comp_s = f"{comp:>11.3f}" if comp is not None else f"{'-':>11}"
        print(
            f"{name:<36} {g['fused']:>9.3f} {g['reference']:>9.3f} {comp_s} "
            f"{fmt_ratio(vs_eager, 8)} {fmt_ratio(vs_comp, 10)}"
        )
    print("vs eager = eager ms / fused ms, vs compile = compile ms / fused ms (above 1: fused is faster).")
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

    summary = target_summary(ratios)
    if summary:
        print("\n" + summary)


if __name__ == "__main__":
    main(sys.argv[1])
