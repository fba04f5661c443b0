"""Latent priors p(z) for flows, log p(x) = log p(z) + log|det dz/dx|: the standard normal and
the class-conditional mixture of Schirrmeister et al. 2020, Sec. 3.2.

    StandardNormal()                                   unsupervised setting
    ClassConditionalGaussianMixture(K, shape)          supervised setting (Schirrmeister et al. 2020 Sec. 3.2)

``log_prob`` returns one value per sample, shape [B], summed over all non-batch dims.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import nn

from .validation import check_number

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _check_temperature(temperature: float, where: str) -> float:
    return check_number(temperature, "temperature", where, low=0)


def _check_floating(z: torch.Tensor, where: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{where}: expected a floating tensor, got dtype {z.dtype}")


class StandardNormal(nn.Module):
    """Factorised standard normal N(0, I) over every non-batch dimension."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) per sample: [B, ...] -> [B]."""
        _check_floating(z, "StandardNormal.log_prob")
        if z.dim() < 1:
            raise ValueError("StandardNormal.log_prob: expected z of shape [B, ...], got a scalar")
        lp = -0.5 * z.square() - _HALF_LOG_2PI
        return lp.reshape(z.shape[0], -1).sum(dim=1)

    def sample(
        self,
        shape: Sequence[int] | torch.Size,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Samples of N(0, temperature^2 I) with the full ``shape`` (batch included)."""
        t = _check_temperature(temperature, "StandardNormal.sample")
        return t * torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


class ClassConditionalGaussianMixture(nn.Module):
    """Supervised latent prior of Schirrmeister et al. 2020 Sec. 3.2: "the Glow
    model p_in(x) uses a mixture of Gaussians for the latent z, i.e., each class
    corresponding to one mode".

    Class k has a learned mean mu_k and (``learn_scale=True``) a learned log-std log sigma_k,
    both of per-sample shape ``shape`` (a diagonal Gaussian per class; the authors' code
    gives every class its own per-dimension mean and log-std, initialised at 0 and 0).
    With ``learn_scale=False`` every sigma_k = 1 (not a parameter).

        log_prob(z, y)     log N(z; mu_y, sigma_y^2)                        [B]
        log_prob(z)        log sum_k (1/K) N(z; mu_k, sigma_k^2)            [B]  (uniform pi_k)
        class_log_probs(z) log N(z; mu_k, sigma_k^2) for every k            [B, K]
        sample(n, y=None)  draws from class y (int or [n] labels), or from the mixture

    At initialisation all modes coincide with N(0, I); a label-supervised objective
    (log_prob(z, y)) pulls them apart.  Labels are integer class indices [B] in [0, K).
    """

    def __init__(self, num_classes: int, shape: int | Sequence[int], learn_scale: bool = True):
        super().__init__()
        check_number(num_classes, "num_classes", "ClassConditionalGaussianMixture", low=1, integer=True)
        try:
            if isinstance(shape, Sequence):
                size = tuple(operator.index(s) for s in shape)
            else:
                size = (operator.index(shape),)
        except TypeError:
            size = (0,)
        if len(size) == 0 or min(size) < 1:
            raise ValueError(
                f"ClassConditionalGaussianMixture: shape must be a non-empty tuple of positive ints "
                f"(the per-sample latent shape), got {shape!r}"
            )
        self.num_classes = int(num_classes)
        self.shape = size
        shape = size
        self.learn_scale = learn_scale
        self.means = nn.Parameter(torch.zeros(self.num_classes, *shape))
        if learn_scale:
            self.log_stds = nn.Parameter(torch.zeros(self.num_classes, *shape))
        else:
            self.log_stds = None

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, shape={self.shape}, learn_scale={self.learn_scale}"

    # -- validation --------------------------------------------------------------------
    def _check_z(self, z: torch.Tensor, where: str) -> None:
        _check_floating(z, where)
        if tuple(z.shape[1:]) != self.shape or z.dim() != len(self.shape) + 1:
            raise ValueError(
                f"{where}: expected z of shape [B, {', '.join(map(str, self.shape))}] "
                f"(per-sample shape {self.shape}), got {tuple(z.shape)}"
            )
        if z.device != self.means.device:
            raise ValueError(
                f"{where}: z is on {z.device} but the prior's parameters are on {self.means.device}"
            )

    def _check_labels(self, y, batch: int | None, where: str) -> torch.Tensor:
        if isinstance(y, torch.Tensor) and y.device != self.means.device:
            raise ValueError(
                f"{where}: labels are on {y.device} but the prior's parameters are on {self.means.device}"
            )
        y = torch.as_tensor(y, device=self.means.device)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
        if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
            n = "B" if batch is None else str(batch)
            raise ValueError(
                f"{where}: expected labels of shape [{n}] (integer class indices; for one-hot labels "
                f"pass y.argmax(1)), got shape {tuple(y.shape)}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"{where}: labels must lie in [0, {self.num_classes - 1}], "
                f"got values in [{int(y.min())}, {int(y.max())}]"
            )
        return y.long()

    # -- densities ---------------------------------------------------------------------
    def _log_stds(self) -> torch.Tensor:
        return self.log_stds if self.log_stds is not None else torch.zeros_like(self.means)

    @staticmethod
    def _gauss(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((z - mean) * torch.exp(-log_std)).square() - log_std - _HALF_LOG_2PI

    def class_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_k, sigma_k^2) for every class k: [B, *shape] -> [B, K]."""
        self._check_z(z, "ClassConditionalGaussianMixture.class_log_probs")
        lp = self._gauss(z.unsqueeze(1), self.means.unsqueeze(0), self._log_stds().unsqueeze(0))
        return lp.reshape(z.shape[0], self.num_classes, -1).sum(dim=2)

    def log_prob(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Class-conditional log N(z; mu_y, sigma_y^2) when labels y [B] are given, else the
        uniform-mixture log density logsumexp_k class_log_probs(z)[:, k] - log K.  -> [B]"""
        if y is None:
            return torch.logsumexp(self.class_log_probs(z), dim=1) - math.log(self.num_classes)
        self._check_z(z, "ClassConditionalGaussianMixture.log_prob")
        y = self._check_labels(y, z.shape[0], "ClassConditionalGaussianMixture.log_prob")
        lp = self._gauss(z, self.means[y], self._log_stds()[y])
        return lp.reshape(z.shape[0], -1).sum(dim=1)

    # -- sampling ----------------------------------------------------------------------
    def sample(
        self,
        n: int,
        y: int | torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        return_labels: bool = False,
    ):
        """n samples [n, *shape]: from class y (an int for all, or labels [n]), or from the
        mixture (labels drawn uniformly) when y is None; the noise is scaled by
        ``temperature`` (z = mu_y + temperature * sigma_y * eps, differentiable with respect to
        mu and sigma; wrap in torch.no_grad() when not needed).  With ``return_labels``
        returns (z, labels)."""
        where = "ClassConditionalGaussianMixture.sample"
        try:
            count = operator.index(n)
        except TypeError:
            count = -1
        if count < 0:
            raise ValueError(f"{where}: n must be an int >= 0, got {n!r}")
        n = count
        t = _check_temperature(temperature, where)
        dev = self.means.device
        if y is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator, device=dev)
        else:
            y = torch.as_tensor(y, device=dev)
            labels = self._check_labels(y.expand(n) if y.dim() == 0 else y, n, where)
        eps = torch.randn((n, *self.shape), generator=generator, device=dev, dtype=self.means.dtype)
        z = self.means[labels] + t * torch.exp(self._log_stds()[labels]) * eps
        return (z, labels) if return_labels else z
