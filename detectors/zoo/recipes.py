"""How each zoo model is built, trained and held-out-evaluated (one place, used by the trainer,
the exporter, ``detectors.zoo.load`` and the tests).

Architectures are sized for 2 shared CPU cores (measured, 1 thread, batch 64: Glow 2 scales
x 4 steps, width 64: ~0.35 s/step; RealNVP 2 scales x 1 block, width 16: ~0.3 s/step, ~1 s/step with the
approximate-mass penalty).  Held-out data:
the first 1000 Fashion-MNIST *test* images (models trained on the training split), or 1000
patches of the *test photos* (detectors.data.photos.TEST_PHOTOS, disjoint from the training photos)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

import invflow

HELDOUT_N = 1000
CHECK_N = 256  # the subset the zoo test re-evaluates (seconds)


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    arch: str  # "glow" or "realnvp"
    data: str  # "fashion-mnist" (training split), "photos" (training photos) or
    # "photos-broad" (the same, photometrically broadened)
    objective: str = "nll"  # nll, outlier, dagger, approx_mass
    init: str | None = None  # zoo model whose run initialises this one (finetuning)
    reference: str | None = None  # the frozen second model of outlier / dagger
    lr: float = 1e-3
    warmup: int = 200
    batch: int = 64
    translate: int = 0
    channels: int = 1  # 1 grey, 3 RGB (photo data only; Fashion-MNIST is grey)
    size: int = 28  # image side
    alpha: float = 2.0  # weight of the approximate-mass penalty (objective approx_mass)


GLOW = dict(levels=2, steps=4, hidden=64)
REALNVP = dict(levels=2, blocks=1, hidden=16)

#: the vanilla RealNVP finetuned with the approximate-mass penalty; its alpha variants differ in alpha only
MASS_FT = Recipe(
    "fmnist-realnvp-mass-ft",
    "fmnist-realnvp finetuned with the approximate-mass penalty (Chali et al. 2023 Eq. 2, "
    "alpha=2): the alternative protocol to penalising from the start (the paper trains "
    "penalised from scratch for 200 epochs, Sec. 4.1)",
    "realnvp",
    "fashion-mnist",
    objective="approx_mass",
    init="fmnist-realnvp",
    lr=5e-4,
    warmup=50,
    translate=1,
)

RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "fmnist-glow",
            "in-distribution Glow on Fashion-MNIST (train split)",
            "glow",
            "fashion-mnist",
            translate=1,
        ),
        Recipe(
            "photos-glow",
            "general-distribution Glow on grey natural-photo patches (32 training photos)",
            "glow",
            "photos",
        ),
        Recipe(
            "photos-glow-broad",
            "general-distribution Glow on photometrically broadened grey photo patches "
            "(detectors.data.broaden: dark flat regions, light-on-dark structure), finetuned from photos-glow",
            "glow",
            "photos-broad",
            init="photos-glow",
            lr=5e-4,
            warmup=50,
        ),
        Recipe(
            "photos-glow-dagger",
            "Diff-dagger general Glow: photos-glow-broad finetuned with Fashion-MNIST as "
            "outliers (Schirrmeister et al. 2020 Sec. 5.3)",
            "glow",
            "photos-broad",
            objective="dagger",
            init="photos-glow-broad",
            reference="fmnist-glow",
            lr=5e-4,
            warmup=50,
        ),
        Recipe(
            "fmnist-glow-outlier",
            "in-distribution Glow finetuned with the outlier loss against photos-glow-broad "
            "(Schirrmeister et al. 2020 Eq. 2)",
            "glow",
            "fashion-mnist",
            objective="outlier",
            init="fmnist-glow",
            reference="photos-glow-broad",
            lr=5e-4,
            warmup=50,
            translate=1,
        ),
        Recipe(
            "photos-glow-broad-32",
            "general-distribution Glow on photometrically broadened grey 32x32 photo patches "
            "(detectors.data.broaden), for fit on grey 32x32 data",
            "glow",
            "photos-broad",
            size=32,
        ),
        Recipe(
            "photos-rgb-glow-broad-32",
            "general-distribution Glow on photometrically broadened RGB 32x32 photo patches "
            "(detectors.data.broaden), for fit on RGB data",
            "glow",
            "photos-broad",
            channels=3,
            size=32,
        ),
        Recipe(
            "fmnist-realnvp-mass",
            "RealNVP on Fashion-MNIST with the approximate-mass penalty from the start "
            "(Chali et al. 2023 Eq. 2, alpha=2)",
            "realnvp",
            "fashion-mnist",
            objective="approx_mass",
            translate=1,
        ),
        Recipe(
            "fmnist-glow-from-general",
            "in-distribution Glow finetuned from the general model photos-glow-broad on "
            "Fashion-MNIST (Schirrmeister et al. 2020 S7.2: in-distribution models start from the "
            "general one), maximum likelihood: the outlier loss's control",
            "glow",
            "fashion-mnist",
            init="photos-glow-broad",
            lr=5e-4,
            warmup=50,
            translate=1,
        ),
        Recipe(
            "fmnist-glow-from-general-outlier",
            "the same finetune from photos-glow-broad with the outlier loss against it "
            "(Schirrmeister et al. 2020 Eq. 2, T=1000, lambda=6000, S4.4)",
            "glow",
            "fashion-mnist",
            objective="outlier",
            init="photos-glow-broad",
            reference="photos-glow-broad",
            lr=5e-4,
            warmup=50,
            translate=1,
        ),
        MASS_FT,
        *(
            replace(
                MASS_FT,
                name=f"fmnist-realnvp-mass-ft-a{alpha:g}",
                summary=f"fmnist-realnvp finetuned with the approximate-mass penalty at alpha={alpha:g} "
                "(Chali et al. 2023 Eq. 2; Sec. 4.1: the range of alpha that works narrows as the "
                "model shrinks): fmnist-realnvp-mass-ft at a smaller weight",
                alpha=alpha,
            )
            for alpha in (0.5, 0.1)
        ),
        Recipe(
            "fmnist-realnvp",
            "vanilla RealNVP on Fashion-MNIST, the same budget as fmnist-realnvp-mass",
            "realnvp",
            "fashion-mnist",
            translate=1,
        ),
    )
}


def build(recipe: Recipe) -> torch.nn.Module:
    if recipe.arch == "glow":
        return invflow.Glow(recipe.channels, recipe.size, **GLOW)
    return invflow.RealNVP(recipe.channels, recipe.size, **REALNVP)


def training_data(recipe: Recipe, n_photos: int = 60000) -> torch.Tensor:
    """uint8 [N, C, S, S]: Fashion-MNIST training split, or patches of the training photos
    at the recipe's size and colour mode (broadened for "photos-broad")."""
    if recipe.data == "fashion-mnist":
        from ..data import load_fashion_mnist

        return load_fashion_mnist("train")[0]
    from ..data.photos import photo_patches

    patches = photo_patches(n_photos, recipe.size, split="train", seed=0, channels=recipe.channels)
    return _broaden(patches, 0) if recipe.data == "photos-broad" else patches


def _broaden(images: torch.Tensor, seed: int) -> torch.Tensor:
    from ..data import broaden

    return broaden(images, seed=seed)


def heldout_data(data: str, n: int = HELDOUT_N, size: int = 28, channels: int = 1) -> torch.Tensor:
    """The held-out images of ``data`` ("fashion-mnist", "photos" or "photos-broad"), uint8
    [n, C, S, S] (photo patches at ``size`` and ``channels``; Fashion-MNIST is 1x28x28)."""
    if data == "fashion-mnist":
        from ..data import load_fashion_mnist

        return load_fashion_mnist("test")[0][:n]
    if data in ("photos", "photos-broad"):
        from ..data.photos import photo_patches

        patches = photo_patches(HELDOUT_N, size, split="test", seed=1, channels=channels)
        return (_broaden(patches, 1) if data == "photos-broad" else patches)[:n]
    raise ValueError(f"data={data!r}, expected 'fashion-mnist', 'photos' or 'photos-broad'")


@torch.no_grad()
def heldout_bpd(model: torch.nn.Module, images: torch.Tensor, batch: int = 250) -> float:
    """Mean bits/dim of uint8 ``images`` under ``model`` with uniform dequantisation noise from a
    fixed seed (so the number is reproducible exactly)."""
    model.eval()
    g = torch.Generator().manual_seed(12345)
    x = invflow.data.preprocess(images, dequantize=True, generator=g)
    lp = torch.cat([model.log_prob(x[i : i + batch]) for i in range(0, len(x), batch)]).double()
    d = images[0].numel()
    return float(((-lp + d * math.log(256)) / (d * math.log(2))).mean())
