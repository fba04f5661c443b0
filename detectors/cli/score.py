"""``detectors score DET --data TEST [--ood OOD] --out REPORT``: scores images with
a detector bundle; writes ``REPORT/scores.csv`` (one row per image: path, source, each
detector's score and flag) and, with ``--ood``, ``report.md``, ``results.json`` and plots."""

from __future__ import annotations

import argparse
import csv
import io
import os
import warnings

from invflow.io import atomic_write


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds the ``score`` subcommand."""
    p = sub.add_parser(
        "score",
        help="score images with a fitted detector bundle; writes scores.csv (+ a report)",
        description=__doc__,
    )
    p.add_argument("bundle", metavar="DET", help="detector bundle directory (python -m detectors fit)")
    p.add_argument(
        "--data",
        required=True,
        metavar="TEST",
        help="images to score: a folder of image files (any sizes, flat or nested), a .npz or a named set",
    )
    p.add_argument(
        "--ood",
        metavar="OOD",
        default=None,
        help="known out-of-distribution images (same kinds); adds report.md, results.json and plots "
        "with TEST as in-distribution",
    )
    p.add_argument("--out", required=True, metavar="REPORT", help="report directory")
    p.add_argument(
        "--n", type=int, default=None, help="score a seeded random subset of a named set of this size"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    """Scores TEST (and OOD) and writes the report directory."""
    run_score(args)
    return 0


def _read(spec: str, bundle, progress: bool, n, seed: int):
    from ..data import describe_skipped, load_source

    src = load_source(spec, progress=progress, n=n, seed=seed)
    if src.skipped:
        print(describe_skipped(src.skipped))
    return src, bundle.prepare(src, progress)


def scores_csv(rows) -> str:
    """CSV text of [(path, source, {name: (score, flag)})]."""
    names = list(rows[0][2]) if rows else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "source"] + [c for n in names for c in (f"{n}_score", f"{n}_flag")])
    for path, source, vals in rows:
        w.writerow([path, source] + [c for n in names for c in (repr(float(vals[n][0])), int(vals[n][1]))])
    return buf.getvalue()


def _share(flags) -> float:
    return float(flags.double().mean())


def run_score(args) -> dict:
    from .. import bundle as bundle_mod
    from ..data import UnreadableImagesWarning
    from ..report import format_table, write_report

    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    progress = not args.no_progress
    bundle = bundle_mod.load(args.bundle, progress=progress)
    print(
        f"bundle {args.bundle}: {', '.join(bundle)}; images -> {bundle.policy.channels}x{bundle.policy.size}x"
        f"{bundle.policy.size}"
    )
    parts = [("data", args.data)] + ([("ood", args.ood)] if args.ood else [])
    rows, per_source = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImagesWarning)  # printed on one line by _read
        for i, (source, spec) in enumerate(parts):
            src, x = _read(spec, bundle, progress, args.n, i)
            scores = bundle.score(x, progress=progress)
            per_source[source] = scores
            for j, path in enumerate(src.paths):
                rows.append(
                    (path, source, {n: (s[j], bool(s[j] > bundle[n].threshold)) for n, s in scores.items()})
                )
            flagged = ", ".join(f"{n} {_share(s > bundle[n].threshold):.1%}" for n, s in scores.items())
            print(f"{spec}: {len(src.paths)} images scored; flagged: {flagged}")
    os.makedirs(args.out, exist_ok=True)
    atomic_write(os.path.join(args.out, "scores.csv"), scores_csv(rows))
    print(f"scores: {os.path.join(args.out, 'scores.csv')}")
    if not args.ood:
        return {"scores": per_source}
    pairs = {n: (per_source["data"][n], per_source["ood"][n]) for n in bundle}
    config = {
        "bundle": os.path.abspath(args.bundle),
        "fit_command": bundle.config.get("command"),
        "preprocessing": bundle.policy.to_json(),
        "thresholds": bundle.thresholds,
        "fit_data": bundle.config.get("data", {}).get("train"),
    }
    notes = [
        f"{n}: {bundle_mod.CATALOGUE[n].source}; threshold {bundle[n].threshold:.5g} flags "
        f"{_share(per_source['data'][n] > bundle[n].threshold):.1%} of {args.data} and "
        f"{_share(per_source['ood'][n] > bundle[n].threshold):.1%} of {args.ood}"
        for n in bundle
    ]
    results = write_report(
        args.out, args.data, args.ood, pairs, config=config, notes=notes, supervised=bundle.uses
    )
    print(format_table(results))
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return results
