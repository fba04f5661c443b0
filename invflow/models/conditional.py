"""Class-conditional flows whose context is a learned label embedding: p(x | y) = p(x | c = e_y)
with e_y a trained vector per class fed to every coupling of a conditional flow (the
label-embedding conditioning of conditional flows, Winkler et al. 2019, Sec. 3 and 4.1; the
class-conditional Glow of Kingma & Dhariwal 2018, Sec. 5, conditions the prior instead, which
is ``detectors.objectives.supervised.ClassConditionalFlow``).  Both expose the same interface,
so the same objectives and detectors use either:

    flow = invflow.ClassEmbeddingFlow(invflow.VectorFlow(2, context_dim=8), num_classes=3)
    flow.log_prob(x, labels)     # log p(x | y)                                     [B]
    flow.log_prob(x)             # log (1/K) sum_k p(x | k)  (uniform class prior)  [B]
    flow.class_log_probs(x)      # log p(x | k) for every class                     [B, K]
    flow.sample(n, context=2)    # n samples of class 2 (an int, or labels [n])
    Trainer(flow, (x, labels), out_dir).fit()
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import checkpoint, validation
from ..validation import check_number
from .base import FlowModel, FlowOutput


class ClassEmbeddingFlow(FlowModel):
    """A conditional flow ``model`` (built with ``context_dim`` / ``context_channels`` = E)
    conditioned on class labels through a learned embedding ``nn.Embedding(num_classes, E)``
    (see the module docstring).  The context of every call is the labels: integer class
    indices [B] in [0, num_classes) (or one int for all samples when sampling / inverting).

    ``forward(x, labels)`` is the wrapped model's FlowOutput at c = embedding(labels).  Without
    labels, ``forward(x)`` / ``log_prob(x)`` give the marginal under a uniform class prior,
    log p(x) = logsumexp_k log p(x | k) - log K (one pass of the wrapped model on K B rows);
    its per_scale holds each scale's contribution under the most likely class, the last column
    also holding log p(x) - log p(x | k*), so per_scale sums to log_prob, and its latents are
    those of the most likely class.  ``sample(n)`` without labels draws them uniformly;
    ``sample_and_log_prob`` returns log p(x | y) of the drawn (or given) labels.

    Raises TypeError for a model that is not an invflow model, ValueError for one built
    without a context, for a num_classes that is not a positive int, and for labels that are
    not integer class indices of the right batch size and range."""

    def __init__(self, model: FlowModel, num_classes: int):
        super().__init__()
        where = "ClassEmbeddingFlow"
        if not isinstance(model, FlowModel) or isinstance(model, ClassEmbeddingFlow):
            raise TypeError(
                f"{where}: model must be an invflow model (FlowModel), got {type(model).__name__}"
            )
        if not model.is_conditional:
            raise ValueError(
                f"{where}: the model must be conditional: build it with a context size E "
                f"(e.g. invflow.VectorFlow(dim, context_dim=E) or invflow.Glow(..., context_channels=E))"
            )
        self.num_classes = check_number(num_classes, "num_classes", where, low=1, integer=True)
        self.model = model
        self.embedding = nn.Embedding(self.num_classes, model.context_size)
        self.input_shape = model.input_shape

    @property
    def is_conditional(self) -> bool:
        return True

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"

    # -- checkpoints -------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "model": {"class": type(self.model).__name__, "config": self.model.config()},
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_config(cls, config: dict) -> ClassEmbeddingFlow:
        inner = checkpoint.model_from_config(config["model"]["class"], config["model"]["config"])
        return cls(inner, config["num_classes"])

    # -- the contract ------------------------------------------------------------------
    def latent_shapes(self):
        return self.model.latent_shapes()

    def check_context(self, context, batch: int, where: str, broadcast: bool = False, values: bool = True):
        """The labels of a call with ``batch`` samples as a long tensor [batch] (None stays None):
        integer class indices [batch] in [0, num_classes), or, when ``broadcast`` (sampling,
        inverse), [1] or a Python int for all samples.  TypeError for non-integer labels,
        ValueError for another shape, device or range (the range read only when ``values``)."""
        if context is None:
            return None
        dev = self._any_param().device
        if isinstance(context, torch.Tensor) and context.device != dev:
            raise ValueError(f"{where}: labels on {context.device} but the model is on {dev}")
        if isinstance(context, bool) or not isinstance(context, (int, torch.Tensor)):
            raise TypeError(
                f"{where}: context must be integer class labels [B] (or an int), got {type(context).__name__}"
            )
        labels = torch.as_tensor(context, device=dev)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{where}: context must be integer class labels, got dtype {labels.dtype}")
        if broadcast and labels.dim() == 0:
            labels = labels.reshape(1)
        if labels.dim() != 1 or (labels.shape[0] != batch and not (broadcast and labels.shape[0] == 1)):
            one = " (or one label for all)" if broadcast else ""
            raise ValueError(f"{where}: expected labels of shape [{batch}]{one}, got {list(labels.shape)}")
        if not values:
            return labels.long().expand(batch)
        ok = ((labels >= 0) & (labels < self.num_classes)).all()
        msg = f"{where}: labels must lie in [0, {self.num_classes - 1}]"
        if torch.compiler.is_compiling() or (labels.is_cuda and torch.cuda.is_current_stream_capturing()):
            validation.assert_values(ok, msg)  # traced without a graph break
        elif not bool(ok):
            raise ValueError(f"{msg}, got values in [{int(labels.min())}, {int(labels.max())}]")
        return labels.long().expand(batch)

    def _embed(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)

    def _forward(self, x, labels=None):
        if labels is not None:
            return self.model._call_forward(x, self._embed(labels))
        b, k = x.shape[0], self.num_classes
        out = self._all_classes(x)
        per_class = out.log_prob.view(b, k)
        log_p = torch.logsumexp(per_class, 1) - math.log(k)
        best = per_class.argmax(1)
        rows = torch.arange(b, device=x.device) * k + best
        per_scale = out.per_scale[rows].clone()
        per_scale[:, -1] = per_scale[:, -1] + (log_p - per_scale.sum(1))
        return FlowOutput(log_prob=log_p, per_scale=per_scale, latents=[z[rows] for z in out.latents])

    def _all_classes(self, x: torch.Tensor) -> FlowOutput:
        """The wrapped model on every (sample, class) pair: rows b * K + k."""
        b, k = x.shape[0], self.num_classes
        x_rep = x.repeat_interleave(k, dim=0)
        c = self.embedding.weight.repeat(b, *[1] * (self.embedding.weight.dim() - 1))
        return self.model._call_forward(x_rep, c.to(x.dtype))

    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | k) for every class k: [B, *input_shape] -> [B, K]."""
        self.check_input(x)
        return self._all_classes(x).log_prob.view(x.shape[0], self.num_classes)

    def _inverse(self, latents, labels=None):
        if labels is None:
            raise ValueError(f"{self._name}.inverse: pass the class labels (context=labels [B] or an int)")
        return self.model._call_inverse(latents, self._embed(labels))

    def _sample(self, n: int, temperature: float, generator, labels, log_prob: bool):
        if labels is None:
            dev = self._any_param().device
            labels = torch.randint(self.num_classes, (n,), generator=generator, device=dev)
        return self.model._sample(n, temperature, generator, self._embed(labels), log_prob)
