"""Likelihood-based scores for any model exposing ``log_prob`` (and ``per_scale`` through
its forward output for the per-scale scores).  All scores: HIGHER = MORE ANOMALOUS.

Non-finite log-likelihoods are set to -3e6 before any difference (Schirrmeister et al. 2020 S4.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .base import Detector, as_model_input, check_model, describe_model, floor_log_likelihood, log_prob

Transform = Callable[[torch.Tensor], torch.Tensor]


def _prepare(x: torch.Tensor, model, transform: Transform | None) -> torch.Tensor:
    """The model's input for x: ``transform(x)`` if given (ValueError when it gives NaN or Inf:
    the score would silently be the floor), as ``as_model_input`` makes it."""
    if transform is not None:
        x = transform(x)
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).flatten(1).any(1)
            raise ValueError(
                f"transform= gave NaN or Inf for {int(bad.sum())} of {len(x)} inputs (first at index "
                f"{int(bad.nonzero()[0, 0])}); the likelihood would be the floor: repair the transform"
            )
    return as_model_input(x, model)


class Likelihood(Detector):
    """Raw likelihood: s(x) = -log p(x) (nats).  The baseline that fails on images: a
    Fashion-MNIST Glow rates MNIST higher (Schirrmeister et al. 2020 Sec. 2, 15% AUROC).

    ``transform`` (optional) maps raw inputs to the model's inputs, e.g. a feature
    extractor for flows on features ("Flow" of Schmier et al. 2022 Sec. 5.1).
    """

    def __init__(self, model, transform: Transform | None = None, **kw):
        super().__init__(**kw)
        self.model, self.transform = check_model(model, self.name), transform

    def _score_batch(self, x):
        return -floor_log_likelihood(log_prob(self.model, _prepare(x, self.model, self.transform)))


class BitsPerDim(Likelihood):
    """Bits per dimension of 8-bit data: (-log p(x) + D log 256) / (D log 2).  Ranks as the
    raw likelihood for a fixed input size; comparable across sizes."""

    def _score_batch(self, x):
        xin = _prepare(x, self.model, self.transform)
        d = math.prod(xin.shape[1:])
        return (-floor_log_likelihood(log_prob(self.model, xin)) + d * math.log(256)) / (d * math.log(2))


class ContrastiveFlow(Likelihood):
    """Contrastive normalizing flow score (Schmier et al. 2022 Sec. 4): s(x) = -log p_theta(x) of a
    flow trained with ``detectors.objectives.contrastive_loss`` (Eq. 3), i.e. the negative
    log-likelihood of the learned normalised positive difference C (p - q) 1{p > q}."""

    uses = "aux data"


class LikelihoodRatio(Detector):
    """Log-likelihood ratio to a general-distribution model (Schirrmeister et al. 2020 Eq. 1, "Diff"):
    s(x) = -(log p_in(x) - log p_g(x)), each log-likelihood floored at -3e6 first.
    ``transform`` as in ``Likelihood`` ("Flow-ratio" of Schmier et al. 2022 on features)."""

    uses = "aux data"

    def __init__(self, in_model, general_model, transform: Transform | None = None, **kw):
        super().__init__(**kw)
        self.in_model = check_model(in_model, self.name, "in_model")
        self.general_model = check_model(general_model, self.name, "general_model")
        self.transform = transform

    def _score_batch(self, x):
        xin = _prepare(x, self.in_model, self.transform)
        xg = _prepare(x, self.general_model, self.transform)
        lp_in = floor_log_likelihood(log_prob(self.in_model, xin))
        lp_g = floor_log_likelihood(log_prob(self.general_model, xg)).to(lp_in.device)
        return -(lp_in - lp_g)


def _scale_index(scales: int | Sequence[int]) -> list[int]:
    idx = [scales] if isinstance(scales, int) else list(scales)
    if not idx or not all(isinstance(i, int) for i in idx):
        raise ValueError(f"scales must be an int or a non-empty sequence of ints, got {scales!r}")
    return idx


def _contribution(model, x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    out = model(x)
    per_scale = getattr(out, "per_scale", None)
    if per_scale is None:
        raise TypeError(
            f"{type(model).__name__} returns no per_scale contributions; per-scale scores "
            f"need a multi-scale model (invflow.Glow, RealNVP, ...)"
        )
    n = per_scale.shape[1]
    for i in idx:
        if not -n <= i < n:
            raise ValueError(f"scale index {i} out of range for a model with {n} scales")
    return floor_log_likelihood(per_scale[:, idx]).sum(1)


def _check_scales(det: Detector, idx: list[int]) -> None:
    """The scale indices ``idx`` exist in each of the detector's models that states its scales
    (``latent_shapes()``); ValueError naming the model otherwise."""
    for attr, model in det._models().items():
        if callable(getattr(model, "latent_shapes", None)):
            n = len(model.latent_shapes())
            bad = [i for i in idx if not -n <= i < n]
            if bad:
                raise ValueError(
                    f"{det.name}: scale index {bad[0]} out of range for {describe_model(attr, model)} "
                    f"with {n} scale(s); use indices in [-{n}, {n - 1}]"
                )


class ScaleContribution(Detector):
    """Per-scale likelihood contributions (Schirrmeister et al. 2020 Eq. 3, Sec. 4, Tab. 2):
    s(x) = -sum_{i in scales} c_i(x).  ``scales=-1`` is the last scale ("4x4" of Tab. 2),
    which carries the high-level, distribution-specific features."""

    def __init__(self, model, scales: int | Sequence[int] = -1, **kw):
        super().__init__(**kw)
        self.model, self.scales = check_model(model, self.name), _scale_index(scales)
        _check_scales(self, self.scales)

    def _score_batch(self, x):
        return -_contribution(self.model, as_model_input(x, self.model), self.scales)


class LastScale(ScaleContribution):
    """s(x) = -c_L(x): the last scale's contribution alone (Schirrmeister et al. 2020 Sec. 4)."""

    def __init__(self, model, **kw):
        super().__init__(model, scales=-1, **kw)


class ScaleRatio(Detector):
    """Per-scale log-likelihood ratio (Schirrmeister et al. 2020 Tab. 2, "Diff" column per scale):
    s(x) = -sum_{i in scales} (c_i^in(x) - c_i^g(x)) for two models of the same architecture."""

    uses = "aux data"

    def __init__(self, in_model, general_model, scales: int | Sequence[int] = -1, **kw):
        super().__init__(**kw)
        self.in_model = check_model(in_model, self.name, "in_model")
        self.general_model = check_model(general_model, self.name, "general_model")
        self.scales = _scale_index(scales)
        _check_scales(self, self.scales)

    def _score_batch(self, x):
        c_in = _contribution(self.in_model, as_model_input(x, self.in_model), self.scales)
        c_g = _contribution(self.general_model, as_model_input(x, self.general_model), self.scales)
        return -(c_in - c_g.to(c_in.device))


def log_prob_and_mass(
    model, x: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x), ||d log p(x) / dx||_2) per sample (Chali et al. 2023 Eq. 1), x preprocessed floats
    [B, ...]; ``create_graph`` keeps the gradient differentiable (the Eq. 2 penalty)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        lp = log_prob(model, x)
        (g,) = torch.autograd.grad(lp.sum(), x, create_graph=create_graph)
    return lp, g.flatten(1).norm(dim=1)


def approximate_mass(model, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """||d log p(x) / dx||_2 per sample (Chali et al. 2023 Eq. 1), x preprocessed floats [B, ...]."""
    return log_prob_and_mass(model, x, create_graph)[1]


class ApproximateMass(Detector):
    """Approximate mass (Chali et al. 2023 Eq. 1): s(x) = ||d log p(x) / dx||; OOD inputs have larger
    values.  Most useful with a model trained with ``objectives.approx_mass_penalty``."""

    needs_grad = True

    def __init__(self, model, **kw):
        super().__init__(**kw)
        self.model = check_model(model, self.name)

    def _score_batch(self, x):
        mass = approximate_mass(self.model, as_model_input(x, self.model)).detach()
        return torch.nan_to_num(mass, nan=float("inf"))
