"""Training objectives for the classifier baselines (``detectors.scores.classifier``), as
plain loss functions of logits plus factories of objectives for ``invflow.train.Trainer``
(``objective(model, batch) -> (loss, logs)``).

    model = ResNetClassifier(in_channels=1, num_classes=10, image_size=28)
    # MSP, Energy, Mahalanobis: plain cross-entropy
    Trainer(model, (images, labels), out_dir, objective=cross_entropy_objective()).fit()
    # MSP-OE: outlier exposure with auxiliary outliers (e.g. Tiny Images)
    Trainer(model, (images, labels), out_dir, objective=outlier_exposure_objective(tiny)).fit()
    # Schirrmeister et al. 2020 S9: in-distribution (0) vs general distribution (1), one logit, no labels
    binary = ResNetClassifier(in_channels=1, num_classes=1, image_size=28)
    Trainer(binary, images, out_dir, objective=in_vs_general_objective(tiny)).fit()

Training batches arrive preprocessed (uint8 images dequantised into [-0.5, 0.5) by the
Trainer); auxiliary / general-distribution batches are drawn each step with the batch's
generator and dequantised the same way (``detectors.objectives.draw_samples``), so runs are
deterministic and resumable.  In-distribution and auxiliary samples go through the model in
one pass (one concatenated batch, as in Hendrycks et al.'s outlier-exposure code), so
BatchNorm sees both.  Losses are in nats per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from invflow.train import Batch
from invflow.validation import check_number

from .flow import draw_samples


def _check_logits(logits: torch.Tensor, where: str, name: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{where}: {name} must be floating logits [B, K], got {shape}")


def _check_labels(logits: torch.Tensor, labels: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:1] or labels.is_floating_point():
        shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"{where}: labels must be integer class indices [B] matching logits "
            f"{list(logits.shape)}, got {shape}"
        )
    return labels.long()


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from the logits' softmax to the uniform posterior, per sample:
    -(1/K) sum_k log softmax(logits)_k  [B].  Minimal (= log K) for uniform logits."""
    _check_logits(logits, "uniform_cross_entropy", "logits")
    return -torch.log_softmax(logits, dim=1).mean(dim=1)


def outlier_exposure_loss(
    logits_in: torch.Tensor, labels: torch.Tensor, logits_aux: torch.Tensor, weight: float = 0.5
) -> torch.Tensor:
    """Outlier exposure for classifiers (Hendrycks, Mazeika & Dietterich 2019, "Deep anomaly
    detection with outlier exposure", Sec. 3 / 4.2, lambda = 0.5 for vision):

        L = CE(f(x_in), y) + lambda * E_{x_aux} [ -(1/K) sum_k log softmax(f(x_aux))_k ]

    the second term being the cross-entropy to the uniform distribution on auxiliary outliers
    (minimal, log K, when their posterior is uniform).  Means over each batch."""
    _check_logits(logits_in, "outlier_exposure_loss", "logits_in")
    _check_logits(logits_aux, "outlier_exposure_loss", "logits_aux")
    if logits_in.shape[1] != logits_aux.shape[1]:
        raise ValueError(
            f"outlier_exposure_loss: logits_in and logits_aux have different numbers of classes "
            f"({logits_in.shape[1]} vs {logits_aux.shape[1]})"
        )
    labels = _check_labels(logits_in, labels, "outlier_exposure_loss")
    weight = check_number(weight, "weight", "outlier_exposure_loss", low=0)
    return F.cross_entropy(logits_in, labels) + weight * uniform_cross_entropy(logits_aux).mean()


def energy_loss(
    logits_in: torch.Tensor,
    labels: torch.Tensor,
    logits_aux: torch.Tensor,
    m_in: float = -25.0,
    m_out: float = -7.0,
    weight: float = 0.1,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Energy-bounded fine-tuning (Liu, Wang, Owens & Li 2020, Sec. 4.2):

        L = CE(f(x_in), y) + lambda * ( E_in[ max(0, E(x_in) - m_in)^2 ]
                                        + E_aux[ max(0, m_out - E(x_aux))^2 ] )

    with E(x) = -T logsumexp(f(x) / T); the paper's CIFAR values m_in = -25, m_out = -7,
    lambda = 0.1.  Chali et al. 2023 Tab. 2 trains its Energy baseline this way with SVHN / MNIST as
    the auxiliary outliers."""
    _check_logits(logits_in, "energy_loss", "logits_in")
    _check_logits(logits_aux, "energy_loss", "logits_aux")
    labels = _check_labels(logits_in, labels, "energy_loss")
    m_in = check_number(m_in, "m_in", "energy_loss")
    m_out = check_number(m_out, "m_out", "energy_loss")
    weight = check_number(weight, "weight", "energy_loss", low=0)
    temperature = check_number(temperature, "temperature", "energy_loss", low=0, low_open=True)
    e_in = -temperature * torch.logsumexp(logits_in / temperature, dim=1)
    e_aux = -temperature * torch.logsumexp(logits_aux / temperature, dim=1)
    reg = F.relu(e_in - m_in).pow(2).mean() + F.relu(m_out - e_aux).pow(2).mean()
    return F.cross_entropy(logits_in, labels) + weight * reg


# ---------------------------------------------------------------- trainer objectives
def _labels(batch: Batch, where: str) -> torch.Tensor:
    if batch.y is None:
        raise ValueError(f"{where}: the batch has no labels; give the Trainer data=(images, labels)")
    return batch.y.long()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == labels).float().mean().detach()


def _check_draw(data, n, where: str, what: str) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or len(data) == 0:
        raise ValueError(f"{where}: {what} must be a non-empty tensor of samples [N, ...]")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(
            f"{where}: the {what} batch size must be an int >= 1 (or None: as many as the "
            f"training batch), got {n!r}"
        )


def _in_and_drawn(model, batch: Batch, data: torch.Tensor, n: int | None):
    """Logits of the batch and of ``n`` samples drawn from ``data`` (default: as many as the
    batch), both through the model in one pass."""
    drawn = draw_samples(data, n or len(batch.x), batch.generator, batch.x)
    logits = model(torch.cat([batch.x, drawn]))
    return logits[: len(batch.x)], logits[len(batch.x) :]


def cross_entropy_objective() -> Callable:
    """Trainer objective: cross-entropy of the batch labels (the classifier behind
    ``MaxSoftmax``, ``Energy`` and ``Mahalanobis``).  Logs "ce" and "acc"."""

    def objective(model, batch: Batch):
        y = _labels(batch, "cross_entropy_objective")
        logits = model(batch.x)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": loss.detach(), "acc": _accuracy(logits, y)}

    return objective


def outlier_exposure_objective(
    aux: torch.Tensor, weight: float = 0.5, aux_batch: int | None = None
) -> Callable:
    """Trainer objective of outlier exposure (``outlier_exposure_loss``): labelled batch plus
    ``aux_batch`` samples of ``aux`` (default: as many as the batch) drawn each step.  Logs
    "ce", "oe" (the uniform cross-entropy of the auxiliary samples) and "acc"."""
    _check_draw(aux, aux_batch, "outlier_exposure_objective", "aux")
    check_number(weight, "weight", "outlier_exposure_objective", low=0)

    def objective(model, batch: Batch):
        y = _labels(batch, "outlier_exposure_objective")
        logits_in, logits_aux = _in_and_drawn(model, batch, aux, aux_batch)
        ce = F.cross_entropy(logits_in, y)
        oe = uniform_cross_entropy(logits_aux).mean()
        return ce + weight * oe, {"ce": ce.detach(), "oe": oe.detach(), "acc": _accuracy(logits_in, y)}

    return objective


def energy_objective(
    aux: torch.Tensor,
    m_in: float = -25.0,
    m_out: float = -7.0,
    weight: float = 0.1,
    aux_batch: int | None = None,
) -> Callable:
    """Trainer objective of energy-bounded training (``energy_loss``, Liu et al. 2020) with
    auxiliary outliers ``aux`` drawn each step.  Logs "ce", "energy_in", "energy_aux", "acc"."""
    _check_draw(aux, aux_batch, "energy_objective", "aux")
    check_number(weight, "weight", "energy_objective", low=0)
    check_number(m_in, "m_in", "energy_objective")
    check_number(m_out, "m_out", "energy_objective")

    def objective(model, batch: Batch):
        y = _labels(batch, "energy_objective")
        logits_in, logits_aux = _in_and_drawn(model, batch, aux, aux_batch)
        loss = energy_loss(logits_in, y, logits_aux, m_in, m_out, weight)
        return loss, {
            "ce": F.cross_entropy(logits_in, y).detach(),
            "energy_in": -torch.logsumexp(logits_in, 1).mean().detach(),
            "energy_aux": -torch.logsumexp(logits_aux, 1).mean().detach(),
            "acc": _accuracy(logits_in, y),
        }

    return objective


def in_vs_general_objective(general: torch.Tensor, general_batch: int | None = None) -> Callable:
    """Trainer objective of the in-distribution-vs-general classifier of Schirrmeister et al. 2020 S9 (for
    ``BinaryClassifierScore``): binary cross-entropy with logits, the training batch
    (in-distribution, no labels needed) as target 0 and ``general_batch`` samples of
    ``general`` (default: as many as the batch) drawn each step as target 1.  The model has
    one logit.  Logs "bce" and "acc" (over both parts)."""
    _check_draw(general, general_batch, "in_vs_general_objective", "general")

    def objective(model, batch: Batch):
        logits_in, logits_g = _in_and_drawn(model, batch, general, general_batch)
        logits = torch.cat([logits_in, logits_g])
        if logits.dim() == 2 and logits.shape[1] == 1:
            logits = logits.squeeze(1)
        if logits.dim() != 1:
            raise ValueError(
                f"in_vs_general_objective: the model must return one logit per sample "
                f"([B, 1] or [B]; ResNetClassifier(num_classes=1)), got {list(logits_in.shape)}"
            )
        target = torch.cat([logits.new_zeros(len(logits_in)), logits.new_ones(len(logits_g))])
        loss = F.binary_cross_entropy_with_logits(logits, target)
        acc = ((logits > 0).to(target.dtype) == target).float().mean().detach()
        return loss, {"bce": loss.detach(), "acc": acc}

    return objective
