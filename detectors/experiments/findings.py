"""The papers' two directions that the zoo's first models did not reproduce, measured on paired
zoo models (same data, same steps budget, one difference):

* outlier loss > none (Schirrmeister et al. 2020 Tab. 3): ``fmnist-glow-from-general`` (maximum
  likelihood) vs ``fmnist-glow-from-general-outlier`` (plus the outlier loss against the general
  model), both finetuned from the general model ``photos-glow-broad`` as the paper's
  in-distribution models are (S7.2); scored by likelihood, last scale and Diff to that general
  model;
* penalised approximate mass > vanilla (Chali et al. 2023 Tab. 1): ``fmnist-realnvp`` vs
  ``fmnist-realnvp-mass`` (penalised from the start, the paper's protocol, Sec. 4.1) and
  ``fmnist-realnvp-mass-ft`` (the vanilla model finetuned with the penalty).

    python -m detectors.experiments.findings [--n 500] [--out runs/findings]

AUROC % of ``n`` Fashion-MNIST test images against ``n`` images of each OOD-suite set
(``ood_suite.ood_sets``); writes ``auroc.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse

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
    ("approximate mass (vanilla finetuned with the penalty)", "ApproximateMass", ("fmnist-realnvp-mass-ft",)),
)


def detectors_of(rows=ROWS) -> dict:
    """{row name: detector} of the zoo models each row names (Memoized: one pass per model)."""
    from .. import scores, zoo
    from .runs import Memoized

    models = {}
    out = {}
    for name, cls, needs in rows:
        ms = [models.setdefault(m, Memoized(zoo.load(m))) for m in needs]
        out[name] = getattr(scores, cls)(*ms)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--out", default="runs/findings")
    args = p.parse_args(argv)
    from .ood_suite import in_and_base, markdown, ood_sets, save, score_suite

    x_in, _ = in_and_base(args.n)
    results = score_suite(detectors_of(), x_in, ood_sets(args.n))
    print(save(results, markdown(results), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
