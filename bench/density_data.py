"""The data of the density benchmark (bench/density.py): offline, fixed, standardised.

Unconditional sets (``load(name)``), each split once into train / val / test with a fixed seed
and standardised with the training split's mean and standard deviation:

  moons, circles   ``sklearn.datasets.make_moons`` / ``make_circles`` (noise 0.05; circles with
                   factor 0.5), ``n`` points
  checkerboard     the 2-D checkerboard of Grathwohl et al. 2019 (FFJORD's toy): uniform on
                   the black squares of a 4 x 4 board on [-4, 4]^2, ``n`` points
  digits           scikit-learn's 8 x 8 digits (1,797 x 64, integer pixels 0..16),
                   dequantised by adding u ~ U[0, 1) to every pixel (Uria et al. 2013, Sec. 3;
                   a continuous density on integers is unbounded otherwise)
  wine             scikit-learn's wine (178 x 13)
  breast_cancer    scikit-learn's breast cancer (569 x 30)

Splits: 60 / 20 / 20 percent of a permutation drawn with ``numpy.random.default_rng(seed)``
(``seed`` 0 unless told), the same for every library and every training seed.

Conditional toy (``ConditionalGaussian``): c ~ U[-1, 1] and x | c ~ N(mu(c), diag(sigma(c)^2))
in 2-D with mu(c) = (2 sin(pi c), c^2 - 0.5) and sigma(c) = (0.2 + 0.15 (c + 1),
0.3 exp(c - 1)) -- its exact log p(x | c) gives KL(p || q) = E_c E_{x ~ p(. | c)} [log p(x | c) -
log q(x | c)] by Monte Carlo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

TOYS = ("moons", "circles", "checkerboard")
TABULAR = ("digits", "wine", "breast_cancer")
DATASETS = TOYS + TABULAR
SPLIT = (0.6, 0.2, 0.2)


@dataclass
class Split:
    """A standardised dataset: float32 tensors [N, D] for train / val / test."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def sizes(self) -> str:
        return f"{len(self.train)}/{len(self.val)}/{len(self.test)}"


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform on the black squares of a 4 x 4 board on [-4, 4]^2 (FFJORD's toy,
    Grathwohl et al. 2019, their ``toy_data.py``)."""
    x1 = rng.uniform(0, 1, n) * 4 - 2
    x2 = rng.uniform(0, 1, n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return 2 * np.stack([x1, x2], axis=1)


def raw(name: str, n: int = 3000, seed: int = 0) -> np.ndarray:
    """The unstandardised float64 array [N, D] of dataset ``name`` (``n`` points for the toys)."""
    if name not in DATASETS:
        raise ValueError(f"density_data: unknown dataset {name!r}, expected one of {DATASETS}")
    rng = np.random.default_rng(seed)
    if name == "checkerboard":
        return checkerboard(n, rng)
    from sklearn import datasets  # bundled with scikit-learn: no download

    if name == "moons":
        return datasets.make_moons(n, noise=0.05, random_state=seed)[0]
    if name == "circles":
        return datasets.make_circles(n, noise=0.05, factor=0.5, random_state=seed)[0]
    if name == "digits":
        x = datasets.load_digits().data
        return x + rng.uniform(0.0, 1.0, x.shape)
    loader = {"wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer}[name]
    return loader().data.astype(np.float64)


def load(name: str, n: int = 3000, seed: int = 0) -> Split:
    """Dataset ``name`` split 60/20/20 by a seeded permutation and standardised with the training
    split's statistics (a column with zero training variance would raise ValueError)."""
    x = raw(name, n, seed)
    perm = np.random.default_rng(seed + 1).permutation(len(x))
    a = int(SPLIT[0] * len(x))
    b = a + int(SPLIT[1] * len(x))
    tr, va, te = x[perm[:a]], x[perm[a:b]], x[perm[b:]]
    mean, std = tr.mean(0), tr.std(0)
    if not (std > 0).all():
        raise ValueError(f"density_data: {name} has a constant training column: cannot standardise")

    def f(v):
        return torch.from_numpy((v - mean) / std).float()

    return Split(name, f(tr), f(va), f(te))


class ConditionalGaussian:
    """The conditional toy: c ~ U[-1, 1], x | c ~ N(mu(c), diag(sigma(c)^2)) in 2-D (see the
    module's docstring). Shapes: c [N, 1], x [N, 2]; log-densities in nats, [N]."""

    dim = 2
    context_dim = 1

    @staticmethod
    def mean_std(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = c[:, 0]
        mu = torch.stack([2 * torch.sin(math.pi * c), c**2 - 0.5], dim=1)
        sigma = torch.stack([0.2 + 0.15 * (c + 1), 0.3 * torch.exp(c - 1)], dim=1)
        return mu, sigma

    def sample_context(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return 2 * torch.rand(n, 1, generator=generator) - 1

    def sample(self, c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mu, sigma = self.mean_std(c)
        return mu + sigma * torch.randn(mu.shape, generator=generator)

    def log_prob(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.mean_std(c)
        z = (x - mu) / sigma
        return (-0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(1)

    def dataset(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, 2], c [n, 1]) from a generator seeded ``seed``."""
        g = torch.Generator().manual_seed(seed)
        c = self.sample_context(n, g)
        return self.sample(c, g), c
