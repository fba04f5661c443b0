"""The papers' two directions that the zoo's first models did not reproduce, measured on paired
zoo models (same data, same steps budget, one difference):

* outlier loss > none (Schirrmeister et al. 2020 Tab. 3): ``fmnist-glow-from-general`` (maximum
  likelihood) vs ``fmnist-glow-from-general-outlier`` (plus the outlier loss against the general
  model), both finetuned from the general model ``photos-glow-broad`` as the paper's
  in-distribution models are (S7.2); scored by likelihood, last scale and Diff to that general
  model;
* penalised approximate mass > vanilla (Chali et al. 2023 Tab. 1): ``fmnist-realnvp`` vs
  ``fmnist-realnvp-mass`` (penalised from the start, the paper's protocol, Sec. 4.1) and
  ``fmnist-realnvp-mass-ft*`` (the vanilla model finetuned with the penalty at alpha = 2, 0.5
  and 0.1).

    python -m detectors.experiments.findings [--n 500] [--seeds 0 1 2] [--out runs/findings]

AUROC % of ``n`` Fashion-MNIST test images against ``n`` images of each OOD-suite set
(``ood_suite.ood_sets``); writes ``auroc.json`` and ``table.md``.  Seeds: seed 0 scores the
shipped zoo models; seed K >= 1 scores the replicates of the finetunes (:data:`REPLICATED`,
trained with ``python -m detectors zoo NAME --seed K``, kept in ``runs/zoo/NAME-seedK``) with
the other models (the general model, the vanilla RealNVP, the RealNVP penalised from the start)
at seed 0.  With several seeds the table holds the mean over seeds, and a second table each
seed's AUROC on MNIST and mean over the sets.
"""

from __future__ import annotations

import numpy as np

#: (row name, detector class, zoo models it takes)
ROWS = (
    ("likelihood", "Likelihood", ("fmnist-glow-from-general",)),
    ("outlier loss: likelihood", "Likelihood", ("fmnist-glow-from-general-outlier",)),
    ("last scale", "LastScale", ("fmnist-glow-from-general",)),
    ("outlier loss: last scale", "LastScale", ("fmnist-glow-from-general-outlier",)),
    ("Diff", "LikelihoodRatio", ("fmnist-glow-from-general", "photos-glow-broad")),
    ("outlier loss: Diff", "LikelihoodRatio", ("fmnist-glow-from-general-outlier", "photos-glow-broad")),
    ("approximate mass (vanilla)", "ApproximateMass", ("fmnist-realnvp",)),
    ("approximate mass (penalised from the start)", "ApproximateMass", ("fmnist-realnvp-mass",)),
    (
        "approximate mass (vanilla finetuned with the penalty, alpha 2)",
        "ApproximateMass",
        ("fmnist-realnvp-mass-ft",),
    ),
    (
        "approximate mass (vanilla finetuned with the penalty, alpha 0.5)",
        "ApproximateMass",
        ("fmnist-realnvp-mass-ft-a0.5",),
    ),
    (
        "approximate mass (vanilla finetuned with the penalty, alpha 0.1)",
        "ApproximateMass",
        ("fmnist-realnvp-mass-ft-a0.1",),
    ),
)

#: the finetunes whose training a seed replicates (each starts from a seed-0 model): the outlier
#: loss pair, and of the approximate-mass finetunes the one that costs the least bits/dim
REPLICATED = frozenset(
    {
        "fmnist-glow-from-general",
        "fmnist-glow-from-general-outlier",
        "fmnist-realnvp-mass-ft-a0.1",
    }
)


def detectors_of(rows=ROWS, seed: int = 0, root: str = "runs/zoo") -> dict:
    """{row name: detector} of the zoo models each row names (Memoized: one pass per model);
    for ``seed`` >= 1 only the rows that use a :data:`REPLICATED` model, with its replicate.
    FileNotFoundError naming the training command when a replicate is missing."""
    from .. import scores
    from ..zoo.train import load_replicate
    from .runs import Memoized

    models = {}
    out = {}
    for name, cls, needs in rows:
        if seed and not REPLICATED.intersection(needs):
            continue
        ms = []
        for m in needs:
            s = seed if m in REPLICATED else 0
            if (m, s) not in models:
                models[m, s] = Memoized(load_replicate(m, s, root))
            ms.append(models[m, s])
        out[name] = getattr(scores, cls)(*ms)
    return out


def check_replicates(seeds, root: str = "runs/zoo") -> dict:
    """{model: {seed: training step}} of every :data:`REPLICATED` model at ``seeds`` (seed 0: the
    shipped card's).  One ValueError listing every replicate that is missing or was trained for
    a different number of steps than the shipped seed-0 model, with the commands that fix it."""
    from ..zoo.train import replicate_step

    steps = {m: {s: replicate_step(m, s, root) for s in sorted({0, *seeds})} for m in sorted(REPLICATED)}
    wrong = []
    for m, by_seed in steps.items():
        for s, step in by_seed.items():
            if s and step != by_seed[0]:
                state = "missing" if step is None else f"at step {step}"
                wrong.append(
                    f"{m} seed {s}: {state}; run python -m detectors zoo {m} --seed {s} --root {root} "
                    f"--steps {by_seed[0]}"
                )
    if wrong:
        raise ValueError(
            f"{len(wrong)} seed replicate(s) do not match the shipped seed-0 training: " + "; ".join(wrong)
        )
    return steps


def over_seeds(per_seed: dict[int, dict]) -> dict:
    """Combines ``{seed: score_suite results}``: each row's per-set AUROC averaged over the seeds
    that have the row (rows of fixed models have seed 0 only), with ``"seeds"``: {seed: per_set}."""
    from .ood_suite import summarise

    rows = dict.fromkeys(r for res in per_seed.values() for r in res)
    out = {}
    for r in rows:
        runs = {s: res[r]["per_set"] for s, res in per_seed.items() if r in res}
        sets = next(iter(runs.values()))
        out[r] = summarise({k: float(np.mean([p[k] for p in runs.values()])) for k in sets})
        out[r]["seeds"] = runs
    return out


def seeds_table(results: dict) -> str:
    """Markdown: per row, each seed's AUROC % on MNIST and mean over the sets."""
    lines = ["| detector | seed: MNIST (mean over the sets) |", "| --- | --- |"]
    for r, res in results.items():
        cells = ", ".join(
            f"{s}: {100 * p['MNIST']:.1f} ({100 * np.mean(list(p.values())):.1f})"
            for s, p in res["seeds"].items()
        )
        lines.append(f"| {r} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from ..cli.common import integer, out_dir, script_parser
    from .ood_suite import MAX_N

    p = script_parser("detectors.experiments.findings", __doc__)
    p.add_argument(
        "--n", type=integer(1, MAX_N), default=500, help="images per set (sklearn digits has 1797)"
    )
    p.add_argument("--seeds", type=integer(0, 2**31 - 1), nargs="+", default=[0], help="training seeds")
    p.add_argument("--root", default="runs/zoo", help="where the seed replicates were trained")
    p.add_argument(
        "--out", type=out_dir, default="runs/findings", help="auroc.json, replicates.json, table.md"
    )
    args = p.parse_args(argv)
    import json
    import os

    from .ood_suite import in_and_base, markdown, ood_sets, save, score_suite

    steps = check_replicates(args.seeds, args.root)  # before any scoring
    x_in, _ = in_and_base(args.n)
    sets = ood_sets(args.n)
    dets = {s: detectors_of(seed=s, root=args.root) for s in args.seeds}
    per_seed = {s: score_suite(d, x_in, sets) for s, d in dets.items()}
    results = over_seeds(per_seed)
    table = markdown(results)
    if len(args.seeds) > 1 or args.seeds != [0]:
        table += (
            f"\nRows of {', '.join(sorted(REPLICATED))} are means over seeds {args.seeds}; the other "
            "rows are the shipped single trainings (seed 0 only).\n\n" + seeds_table(results)
        )
    print(save(results, table, args.out))
    with open(os.path.join(args.out, "replicates.json"), "w") as f:
        json.dump(steps, f, indent=1)
    return 0


if __name__ == "__main__":  # user errors (a missing file, a bad value) as one line, exit 2
    from ..cli.common import run_guarded

    raise SystemExit(run_guarded("python -m detectors.experiments.findings", main))
