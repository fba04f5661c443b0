"""``detectors score DET --data TEST [--ood OOD] --out REPORT``: scores images with
a detector bundle; writes ``REPORT/scores.csv`` (one row per image: path, source, each
detector's score and flag) and, with ``--ood``, ``report.md``, ``results.json`` and plots.

Folders are read and scored 256 images at a time (``Bundle.score_chunks``), so memory does
not grow with the folder; rows go to ``scores.csv`` as they come (renamed into place when
complete).  A report that fails after it leaves ``scores.csv`` in place, says so on one line
and exits with 1."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import warnings

from .common import MAX_IMAGES, integer, out_dir


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
    p.add_argument("--out", required=True, type=out_dir, metavar="REPORT", help="report directory")
    p.add_argument(
        "--n",
        type=integer(1, MAX_IMAGES, "MAX_IMAGES"),
        default=None,
        metavar="N",
        help="score a seeded random subset of N images of a named set",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    """Scores TEST (and OOD) and writes the report directory; 1 when scores.csv was written but
    the report after it was not."""
    return 1 if run_score(args).get("report_error") else 0


def printable(path) -> str:
    """``detectors.data.files.printable`` (imported when used: ``--help`` stays light)."""
    from ..data.files import printable

    return printable(path)


def _check_args(args) -> None:
    """The checks of the parser's types (``--out``: :func:`~detectors.cli.common.out_dir`,
    ``--n``: 1 .. MAX_IMAGES), again for a ``run_score`` called without the parser:
    ValueError before any scoring."""
    checks = (("--out", out_dir, args.out), ("--n", integer(1, MAX_IMAGES, "MAX_IMAGES"), args.n))
    for flag, check, value in checks:
        try:
            if value is not None:
                check(os.fspath(value) if flag == "--out" else str(value))
        except (argparse.ArgumentTypeError, TypeError) as e:
            raise ValueError(f"argument {flag}: {e}") from None


def csv_header(names) -> list[str]:
    return ["path", "source"] + [c for n in names for c in (f"{n}_score", f"{n}_flag")]


def csv_row(path: str, source: str, vals: dict) -> list:
    """One row: the path as the file system gives it (non-UTF-8 bytes are written back as they
    are, through surrogate escapes), the source, and each detector's score and flag."""
    return [path, source] + [c for v in vals.values() for c in (repr(float(v[0])), int(v[1]))]


def scores_csv(rows) -> str:
    """CSV text of [(path, source, {name: (score, flag)})]."""
    names = list(rows[0][2]) if rows else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_header(names))
    for path, source, vals in rows:
        w.writerow(csv_row(path, source, vals))
    return buf.getvalue()


class _RowsFile:
    """``scores.csv`` written row by row into ``NAME.partial`` and renamed over ``NAME`` when
    complete (an interrupted run leaves no half file under the final name).  File names that
    are not UTF-8 are written as their original bytes (``errors="surrogateescape"``)."""

    def __init__(self, path: str, names):
        self.path, self.partial = path, path + ".partial"
        self.f = open(self.partial, "w", encoding="utf-8", errors="surrogateescape", newline="")
        self.w = csv.writer(self.f, lineterminator="\n")
        self.w.writerow(csv_header(names))

    def write(self, path: str, source: str, vals: dict) -> None:
        self.w.writerow(csv_row(path, source, vals))

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.f.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)


def _share(flags) -> float:
    return float(flags.double().mean())


def _score_source(bundle, source: str, spec: str, progress: bool, n, seed: int, out: _RowsFile):
    """Scores one source chunk by chunk, writing its rows as they come: {name: float64 [N]}."""
    import torch

    from ..data import describe_skipped, load_source
    from ..data.folders import none_readable

    src = load_source(spec, progress=progress, n=n, seed=seed, lazy=True)
    parts, skipped = {name: [] for name in bundle}, list(src.skipped)
    for paths, scores, bad in bundle.score_chunks(src, progress=progress):
        skipped += bad
        for j, path in enumerate(paths):
            out.write(path, source, {k: (s[j], bool(s[j] > bundle[k].threshold)) for k, s in scores.items()})
        for k, s in scores.items():
            parts[k].append(s)
    if skipped:
        print(describe_skipped(skipped))
    scores = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in parts.items()}
    count = len(next(iter(scores.values())))
    if count == 0:
        raise ValueError(none_readable(spec, len(src.paths) + len(src.skipped), skipped))
    flagged = ", ".join(f"{k} {_share(s > bundle[k].threshold):.1%}" for k, s in scores.items())
    print(f"{printable(spec)}: {count} images scored; flagged: {flagged}")
    return scores


def run_score(args) -> dict:
    from .. import bundle as bundle_mod
    from ..data import UnreadableImagesWarning
    from ..report import format_table, write_report

    _check_args(args)
    progress = not args.no_progress
    bundle = bundle_mod.load(args.bundle, progress=progress)
    print(
        f"bundle {args.bundle}: {', '.join(bundle)}; images -> {bundle.policy.channels}x{bundle.policy.size}x"
        f"{bundle.policy.size}"
    )
    parts = [("data", args.data)] + ([("ood", args.ood)] if args.ood else [])
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "scores.csv")
    rows = _RowsFile(csv_path, list(bundle))
    per_source = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreadableImagesWarning)  # printed on one line by _score_source
            for i, (source, spec) in enumerate(parts):
                per_source[source] = _score_source(bundle, source, spec, progress, args.n, i, rows)
        rows.commit()
    except BaseException:
        rows.discard()
        raise
    print(f"scores: {printable(csv_path)}")
    if not args.ood:
        return {"scores": per_source}
    try:
        results = _report(args, bundle, bundle_mod, per_source, write_report)
    except Exception as e:  # the scores are safe in scores.csv: say so, do not lose them
        print(
            f"score: error: the report was not written ({type(e).__name__}: {' '.join(str(e).split())}); "
            f"the scores are in {printable(csv_path)}",
            file=sys.stderr,
        )
        return {"scores": per_source, "report_error": e}
    print(format_table(results))
    print(f"report: {printable(os.path.join(args.out, 'report.md'))}")
    return results


def _report(args, bundle, bundle_mod, per_source: dict, write_report) -> dict:
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
    return write_report(
        args.out, args.data, args.ood, pairs, config=config, notes=notes, supervised=bundle.uses
    )
