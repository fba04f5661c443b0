"""The supervised setting of Schirrmeister et al. 2020 Sec. 3.2: a flow whose latent prior is a
class-conditional Gaussian mixture (one mode per class), trained with the likelihood of each
sample under its own class and the outlier loss with the other classes' samples as outliers.

    flow = ClassConditionalFlow(invflow.Glow(1, 28, levels=2), num_classes=10)
    Trainer(flow, (images, labels), out_dir, objective=supervised_objective(general_glow)).fit()
    detectors.Likelihood(flow)          # -log p(x) under the mixture; "uses labels"
"""

from __future__ import annotations

import math

import torch
from torch import nn

from invflow import checkpoint
from invflow.data import standard_normal_log_prob
from invflow.models import FlowOutput
from invflow.priors import ClassConditionalGaussianMixture
from invflow.train import drop_non_finite
from invflow.validation import check_number

from . import flow as objectives


@checkpoint.register
class ClassConditionalFlow(nn.Module):
    """An invflow model with its standard-normal latent prior replaced by a class-conditional
    Gaussian mixture over all latents z = (z_1, ..., z_L), flattened (uniform class weights).

        class_log_probs(x)  log p(x | k) = log p(x) - log N(z; 0, I) + log N(z; mu_k, sigma_k^2)  [B, K]
        log_prob(x, y=None) log p(x | y), or the mixture log (1/K) sum_k p(x | k)                 [B]
        forward(x)          FlowOutput of the mixture; per_scale holds each scale's
                            contribution under the most likely class, the last column also
                            holding log p(x) - log p(x | k*), so per_scale sums to log_prob.

    The wrapped model must evaluate its latents under N(0, I) (invflow.Glow with
    split_prior=False, RealNVP, DenseGlow, VectorFlow)."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        check_number(num_classes, "num_classes", "ClassConditionalFlow", low=1, integer=True)
        if getattr(model, "split_prior", False):
            raise ValueError(
                "ClassConditionalFlow: the wrapped model must use N(0, I) latents (split_prior=False)"
            )
        self.model = model
        dim = sum(math.prod(s) for s in model.latent_shapes())
        self.prior = ClassConditionalGaussianMixture(num_classes, dim)
        self.num_classes = num_classes
        self.input_shape = model.input_shape

    def config(self) -> dict:
        return {
            "model": {"class": type(self.model).__name__, "config": self.model.config()},
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_config(cls, config: dict) -> ClassConditionalFlow:
        inner = checkpoint.model_from_config(config["model"]["class"], config["model"]["config"])
        return cls(inner, config["num_classes"])

    def latent_shapes(self):
        return self.model.latent_shapes()

    def _terms(self, x: torch.Tensor):
        out = self.model(x)
        z = torch.cat([t.flatten(1) for t in out.latents], 1)
        base = out.log_prob - standard_normal_log_prob(z)  # log-determinant of x -> z
        return out, z, base

    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        _, z, base = self._terms(x)
        return base.unsqueeze(1) + self.prior.class_log_probs(z)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _, z, base = self._terms(x)
        return base + self.prior.log_prob(z, y)

    def forward(self, x: torch.Tensor) -> FlowOutput:
        out, z, base = self._terms(x)
        per_class = self.prior.class_log_probs(z)
        log_p = base + torch.logsumexp(per_class, 1) - math.log(self.num_classes)
        k = per_class.argmax(1)
        per_scale = out.per_scale.clone()
        start = 0
        for i, t in enumerate(out.latents):
            n = t[0].numel()
            zi = z[:, start : start + n]
            mean, log_std = (
                self.prior.means[k, start : start + n],
                self.prior._log_stds()[k, start : start + n],
            )
            gauss = self.prior._gauss(zi, mean, log_std).sum(1)
            per_scale[:, i] = per_scale[:, i] - standard_normal_log_prob(zi) + gauss
            start += n
        per_scale[:, -1] = per_scale[:, -1] + (log_p - per_scale.sum(1))
        return FlowOutput(log_prob=log_p, per_scale=per_scale, latents=out.latents)


def supervised_objective(
    general_model: nn.Module | None = None, temperature: float = 1000.0, weight: float = 6000.0
):
    """Trainer objective (data given as ``(images, labels)``): -log p(x | y) on the batch, plus,
    when a general model is given, the outlier loss of every class mode on the samples of the
    other classes (``objectives.supervised_outlier_loss``, Schirrmeister et al. 2020 Sec. 3.2), in bits/dim units."""
    check_number(temperature, "temperature", "supervised_objective", low=0, low_open=True)
    check_number(weight, "weight", "supervised_objective", low=0)
    if general_model is not None:
        general_model.eval()

    def objective(model, batch):
        if batch.y is None:
            raise ValueError("supervised_objective: the trainer's data must be (images, labels)")
        flow = model.module if hasattr(model, "module") else model
        # rows with a non-finite entry are recomputed out of the graph (Schirrmeister et al. 2020 S4.3 dropping)
        per_class = drop_non_finite(flow.class_log_probs, batch.x)
        own = per_class.gather(1, batch.y.view(-1, 1)).squeeze(1)
        loss = objectives.nll(own)
        logs = {}
        if general_model is not None:
            with torch.no_grad():
                lp_g = general_model(batch.x).log_prob
            l_out = objectives.supervised_outlier_loss(per_class, batch.y, lp_g, temperature, weight)
            loss = loss + l_out
            logs["outlier"] = l_out.detach()
        d = batch.x[0].numel() * math.log(2)
        return loss / d, logs

    return objective
