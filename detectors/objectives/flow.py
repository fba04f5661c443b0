"""Training objectives of the five papers, as plain functions of log-likelihood tensors,
plus factories that turn them into objectives for ``invflow.train.Trainer``
(``objective(model, batch) -> (loss, logs)``).

Log-likelihoods are in nats of the continuous density of preprocessed inputs.  The loss
functions return a scalar to *minimise*.  Non-finite values follow the papers: the outlier
loss drops samples with non-finite log-likelihoods (Schirrmeister et al. 2020 S4.3) and returns zero when
more than 75% of the batch was dropped.  Dropping gives the kept samples' gradient only
when the log-likelihoods come from ``invflow.train.log_prob_dropping_non_finite`` (the
trainer objectives below do so): a dropped sample still in the autograd graph makes every
parameter gradient NaN (0 * inf in its backward).  Numeric arguments are validated
(ValueError naming the argument).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from invflow.data import preprocess
from invflow.train import Batch, finite_mean, log_prob_dropping_non_finite
from invflow.validation import check_number

from ..scores.base import log_prob
from ..scores.likelihood import log_prob_and_mass

MAX_DROPPED = 0.75


def _check_pair(a: torch.Tensor, b: torch.Tensor, where: str, same_shape: bool = True) -> None:
    for name, t in (("first", a), ("second", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point():
            raise ValueError(
                f"{where}: expected 1-D floating log-likelihood tensors [B], got {name} "
                f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
    if same_shape and a.shape != b.shape:
        raise ValueError(
            f"{where}: the two log-likelihood tensors must have the same shape (one entry per "
            f"sample under each model), got {list(a.shape)} and {list(b.shape)}"
        )


def nll(log_p: torch.Tensor) -> torch.Tensor:
    """Maximum likelihood: mean of -log p over the finite entries (NaN past 75% dropped)."""
    return finite_mean(-log_p, MAX_DROPPED)


def outlier_loss(
    logp_in_model: torch.Tensor,
    logp_general_model: torch.Tensor,
    temperature: float = 1000.0,
    weight: float = 6000.0,
) -> torch.Tensor:
    """Outlier loss of Schirrmeister et al. 2020 Eq. 2 on general-distribution samples x_g:

        L_o = -lambda * log sigmoid((log p_g(x_g) - log p_in(x_g)) / T),   T=1000, lambda=6000

    averaged over the batch.  ``logp_in_model`` = log p_in(x_g) (the model being trained),
    ``logp_general_model`` = log p_g(x_g).  Samples where either is non-finite are dropped
    (S4.3); if more than 75% are dropped the loss is zero.  For Diff-dagger (Schirrmeister et al. 2020 Sec.
    5.3) train the general model with the in-distribution samples as outliers:
    ``outlier_loss(logp_general_model(x_in), logp_in_model(x_in))``."""
    _check_pair(logp_in_model, logp_general_model, "outlier_loss")
    temperature = check_number(temperature, "temperature", "outlier_loss", low=0, low_open=True)
    weight = check_number(weight, "weight", "outlier_loss", low=0)
    keep = torch.isfinite(logp_in_model) & torch.isfinite(logp_general_model)
    if keep.float().mean() < 1 - MAX_DROPPED:
        return logp_in_model.new_zeros(())
    logits = (logp_general_model[keep] - logp_in_model[keep]) / temperature
    return weight * F.softplus(-logits).mean()  # -log sigmoid(z) = softplus(-z)


def margin_loss(logp_in: torch.Tensor, logp_out: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Margin (ranking) loss of outlier exposure for density models (Hendrycks et al. 2019,
    as compared in Schirrmeister et al. 2020 Tab. 3):  mean_i max(0, margin + log p(x_out_i) - log p(x_in_i)),
    pairing the i-th in-distribution and outlier samples.  ``margin`` in nats (Hendrycks et al.
    used one bit per dimension: ``D * log 2``).  Non-finite pairs are dropped."""
    _check_pair(logp_in, logp_out, "margin_loss")
    margin = check_number(margin, "margin", "margin_loss", low=0)
    keep = torch.isfinite(logp_in) & torch.isfinite(logp_out)
    if not bool(keep.any()):
        return logp_in.new_zeros(())
    return F.relu(margin + logp_out[keep] - logp_in[keep]).mean()


def contrastive_loss(logp_in: torch.Tensor, logp_aux: torch.Tensor, clamp: float = 0.0) -> torch.Tensor:
    """Contrastive normalizing flow loss (Schmier et al. 2022 Eq. 3 with the clamping of Sec. 5 and
    Algorithm 1):  mean(-log p(x)) - mean(min(-log p(y), tsh))  with tsh = -clamp, i.e.

        L = -mean_x log p(x) + mean_y max(log p(y), clamp)

    ``clamp`` (epsilon) is the lower bound on the auxiliary samples' log-likelihood: below it
    they stop being pushed down (the paper's 0 in App. A.1).  Minimising it learns the
    normalised positive difference C (p - q) 1{p > q} (Eq. 6)."""
    _check_pair(logp_in, logp_aux, "contrastive_loss", same_shape=False)
    clamp = check_number(clamp, "clamp", "contrastive_loss")
    return -logp_in.mean() + torch.clamp(logp_aux, min=clamp).mean()


def negative_loss(logp_in: torch.Tensor, logp_ood: torch.Tensor, threshold: float) -> torch.Tensor:
    """Negative training (Kirichenko et al. 2020 App. B, Eq. 7), negated to be minimised:

        L = -mean_x log p(x) + (1 / N_ood) sum_{x' : log p(x') > c} log p(x')

    with N_ood the number of OOD samples whose log-likelihood is above the threshold c (only
    those are pushed down; the term is 0 when there are none)."""
    _check_pair(logp_in, logp_ood, "negative_loss", same_shape=False)
    threshold = check_number(threshold, "threshold", "negative_loss")
    above = logp_ood > threshold
    # where, not logp_ood * above: -inf * 0 is NaN, and a -inf OOD sample is simply below c
    push = torch.where(above, logp_ood, torch.zeros_like(logp_ood)).sum() / above.sum().clamp(min=1)
    return -logp_in.mean() + push


def approx_mass_penalty(model, x: torch.Tensor, alpha: float = 2.0, return_terms: bool = False):
    """The approximate-mass objective of Chali et al. 2023 Eq. 2:

        -L(x) + alpha * || dL(x) / dx ||,     alpha = 2,

    with L the per-sample log-likelihood: the mean over the batch of -log p(x_i), plus alpha
    times the mean of the per-sample gradient norms ||d log p(x_i) / dx_i||_2 (Sec. 3.2: the
    gradient is flattened, its norm taken per sample, then averaged).  The gradient is built
    with ``create_graph=True``, so backpropagating the result differentiates a gradient
    (double backward through the fused kernels).  With ``return_terms`` also returns
    ``(mean_log_p, mean_grad_norm)`` detached."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("approx_mass_penalty: x must be a floating tensor preprocessed into [-0.5, 0.5]")
    alpha = check_number(alpha, "alpha", "approx_mass_penalty", low=0)
    lp, norms = log_prob_and_mass(model, x, create_graph=True)
    loss = -lp.mean() + alpha * norms.mean()
    if return_terms:
        return loss, (lp.mean().detach(), norms.mean().detach())
    return loss


def supervised_outlier_loss(
    class_log_probs: torch.Tensor,
    labels: torch.Tensor,
    logp_general: torch.Tensor,
    temperature: float = 1000.0,
    weight: float = 6000.0,
) -> torch.Tensor:
    """Supervised outlier loss (Schirrmeister et al. 2020 Sec. 3.2): each class-conditional mode k of p_in
    treats the samples of the other classes as its outliers, as the x_g of Eq. 2:

        mean over (i, k != y_i) of  -lambda log sigmoid((log p_g(x_i) - log p_in(x_i | k)) / T)

    ``class_log_probs`` [B, K] = log p_in(x_i | k); ``logp_general`` [B] = log p_g(x_i)."""
    if class_log_probs.dim() != 2 or labels.shape != class_log_probs.shape[:1]:
        raise ValueError(
            f"supervised_outlier_loss: expected class_log_probs [B, K] and labels [B], got "
            f"{list(class_log_probs.shape)} and {list(labels.shape)}"
        )
    b, k = class_log_probs.shape
    others = torch.ones(b, k, dtype=torch.bool, device=class_log_probs.device)
    others[torch.arange(b), labels] = False
    lp_in = class_log_probs[others]
    lp_g = logp_general.unsqueeze(1).expand(b, k)[others]
    return outlier_loss(lp_in, lp_g, temperature, weight)


# ---------------------------------------------------------------- trainer objectives
def draw_samples(
    data: torch.Tensor, n: int, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """``n`` samples of ``data`` [N, ...] drawn with ``generator`` (uint8 images are dequantised
    like training data), on the device and in the dtype of ``like``: [n, ...].  The extra data
    of the trainer objectives (outliers, auxiliary, general samples) is drawn with it."""
    idx = torch.randint(len(data), (n,), generator=generator)
    x = data[idx]
    if x.dtype == torch.uint8:
        x = preprocess(x, dequantize=True, generator=generator, dtype=like.dtype)
    return x.to(like.device, like.dtype)


_draw = draw_samples  # the old private name


def _per_dim(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Nats per image -> bits-per-dimension units (the scale of invflow.train.nll)."""
    return loss / (x[0].numel() * math.log(2))


def _with_draw(model, batch: Batch, data: torch.Tensor, n: int | None = None):
    """(log p(batch.x), draws, log p(draws)) for ``n`` samples of ``data`` (default: one per
    batch element), both sets through the model in one pass; non-finite log-likelihoods
    carry no gradient (``log_prob_dropping_non_finite``)."""
    drawn = draw_samples(data, n or len(batch.x), batch.generator, batch.x)
    lp = log_prob_dropping_non_finite(model, torch.cat([batch.x, drawn]))
    return lp[: len(batch.x)], drawn, lp[len(batch.x) :]


def outlier_objective(
    general_model,
    outliers: torch.Tensor,
    temperature: float = 1000.0,
    weight: float = 6000.0,
    outlier_batch: int | None = None,
) -> Callable:
    """Trainer objective: NLL on the batch + the outlier loss (Eq. 2) on ``outliers`` drawn
    from the general distribution, scored by the frozen ``general_model``.  The sum is in
    nats per image as in the paper, divided by D log 2 (bits/dim units)."""
    check_number(temperature, "temperature", "outlier_objective", low=0, low_open=True)
    check_number(weight, "weight", "outlier_objective", low=0)
    check_number(outlier_batch, "outlier_batch", "outlier_objective", low=1, integer=True, optional=True)
    general_model.eval()

    def objective(model, batch: Batch):
        lp_x, xo, lp_o = _with_draw(model, batch, outliers, outlier_batch)
        with torch.no_grad():
            lp_g = log_prob(general_model, xo)
        l_nll, l_out = nll(lp_x), outlier_loss(lp_o, lp_g, temperature, weight)
        loss = _per_dim(l_nll + l_out, batch.x)
        return loss, {"bpd": _per_dim(l_nll, batch.x).detach() + math.log2(256), "outlier": l_out.detach()}

    return objective


def diff_dagger_objective(in_model, in_data: torch.Tensor, **kw) -> Callable:
    """Trainer objective for the general model of Diff-dagger (Schirrmeister et al. 2020 Sec. 5.3): NLL on
    general data + the outlier loss with in-distribution samples as outliers, the trained
    in-distribution model as reference."""
    return outlier_objective(in_model, in_data, **kw)


def margin_objective(outliers: torch.Tensor, margin: float | None = None, weight: float = 1.0) -> Callable:
    """Trainer objective: NLL + ``weight`` * margin loss against outliers (Hendrycks et al.
    2019 outlier exposure for density models); default margin one bit per dimension."""
    check_number(margin, "margin", "margin_objective", low=0, optional=True)
    check_number(weight, "weight", "margin_objective", low=0)

    def objective(model, batch: Batch):
        lp_x, _, lp_o = _with_draw(model, batch, outliers)
        m = batch.x[0].numel() * math.log(2) if margin is None else margin
        l_nll, l_m = nll(lp_x), margin_loss(lp_x, lp_o, m)
        return _per_dim(l_nll + weight * l_m, batch.x), {"margin": l_m.detach()}

    return objective


def contrastive_objective(aux: torch.Tensor, clamp: float = 0.0) -> Callable:
    """Trainer objective of the contrastive normalizing flow (Schmier et al. 2022 Algorithm 1)."""
    check_number(clamp, "clamp", "contrastive_objective")

    def objective(model, batch: Batch):
        lp_x, _, lp_a = _with_draw(model, batch, aux)
        loss = contrastive_loss(lp_x, lp_a, clamp)
        return _per_dim(loss, batch.x), {"logp_in": lp_x.mean().detach()}

    return objective


def negative_objective(ood: torch.Tensor, threshold: float) -> Callable:
    """Trainer objective of negative training (Kirichenko et al. 2020 Eq. 7)."""
    check_number(threshold, "threshold", "negative_objective")

    def objective(model, batch: Batch):
        lp_x, _, lp_o = _with_draw(model, batch, ood)
        loss = negative_loss(lp_x, lp_o, threshold)
        return _per_dim(loss, batch.x), {}

    return objective


def approx_mass_objective(alpha: float = 2.0) -> Callable:
    """Trainer objective of Chali et al. 2023 Eq. 2 (double backward)."""
    check_number(alpha, "alpha", "approx_mass_objective", low=0)

    def objective(model, batch: Batch):
        loss, (lp, g) = approx_mass_penalty(model, batch.x, alpha, return_terms=True)
        return _per_dim(loss, batch.x), {"grad_norm_x": g}

    return objective
