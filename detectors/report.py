"""A run's report directory (docs/design.md, "Detectors"): ``results.json``, ``report.md``,
``roc.png`` and ``histograms.png``.

    results = write_report("runs/mnist_vs_fashion", "mnist", "fashion",
                           {"likelihood": (s_in, s_out), "ratio": (r_in, r_out)},
                           config={"model": "glow"}, supervised={"ratio": "aux data"})
    print(format_table(results))

``results.json`` is ``{"in_distribution", "ood", "config", "detectors": {NAME: {"auroc",
"aupr_in", "aupr_out", "fpr95", "tnr95"}}}`` (fractions in [0, 1], detectors in the order
given) plus the extra keys ``"notes"``, ``"uses"``, ``"counts"`` and ``"created"``.
Scores are anomaly scores: HIGHER = MORE ANOMALOUS (``detectors.metrics`` conventions).

Every file is written atomically (a temporary file in the same directory, then
``os.replace``), and ``results.json`` last, so its presence means a complete report.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from invflow.io import atomic_write

from .metrics import METRICS, evaluate

RESULT_KEYS = ("in_distribution", "ood", "config", "detectors")
HEADERS = {"auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out", "fpr95": "FPR95", "tnr95": "TNR95"}
DEFAULT_COLUMNS = ("auroc", "aupr_in", "aupr_out", "fpr95")
HIST_PERCENTILES = (0.5, 99.5)
HIST_IQR = 5.0


# -- files ---------------------------------------------------------------------------------
def new_figure(figsize=(6.0, 4.0), layout: str | None = None):
    """A matplotlib Figure on the Agg canvas, outside pyplot's global state (nothing to
    close, the user's interactive backend is untouched); ``layout`` as matplotlib's
    ``Figure(layout=...)`` (e.g. "constrained", which makes room for legends outside axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Renders ``fig`` to PNG and writes it atomically to ``path``, then clears the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fig.clear()
    atomic_write(path, buf.getvalue())


# -- scores ---------------------------------------------------------------------------------
def _as_scores(values, name: str, which: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"write_report: detector {name!r}: {which} scores must be a non-empty 1-D array, "
            f"got shape {arr.shape}"
        )
    if np.isnan(arr).any():
        raise ValueError(
            f"write_report: detector {name!r}: {which} scores contain "
            f"{int(np.isnan(arr).sum())} NaN value(s); set non-finite log-likelihoods to a "
            "finite floor (-3e6, Schirrmeister et al. 2020 S4.5)"
        )
    return arr


def _finite_for_ranking(s_in: np.ndarray, s_out: np.ndarray):
    """+-inf mapped beyond every finite score, order preserved (as detectors.metrics does)."""
    both = np.concatenate([s_in, s_out])
    finite = both[np.isfinite(both)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    span = max(hi - lo, 1.0)
    both = np.where(both == np.inf, hi + span, np.where(both == -np.inf, lo - span, both))
    return both[: len(s_in)], both[len(s_in) :]


def _uses_label(value) -> str:
    if value is True:
        return "yes"
    if value is False or value is None:
        return "-"
    return str(value)


# -- report -----------------------------------------------------------------------------------
def write_report(
    out_dir,
    in_name: str,
    ood_name: str,
    scores: Mapping,
    config: dict | None = None,
    notes=(),
    supervised: Mapping | None = None,
    plots: bool = True,
) -> dict:
    """Evaluates every detector and writes the report directory; returns the results dict
    (as written to ``results.json``).

    Args:
        scores: NAME -> (s_in, s_out), 1-D arrays or tensors, HIGHER = MORE ANOMALOUS, in
            table order.  +-inf is allowed (ranked at the ends); NaN raises ValueError
            naming the detector, before anything is written.
        config: JSON-able run configuration (values JSON cannot hold are stored as str).
        notes: lines shown in report.md and stored under "notes".
        supervised: NAME -> bool or str for the "uses" column (what beyond unlabelled
            in-distribution data a detector uses): True -> "yes", False/missing -> "-",
            a string as given (e.g. "labels", "aux data").
        plots: write roc.png and histograms.png and embed them in report.md.
    """
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("write_report: scores must be a non-empty dict NAME -> (s_in, s_out)")
    if isinstance(notes, str):
        notes = (notes,)
    supervised = dict(supervised or {})
    unknown = [k for k in supervised if k not in scores]
    if unknown:
        raise ValueError(
            f"write_report: supervised names {unknown} are not detectors in scores {list(scores)}"
        )
    arrays, metrics = {}, {}
    for name, pair in scores.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"write_report: detector names must be non-empty strings, got {name!r}")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"write_report: detector {name!r}: expected a pair (s_in, s_out)")
        s_in, s_out = _as_scores(pair[0], name, "in-distribution"), _as_scores(pair[1], name, "OOD")
        arrays[name] = (s_in, s_out)
        metrics[name] = evaluate(s_in, s_out)

    results = {
        "in_distribution": str(in_name),
        "ood": str(ood_name),
        "config": dict(config or {}),
        "detectors": metrics,
        "notes": [str(n) for n in notes],
        "uses": {name: _uses_label(supervised.get(name)) for name in scores},
        "counts": {name: {"in": int(len(a)), "ood": int(len(b))} for name, (a, b) in arrays.items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(results, indent=2, default=str, allow_nan=False) + "\n"
    results = json.loads(text)  # what is returned == what load_results reads back

    os.makedirs(out_dir, exist_ok=True)
    if plots:
        plot_roc(arrays, metrics, os.path.join(out_dir, "roc.png"))
        plot_histograms(
            arrays, os.path.join(out_dir, "histograms.png"), in_name=str(in_name), ood_name=str(ood_name)
        )
    atomic_write(os.path.join(out_dir, "report.md"), render_markdown(results, plots=plots))
    atomic_write(os.path.join(out_dir, "results.json"), text)
    return results


def _md_escape(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict, plots: bool = True) -> str:
    """report.md text for a results dict (the ROC figure and histograms linked relatively)."""
    n_in = n_ood = None
    counts = list((results.get("counts") or {}).values())
    if counts and all(c == counts[0] for c in counts):  # the same samples for every detector
        n_in, n_ood = counts[0].get("in"), counts[0].get("ood")
    lines = [f"# OOD detection: {results['in_distribution']} (in-distribution) vs {results['ood']} (OOD)", ""]
    lines.append(f"- in-distribution: **{results['in_distribution']}**" + (f" (n = {n_in})" if n_in else ""))
    lines.append(f"- OOD: **{results['ood']}**" + (f" (n = {n_ood})" if n_ood else ""))
    if results.get("created"):
        lines.append(f"- created: {results['created']}")
    lines += ["", "## Configuration", ""]
    config = results.get("config") or {}
    if config:
        lines += ["| key | value |", "|---|---|"]
        for k, v in config.items():
            v = v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, default=str)
            lines.append(f"| {_md_escape(k)} | `{_md_escape(v)}` |")
    else:
        lines.append("(none)")
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    lines += [
        "",
        "## Results",
        "",
        "Scores: higher = more anomalous. AUROC and AUPR-out take OOD as the positive class, AUPR-in "
        "the in-distribution data; FPR95 is the share of OOD samples accepted when 95% of the "
        "in-distribution samples are accepted (lower is better). All in percent.",
        "",
        markdown_table(results),
        "",
    ]
    if plots:
        lines += [
            "## ROC curves",
            "",
            "![ROC curves](roc.png)",
            "",
            "## Score histograms",
            "",
            "![Score histograms](histograms.png)",
            "",
            f"Each histogram shows the bulk of the scores (per group, the {HIST_PERCENTILES[0]}-"
            f"{HIST_PERCENTILES[1]} percentile range within {HIST_IQR:g} interquartile ranges of the "
            "quartiles); the number of scores outside it is given in each panel.",
            "",
        ]
    return "\n".join(lines)


# -- tables -------------------------------------------------------------------------------------
def _detectors(results: Mapping) -> Mapping:
    if "detectors" in results and "in_distribution" in results:
        return results["detectors"]
    return results


def setting(uses: str) -> str:
    """The column of Schirrmeister et al. 2020 Tab. 4: "supervised" when a detector uses class labels, else
    "unsupervised" (auxiliary / general-distribution data do not make it supervised)."""
    return "supervised" if "labels" in str(uses) else "unsupervised"


def _rows(results: Mapping, columns):
    for c in columns:
        if c not in METRICS:
            raise ValueError(f"unknown metric column {c!r}; choose from {METRICS}")
    dets = _detectors(results)
    uses = results.get("uses") if dets is not results else None
    show_uses = bool(uses) and any(v != "-" for v in uses.values())
    header = ["detector"] + [HEADERS[c] for c in columns] + (["setting", "uses"] if show_uses else [])
    rows = []
    for name, m in dets.items():
        row = [str(name)] + [f"{100.0 * float(m[c]):.1f}" for c in columns]
        if show_uses:
            row += [setting(uses.get(name, "-")), str(uses.get(name, "-"))]
        rows.append(row)
    return header, rows


def format_table(results: Mapping, columns=DEFAULT_COLUMNS) -> str:
    """Fixed-width plain-text table (percent, one decimal), one row per detector in order.
    ``results`` is a full results dict or just its "detectors" mapping."""
    header, rows = _rows(results, columns)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    n_text = 2 if header[-1] == "uses" else 0  # setting and uses are text columns

    def fmt(row):
        cells = []
        for i, cell in enumerate(row):
            left = i == 0 or i >= len(row) - n_text
            cells.append(cell.ljust(widths[i]) if left else cell.rjust(widths[i]))
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule] + [fmt(r) for r in rows])


def markdown_table(results: Mapping, columns=DEFAULT_COLUMNS) -> str:
    """The same table in Markdown (percent, one decimal)."""
    header, rows = _rows(results, columns)
    align = ["---"] + ["---:"] * len(columns) + (["---", "---"] if header[-1] == "uses" else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def load_results(path) -> dict:
    """Reads a results.json (or the report directory holding one) and validates it:
    ValueError unless it has "in_distribution", "ood" (str), "config" (dict) and
    "detectors" (NAME -> all of detectors.metrics.METRICS as numbers in [0, 1])."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"load_results: {path} is not valid JSON: {e}") from None
    if not isinstance(results, dict):
        raise ValueError(f"load_results: {path} must hold a JSON object, got {type(results).__name__}")
    missing = [k for k in RESULT_KEYS if k not in results]
    if missing:
        raise ValueError(f"load_results: {path} lacks the keys {missing} (expected {list(RESULT_KEYS)})")
    for k in ("in_distribution", "ood"):
        if not isinstance(results[k], str):
            raise ValueError(f"load_results: {path}: {k!r} must be a string, got {results[k]!r}")
    if not isinstance(results["config"], dict):
        raise ValueError(f"load_results: {path}: 'config' must be an object")
    dets = results["detectors"]
    if not isinstance(dets, dict) or not dets:
        raise ValueError(f"load_results: {path}: 'detectors' must be a non-empty object NAME -> metrics")
    for name, m in dets.items():
        if not isinstance(m, dict):
            raise ValueError(f"load_results: {path}: detector {name!r} must map to an object of metrics")
        lacking = [k for k in METRICS if k not in m]
        if lacking:
            raise ValueError(f"load_results: {path}: detector {name!r} lacks the metrics {lacking}")
        for k in METRICS:
            v = m[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
                raise ValueError(
                    f"load_results: {path}: detector {name!r}: {k} must be a number in [0, 1], got {v!r}"
                )
    return results


# -- plots ----------------------------------------------------------------------------------------
#: most curves one ROC panel shows (the ten colours of matplotlib's tab10); a family with more
#: shows its ROC_PER_PANEL best by AUROC and names how many more are in the table
ROC_PER_PANEL = 10
#: the family of detectors whose names have no "FAMILY: " prefix
ROC_DEFAULT_FAMILY = "likelihood and model scores"


def roc_families(names, families: Mapping | None = None) -> dict[str, list[str]]:
    """Detector names grouped into ROC panels, in order of first appearance: by
    ``families[name]`` when given, else by the prefix of a "FAMILY: detector" name (the demo's
    "features: KDE", "ensemble: ...", "outlier loss: Diff"), else ``ROC_DEFAULT_FAMILY``."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if families is not None and name in families:
            family = str(families[name])
        elif ": " in name:
            family = name.split(": ", 1)[0]
        else:
            family = ROC_DEFAULT_FAMILY
        groups.setdefault(family, []).append(name)
    return groups


def plot_roc(
    arrays: Mapping,
    metrics: Mapping,
    path: str,
    title: str | None = None,
    families: Mapping | None = None,
    per_panel: int = ROC_PER_PANEL,
) -> None:
    """ROC curves (OOD positive), one panel per detector family (``roc_families``), each
    panel's legend below its axes so that it covers no curve.

    Args:
        arrays: NAME -> (s_in, s_out) scores, HIGHER = MORE ANOMALOUS (+-inf ranked at the ends).
        metrics: NAME -> {"auroc": fraction in [0, 1], ...} (``detectors.metrics.evaluate``).
        path: the PNG to write (atomically).
        title: the figure's title (default "ROC").
        families: NAME -> family, overriding the grouping by name prefix.
        per_panel: at most this many curves per panel (the best by AUROC; the panel's title
            counts the others, which are in the table).  ValueError unless an int >= 1.
    """
    save_figure(roc_figure(arrays, metrics, title, families, per_panel), path)


def roc_figure(
    arrays: Mapping,
    metrics: Mapping,
    title: str | None = None,
    families: Mapping | None = None,
    per_panel: int = ROC_PER_PANEL,
):
    """The matplotlib Figure that :func:`plot_roc` writes (same arguments, no path)."""
    from sklearn.metrics import roc_curve

    if isinstance(per_panel, bool) or not isinstance(per_panel, int) or per_panel < 1:
        raise ValueError(f"plot_roc: per_panel must be an int >= 1, got {per_panel!r}")
    groups = roc_families(list(arrays), families)
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    longest = max(len(v) for v in groups.values())
    legend_h = 0.22 * min(longest, per_panel) + 0.3
    fig = new_figure((4.6 * cols, (3.6 + legend_h) * rows), layout="constrained")
    colours = [f"C{i}" for i in range(10)]
    for i, (family, names) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        shown = sorted(names, key=lambda n: -metrics[n]["auroc"])[:per_panel]
        shown = [n for n in names if n in shown]  # table order
        for j, name in enumerate(shown):
            a, b = _finite_for_ranking(*arrays[name])
            labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
            fpr, tpr, _ = roc_curve(labels, np.concatenate([a, b]))
            short = name.split(": ", 1)[1] if name.startswith(family + ": ") else name
            ax.plot(
                fpr,
                tpr,
                lw=1.4,
                color=colours[j % len(colours)],
                ls="-" if j < len(colours) else ":",
                label=f"{short} ({100 * metrics[name]['auroc']:.1f}%)",
            )
        hidden = len(names) - len(shown)
        ax.set_title(
            family + (f" (best {len(shown)}; {hidden} more in the table)" if hidden else ""), fontsize=10
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=8)
        ax.set_xlabel("FPR (in-distribution flagged)", fontsize=8)
        ax.set_ylabel("TPR (OOD flagged)", fontsize=8)
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.18),
            fontsize=7.5,
            frameon=False,
            title="detector (AUROC)",
            title_fontsize=7.5,
        )
    fig.suptitle(title or "ROC", fontsize=11)
    return fig


def robust_range(groups, percentiles=HIST_PERCENTILES, iqr: float = HIST_IQR) -> tuple[float, float] | None:
    """x-limits covering every group's bulk: per group, the ``percentiles`` range of its
    finite scores, narrowed to [q1 - iqr * IQR, q3 + iqr * IQR] (so a few percent of -3e6
    floors do not squash the plot); the union over groups.  None if no score is finite."""
    lows, highs = [], []
    for values in groups:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        lo, q1, q3, hi = np.percentile(v, [percentiles[0], 25, 75, percentiles[1]])
        if q3 > q1:
            lo, hi = max(lo, q1 - iqr * (q3 - q1)), min(hi, q3 + iqr * (q3 - q1))
        lows.append(lo)
        highs.append(hi)
    if not lows:
        return None
    lo, hi = float(min(lows)), float(max(highs))
    return (lo - 0.5, hi + 0.5) if not hi > lo else (lo, hi)


def plot_histograms(
    arrays: Mapping, path: str, in_name: str = "in", ood_name: str = "ood", bins: int = 50
) -> None:
    """Grid of per-detector score histograms, in-distribution vs OOD, density-normalised over
    the shown range (``robust_range`` of the two groups, so that floors like -3e6 do not
    squash the plot); each panel states how many scores fall outside it."""
    k = len(arrays)
    cols = min(3, k)
    rows = math.ceil(k / cols)
    fig = new_figure((4.2 * cols, 3.2 * rows))
    for i, (name, (s_in, s_out)) in enumerate(arrays.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        limits = robust_range([s_in, s_out])
        if limits is None:
            ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name, fontsize=9)
            continue
        lo, hi = limits
        edges = np.linspace(lo, hi, bins + 1)
        clipped = []
        for values, label, color in ((s_in, in_name, "tab:blue"), (s_out, ood_name, "tab:orange")):
            inside = values[(values >= lo) & (values <= hi)]
            clipped.append(len(values) - len(inside))
            if inside.size:
                ax.hist(
                    inside,
                    bins=edges,
                    density=True,
                    alpha=0.5,
                    color=color,
                    label=f"{label} (n={len(values)})",
                )
        ax.set_title(f"{name}\noutside range: {in_name} {clipped[0]}, {ood_name} {clipped[1]}", fontsize=9)
        ax.set_xlabel("anomaly score (higher = more anomalous)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
