"""One trainer for every objective: resumable, guarded against non-finite steps, with
progress bars, a CSV log and multi-process training through torchrun / DDP.

    trainer = invflow.train.Trainer(model, images, out_dir="runs/glow", steps=10_000)
    trainer.fit()                 # or fit(resume=True) to continue from the last checkpoint

Defaults follow Schirrmeister et al. 2020 S4.1: Adamax, learning rate 5e-4,
weight decay 5e-5, a short linear warm-up; ActNorm layers are initialised from the first
global batch (identically on every process).  An objective maps ``(model, batch)`` to a scalar loss, or to ``(loss, logs)``
with ``logs`` a dict of named scalar terms that go to the progress bar and the CSV log;
``nll`` (bits/dim) is the default.

Determinism: the order of the data and every random number of a step (augmentation,
dequantisation noise) derive from ``(seed, step)`` alone, for the whole global batch, and
each process takes its slice.  So a resumed run continues exactly where the interrupted one
stopped, and N processes with global batch G reproduce one process with batch G.

Interruption: SIGINT (Ctrl-C) or SIGTERM during ``fit`` finishes the current step, writes a
checkpoint, and raises ``TrainingInterrupted`` (a KeyboardInterrupt); ``fit(resume=True)``
continues from it.  ``prepare_run_dir`` refuses to start a fresh run in a directory that
holds another one unless told to overwrite it.

Checkpoints (every ``checkpoint_every`` steps, at the end and on interruption) are a directory holding the
model (``invflow.save``) and the optimizer / scheduler / step state (safetensors + JSON, no
pickle); a ``latest`` file naming it is replaced atomically last, so a crash at any moment
leaves the previous checkpoint usable.  Only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from . import checkpoint
from .data import bits_per_dim, preprocess
from .io import atomic_write, check_regular, open_regular
from .validation import check_number, unpreprocessed_hint

Objective = Callable[[nn.Module, "Batch"], "torch.Tensor | tuple[torch.Tensor, dict]"]


# ----------------------------------------------------------------------- batches
@dataclass
class Batch:
    """A training batch handed to the objective: ``x`` preprocessed into [-0.5, 0.5)
    (dequantised when the data are 8-bit images), ``y`` labels when the data have them,
    ``generator`` for any further randomness the objective needs (seeded per step),
    ``context`` the conditioning values of a conditional model (``model(x, context=...)``;
    integer labels of an ``invflow.ClassEmbeddingFlow`` are also given as ``y``)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    generator: torch.Generator | None = None
    extra: dict = field(default_factory=dict)
    context: torch.Tensor | None = None


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool, translate: int) -> torch.Tensor:
    """Random horizontal flips and random translations by up to ``translate`` pixels (with
    reflection padding), drawn from ``generator`` (Schirrmeister et al. 2020 S4.1 augmentation)."""
    if flip:
        mask = torch.rand(images.shape[0], generator=generator) < 0.5
        images = torch.where(mask.view(-1, *[1] * (images.dim() - 1)), images.flip(-1), images)
    if translate > 0:
        b = images.shape[0]
        dx = torch.randint(-translate, translate + 1, (b,), generator=generator)
        dy = torch.randint(-translate, translate + 1, (b,), generator=generator)
        padded = nn.functional.pad(images.float(), (translate,) * 4, mode="reflect").to(images.dtype)
        h, w = images.shape[-2:]
        images = torch.stack(
            [
                padded[
                    i,
                    ...,
                    translate + dy[i] : translate + dy[i] + h,
                    translate + dx[i] : translate + dx[i] + w,
                ]
                for i in range(b)
            ]
        )
    return images


# -------------------------------------------------------------------- objectives
class NonFiniteGradientWarning(UserWarning):
    """``finite_mean`` got non-finite values that carry a graph to parameters: their backward
    (0 * inf) may make every gradient NaN; compute them with ``drop_non_finite``."""


_warned_nan_gradients = False

#: the autograd-node metadata key that marks ``drop_non_finite``'s output
_DROPPED_MARK = "invflow.drop_non_finite"


def finite_mean(values: torch.Tensor, max_dropped: float = 0.75) -> torch.Tensor:
    """Mean over the finite entries of ``values`` (any shape; a scalar), dropping the non-finite
    ones (Schirrmeister et al. 2020 S4.3: examples whose log-likelihood is not finite are
    dropped); NaN when more than ``max_dropped`` (a fraction in [0, 1]) of the entries are
    non-finite, which makes the trainer skip (and count) the step.

    The value is right whatever ``values`` came from, the gradient only when the dropped
    entries carry no graph: a dropped sample's backward through the network multiplies its
    zero gradient by the inf / NaN inside and may make every parameter gradient NaN.  So in a
    training loop compute the values with ``drop_non_finite`` /
    ``log_prob_dropping_non_finite``, whose non-finite entries are cut from the graph::

        loss = finite_mean(-log_prob_dropping_non_finite(model, x))   # not -model.log_prob(x)

    Warns once (``NonFiniteGradientWarning``) when it gets non-finite values whose graph reaches
    parameters other than through ``drop_non_finite``.  Raises ValueError for ``max_dropped``
    outside [0, 1] and TypeError for a non-tensor."""
    check_number(max_dropped, "max_dropped", "finite_mean", low=0, high=1)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"finite_mean: expected a torch.Tensor of values, got {type(values).__name__}")
    finite = torch.isfinite(values)
    kept = int(finite.sum())
    if kept < (1 - max_dropped) * finite.numel():
        return values.new_tensor(float("nan"))
    if values.requires_grad and 0 < kept < finite.numel():
        _warn_nan_gradients(values)
    return values[finite].mean()


def _warn_nan_gradients(values: torch.Tensor) -> None:
    global _warned_nan_gradients
    if _warned_nan_gradients or not _graph_reaches_leaves(values):
        return
    _warned_nan_gradients = True
    warnings.warn(
        "finite_mean: some values are non-finite and carry a graph to parameters, so their backward "
        "(0 * inf) may make every gradient NaN; compute them with invflow.train.drop_non_finite or "
        "log_prob_dropping_non_finite (finite_mean(-log_prob_dropping_non_finite(model, x)))",
        NonFiniteGradientWarning,
        stacklevel=3,
    )


def _graph_reaches_leaves(values: torch.Tensor) -> bool:
    """Whether the autograd graph of ``values`` reaches a leaf that requires grad other than
    through an output of ``drop_non_finite`` (whose non-finite rows have no graph)."""
    stack, seen = [values.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.metadata.get(_DROPPED_MARK):
            continue
        if type(node).__name__ == "AccumulateGrad":
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def drop_non_finite(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    again: Callable[..., torch.Tensor] | None = None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn(x)`` (per-sample rows [B, ...], e.g. log p(x)) whose non-finite rows are cut out of
    the autograd graph: when some but not all rows are non-finite (NaN / inf) and gradients are
    recorded, the finite rows are computed again (``again``, default ``fn``) on their own, and
    the result holds them (with their graph) and the non-finite values (without one).  The
    gradient of any loss that ignores the non-finite rows (``finite_mean``, the outlier or
    margin loss) is then exactly that of the batch without the bad samples (Schirrmeister et al. 2020 S4.3's
    dropping); without the recomputation the bad samples' backward (0 * inf) makes every
    parameter gradient NaN.  When every row is non-finite the rows are returned as they are
    (``finite_mean`` then gives NaN and the trainer skips the step).  With a ``context`` (a
    tensor with one row per sample) the functions are called ``fn(x, context)`` and the
    recomputation gets the kept rows of both."""
    out = fn(x) if context is None else fn(x, context)
    if not torch.is_grad_enabled() or not out.requires_grad:
        return out
    bad = ~torch.isfinite(out.detach()).reshape(len(out), -1).all(1)
    if not bool(bad.any()) or bool(bad.all()):
        return out
    keep = (~bad).nonzero().squeeze(1)
    rerun = again or fn
    kept = rerun(x[keep]) if context is None else rerun(x[keep], context[keep])
    out = out.detach().index_put((keep,), kept)
    out.grad_fn.metadata[_DROPPED_MARK] = True
    return out


def log_prob_dropping_non_finite(
    model: nn.Module, x: torch.Tensor, context: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x) [B] (log p(x | context) for a conditional model) through ``drop_non_finite``:
    the non-finite samples carry no gradient.  A DistributedDataParallel model recomputes
    through its ``module`` (DDP's per-forward buffer broadcast is a collective the other
    processes would not join)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def call(m, t, c, log_prob):
        kw = {} if c is None else {"context": c}
        return m.log_prob(t, **kw) if log_prob else m(t, **kw).log_prob

    def first(t, c=None):
        return call(model, t, c, model is inner and hasattr(model, "log_prob"))

    def again(t, c=None):
        return call(inner, t, c, hasattr(inner, "log_prob"))

    return drop_non_finite(first, x, again, context=context)


def nll(model: nn.Module, batch: Batch):
    """Maximum likelihood: mean bits/dim of the batch (non-finite samples dropped, with the
    gradient of the kept ones only: ``drop_non_finite``)."""
    log_p = log_prob_dropping_non_finite(model, batch.x, batch.context)
    bpd = bits_per_dim(log_p, batch.x[0].numel())
    loss = finite_mean(bpd)
    return loss, {"bpd": loss.detach()}


# ------------------------------------------------------------------------ trainer
@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64  # global batch, split across processes
    lr: float = 5e-4
    weight_decay: float = 5e-5
    warmup: int = 100  # linear learning-rate warm-up steps
    decay_start: int | None = None  # the step from which the learning rate falls linearly ...
    decay_steps: int | None = None  # ... reaching 0 this many steps later (both or neither)
    grad_clip: float | None = None  # max gradient norm
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    flip: bool = False
    translate: int = 0
    progress: bool = True
    init_batch: int | None = None  # examples for ActNorm's data-dependent init (None: the first global batch)


#: (name, integer, low, low_open, optional) of every numeric TrainConfig field
_CONFIG_RULES = [
    ("steps", True, 1, False, False),
    ("batch_size", True, 1, False, False),
    ("lr", False, 0, True, False),
    ("weight_decay", False, 0, False, False),
    ("warmup", True, 0, False, False),
    ("decay_start", True, 0, False, True),
    ("decay_steps", True, 1, False, True),
    ("grad_clip", False, 0, True, True),
    ("checkpoint_every", True, 1, False, False),
    ("keep_checkpoints", True, 1, False, False),
    ("log_every", True, 1, False, False),
    ("seed", True, 0, False, False),
    ("translate", True, 0, False, False),
    ("init_batch", True, 1, False, True),
]


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``Trainer.fit`` after SIGINT / SIGTERM, once a checkpoint is written."""

    def __init__(self, signum: int, step: int, checkpoint_dir: str | None):
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint_dir}"
        )
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir


def is_run_file(name: str) -> bool:
    """Whether ``name`` in an output directory belongs to a Trainer run (checkpoints, log)."""
    return name in ("latest", "log.csv", "tensorboard") or name.startswith(("step-", ".tmp-"))


def prepare_run_dir(out_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """Guards an output directory before training: a fresh run (no ``resume``) in a non-empty
    directory raises ValueError unless ``overwrite``, which deletes the previous run's
    checkpoints, log.csv and tensorboard events (other files are kept).  ``resume`` and
    ``overwrite`` exclude each other (ValueError)."""
    if resume and overwrite:
        raise ValueError(
            "resume and overwrite exclude each other: resume continues the run in the directory, "
            "overwrite deletes it"
        )
    if resume or not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    if not overwrite:
        raise ValueError(
            f"output directory {out_dir} is not empty ({', '.join(sorted(os.listdir(out_dir))[:4])}"
            f"...): resume the run in it (--resume / fit(resume=True)), start again "
            f"(--overwrite deletes its checkpoints and log), or choose another directory"
        )
    for name in os.listdir(out_dir):
        if is_run_file(name):
            path = os.path.join(out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


class Trainer:
    """Trains ``model`` on ``data`` with ``objective``; see the module docstring.

    ``data`` is a tensor of examples (uint8 images are preprocessed with uniform
    dequantisation; floating data are used as they are) or a tuple ``(examples, labels)``.
    For a conditional model (``model.is_conditional``: built with ``context_dim`` /
    ``context_channels``, or an ``invflow.ClassEmbeddingFlow``) it must be
    ``(examples, context)`` with one context row per example (floating contexts are cast to
    the model's dtype; integer labels are kept), and every batch is scored as
    ``model(x, context=c)``; an image context [N, K, H, W] cannot be combined with ``flip`` /
    ``translate`` (the augmentation would move x but not its context).
    ``finetune_from`` is a checkpoint path whose weights initialise the model (Schirrmeister et al. 2020:
    in-distribution models start from the general-distribution model).
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        out_dir: str,
        objective: Objective = nll,
        config: TrainConfig | None = None,
        finetune_from: str | None = None,
        **overrides,
    ):
        self.config = config or TrainConfig()
        for k, v in overrides.items():
            if not hasattr(self.config, k):
                raise TypeError(f"Trainer: unknown option {k!r}")
            setattr(self.config, k, v)
        c = self.config
        for name, integer, low, low_open, optional in _CONFIG_RULES:
            setattr(
                c,
                name,
                check_number(
                    getattr(c, name),
                    name,
                    "Trainer",
                    low=low,
                    low_open=low_open,
                    integer=integer,
                    optional=optional,
                ),
            )
        self.examples, self.labels = data if isinstance(data, (tuple, list)) else (data, None)
        if not isinstance(self.examples, torch.Tensor) or len(self.examples) == 0:
            raise ValueError("Trainer: data must be a non-empty tensor of examples (or (examples, labels))")
        self._check_range(model)
        self.context = None
        if getattr(model, "is_conditional", False):
            self.context, self.labels = self._check_context_data(model, self.labels), None
        if self.labels is not None and len(self.labels) != len(self.examples):
            raise ValueError("Trainer: examples and labels differ in length")
        self.out_dir = out_dir
        self.objective = objective
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        if c.batch_size % self.world:
            raise ValueError(f"Trainer: batch_size {c.batch_size} is not divisible by {self.world} processes")
        self.model = model
        if finetune_from is not None:
            model.load_state_dict(checkpoint.load(finetune_from).state_dict())
        self.device = next(model.parameters()).device
        self.net = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # foreach: one multi-tensor kernel per update term instead of one per parameter (the same
        # values to the bit; 1.8x faster on a 168-parameter Glow, bench/compare.py's model case)
        self.optimizer = torch.optim.Adamax(
            model.parameters(), lr=c.lr, weight_decay=c.weight_decay, foreach=True
        )
        self._check_decay()
        self.step = 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / max(1, c.warmup)) * self.decay_factor(self.step)
        )
        self.skipped = 0
        self._order: tuple[int, torch.Tensor] | None = None

    def _check_decay(self) -> None:
        c = self.config
        if (c.decay_start is None) != (c.decay_steps is None):
            raise ValueError(
                "Trainer: decay_start and decay_steps go together (the step the learning rate starts "
                f"falling at, and how many steps it takes to reach 0); got {c.decay_start} and {c.decay_steps}"
            )

    def decay_factor(self, step: int) -> float:
        """The factor on the learning rate of the update at ``step`` (0-based): 1 before
        ``decay_start``, then falling linearly to 0 at ``decay_start + decay_steps`` (the
        constant-then-anneal schedule: a final low-rate phase settles the weights that a
        constant rate keeps moving).  It multiplies the warm-up factor; a run resumed with
        other decay settings follows the new ones from its next update."""
        c = self.config
        if c.decay_start is None or step < c.decay_start:
            return 1.0
        return max(0.0, 1.0 - (step - c.decay_start) / c.decay_steps)

    def _check_range(self, model: nn.Module) -> None:
        """Floating image data must not look like raw pixels (0..255 or ToTensor 0..1 floats:
        the rule of ``invflow.validation.unpreprocessed_hint``, the same as the models'); uint8
        images are preprocessed here, other finite floats are used as they are."""
        x = self.examples
        image_model = getattr(model, "is_image_model", x.dim() == 4)
        if not x.is_floating_point() or not image_model:
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError("Trainer: data contain NaN or Inf")
        hint = unpreprocessed_hint(x)
        if hint is not None:
            raise ValueError(f"Trainer: floating images {hint}, or pass the uint8 images (dequantised here)")

    def _check_context_data(self, model: nn.Module, context) -> torch.Tensor:
        """The context column of a conditional model's data (see the class docstring)."""
        name = type(model).__name__
        if context is None:
            raise ValueError(
                f"Trainer: {name} is conditional: data must be (examples, context) with one context row "
                f"per example"
            )
        if not isinstance(context, torch.Tensor) or len(context) != len(self.examples):
            got = len(context) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(
                f"Trainer: the context must be a tensor with one row per example ({len(self.examples)}), got {got}"
            )
        if context.is_floating_point() and not bool(torch.isfinite(context).all()):
            raise ValueError("Trainer: the context contains NaN or Inf")
        if context.dim() == 4 and (self.config.flip or self.config.translate):
            raise ValueError(
                "Trainer: flip / translate would move the images but not their image context; "
                "augment both yourself, or train without flip and translate"
            )
        return context

    # -- data ------------------------------------------------------------------------
    def _examples(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Examples ``idx`` augmented and preprocessed with the randomness of ``g``."""
        c = self.config
        x = augment(self.examples[idx], g, c.flip, c.translate)
        x = preprocess(x, generator=g, dtype=self._dtype()) if x.dtype == torch.uint8 else x.to(self._dtype())
        return x, (self.labels[idx] if self.labels is not None else None)

    def _batch(self, step: int, whole: bool = False) -> Batch:
        """The rank's slice of global batch ``step`` (all of it with ``whole``): a
        deterministic function of (seed, step)."""
        c, n = self.config, len(self.examples)
        per_epoch = max(1, n // c.batch_size)
        epoch, k = divmod(step, per_epoch)
        order = self._epoch_order(epoch)
        idx = order[(k * c.batch_size) % n :][: c.batch_size]
        if len(idx) < c.batch_size:  # fewer examples than one batch: wrap around
            idx = order[torch.arange(k * c.batch_size, (k + 1) * c.batch_size) % n]
        g = torch.Generator().manual_seed(c.seed * 7_919 + 104_729 * (step + 1))
        x, y = self._examples(idx, g)
        share = c.batch_size // self.world
        part = slice(0, c.batch_size) if whole else slice(self.rank * share, (self.rank + 1) * share)
        x = x[part].to(self.device)
        y = y[part].to(self.device) if y is not None else None
        context = self._context(idx[part])
        if context is not None and not context.is_floating_point():
            y = context  # class labels: the supervised objectives read them as y
        return Batch(x=x, y=y, generator=g, context=context)

    def _context(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The context rows ``idx`` on the model's device (floating ones in its dtype)."""
        if self.context is None:
            return None
        c = self.context[idx]
        return c.to(device=self.device, dtype=self._dtype() if c.is_floating_point() else None)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The data order of ``epoch`` (a function of seed and epoch), cached for the epoch."""
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.examples), generator=g))
        return self._order[1]

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def initialize(self) -> None:
        """Data-dependent initialisation (ActNorm) on the whole first global batch (or on
        ``init_batch`` examples of the first epoch's order), which every process builds
        identically, so all processes start from the same weights.  ValueError when that batch
        cannot give a variance (one value per channel, e.g. batch_size=1 and a 1 x 1 last scale)."""
        self.model.train()
        c = self.config
        if c.init_batch is None:
            batch = self._batch(0, whole=True)
            x, context = batch.x, batch.context
        else:
            idx = self._epoch_order(0)[torch.arange(c.init_batch) % len(self.examples)]
            x = self._examples(idx, torch.Generator().manual_seed(c.seed * 7_919 + 13))[0].to(self.device)
            context = self._context(idx)
        try:
            self.model(x) if context is None else self.model(x, context=context)
        except ValueError as e:
            if "value per channel" not in str(e):
                raise
            raise ValueError(
                f"Trainer: ActNorm initialisation on {len(x)} example(s) cannot estimate a variance "
                f"({e}); set init_batch >= 2 (e.g. init_batch=64) or a larger batch_size"
            ) from e

    # -- one step ----------------------------------------------------------------------
    def _all_true(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)

    def train_step(self, batch: Batch) -> tuple[bool, dict]:
        """One optimisation step; returns (taken, logs).  A step whose loss or gradients are
        not finite (on any process) is skipped and counted, the weights left untouched."""
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        result = self.objective(self.net, batch)
        loss, logs = result if isinstance(result, tuple) else (result, {})
        logs = {k: float(v) for k, v in logs.items()}
        logs["loss"] = float(loss.detach())
        if not self._all_true(bool(torch.isfinite(loss))):
            return False, logs
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if not self._all_true(finite):
            self.optimizer.zero_grad(set_to_none=True)
            return False, logs
        if self.config.grad_clip is not None:
            logs["grad_norm"] = float(
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            )
        self.optimizer.step()
        return True, logs

    # -- the loop --------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Trains up to ``config.steps``; with ``resume`` continues from the last checkpoint
        in ``out_dir`` (saying so and starting from scratch if there is none).  SIGINT / SIGTERM
        (when fit runs in the main thread) end the current step, write a checkpoint and raise
        ``TrainingInterrupted``; a second Ctrl-C stops at once.  Returns a summary."""
        self._check_decay()  # the config may have changed since construction
        if self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
        if resume and self.load_latest():
            self._say(f"resumed from step {self.step} ({self.latest_dir()})")
        else:
            if resume:
                self._say(f"nothing to resume in {self.out_dir} (no checkpoint): starting from step 0")
            if self.step == 0:
                self.initialize()
        with _SignalCatcher() as caught:
            return self._loop(resume, caught)

    def _loop(self, resume: bool, caught: _SignalCatcher) -> dict:
        c = self.config
        log = self._open_log(append=resume and self.step > 0)
        start, first = time.perf_counter(), self.step
        bar = tqdm(
            total=c.steps,
            initial=self.step,
            disable=not c.progress or self.rank != 0,
            mininterval=1.0,
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.step < c.steps:
                taken, logs = self.train_step(self._batch(self.step))
                self.skipped += not taken
                self.step += 1  # before the scheduler: the decay factor is that of the next update
                if taken:  # the warm-up counts optimiser updates
                    self.scheduler.step()
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    shown = {k: f"{v:.4g}" for k, v in logs.items()}
                    bar.set_postfix(skipped=self.skipped, **shown, refresh=False)
                    if log is not None:
                        row = {
                            "step": self.step,
                            "skipped": self.skipped,
                            "lr": self.scheduler.get_last_lr()[0],
                            **logs,
                        }
                        log.writerow(row)
                        if self.tensorboard is not None:
                            for k, v in row.items():
                                if k != "step":
                                    self.tensorboard.add_scalar(k, v, self.step)
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
                if not self._all_true(caught.signum is None):
                    if self.step % c.checkpoint_every and self.step != c.steps:
                        self.save_checkpoint()
                    signum = caught.signum or signal.SIGTERM
                    self._say(
                        f"{signal.Signals(signum).name} at step {self.step}: checkpoint written to "
                        f"{self.latest_dir()}; fit(resume=True) continues from it"
                    )
                    raise TrainingInterrupted(signum, self.step, self.latest_dir())
        finally:
            bar.close()
            if log is not None:
                log.file.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        seconds = time.perf_counter() - start
        summary = {
            "steps": self.step,
            "skipped": self.skipped,
            "seconds": seconds,
            "steps_per_second": (self.step - first) / seconds if seconds > 0 else float("nan"),
            "out_dir": self.out_dir,
        }
        self._say(
            f"done: {summary['steps']} steps, {self.skipped} skipped, "
            f"{summary['steps_per_second']:.2f} steps/s; checkpoints and log in {self.out_dir}"
        )
        return summary

    def _say(self, msg: str) -> None:
        """Status lines (resume, completion) from rank 0, with or without the progress bar."""
        if self.rank == 0:
            tqdm.write(msg)

    def _open_log(self, append: bool):
        """CSV log of every logged term (rank 0), plus TensorBoard events when installed."""
        self.tensorboard = None
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(os.path.join(self.out_dir, "tensorboard"))
        except ImportError:
            pass
        return _CsvLog(os.path.join(self.out_dir, "log.csv"), append)

    # -- checkpoints -------------------------------------------------------------------
    def latest_dir(self) -> str | None:
        """The checkpoint directory ``out_dir/latest`` names, None when there is none;
        ValueError when it leads outside ``out_dir`` (``invflow.checkpoint.latest_checkpoint``)."""
        return checkpoint.latest_checkpoint(self.out_dir)

    def save_checkpoint(self) -> None:
        """Writes ``out_dir/step-NNNNNNN/`` (model + trainer state) then points ``latest`` at it."""
        if self.rank != 0:
            return
        name = f"step-{self.step:07d}"
        final = os.path.join(self.out_dir, name)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.out_dir)
        try:
            checkpoint.save(self.model, os.path.join(tmp, "model.safetensors"))
            tensors, meta = _flatten_state(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
                    "rng": torch.get_rng_state(),
                }
            )
            meta.update(step=self.step, skipped=self.skipped, config=vars(self.config))
            save_file(tensors, os.path.join(tmp, "state.safetensors"), metadata={"trainer": json.dumps(meta)})
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write(os.path.join(self.out_dir, "latest"), name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = sorted(d for d in os.listdir(self.out_dir) if d.startswith("step-"))
        for d in old[: -self.config.keep_checkpoints]:
            shutil.rmtree(os.path.join(self.out_dir, d), ignore_errors=True)

    def load_latest(self) -> bool:
        """Restores model, optimizer, scheduler, RNG and step from ``latest``; False if none.
        Reads only regular files inside ``out_dir`` (symbolic links resolved): ValueError for a
        ``latest`` that leads elsewhere, a FIFO or device, or a damaged trainer state."""
        path = self.latest_dir()
        if path is None:
            return False
        model_path = checkpoint.confined(self.out_dir, os.path.join(path, checkpoint.MODEL_FILE), "model")
        saved = checkpoint.load(model_path, map_location=self.device)
        self.model.load_state_dict(saved.state_dict())
        state_path = checkpoint.confined(
            self.out_dir, os.path.join(path, "state.safetensors"), "trainer state"
        )
        check_regular(state_path, "the trainer state (state.safetensors)")
        try:
            with safe_open(state_path, framework="pt") as f:
                meta = json.loads(f.metadata()["trainer"])
            state = _unflatten_state(load_file(state_path), meta)
        except (KeyError, TypeError, ValueError, RecursionError, SafetensorError) as err:
            raise ValueError(
                f"{state_path}: not a trainer state written by invflow.train ({type(err).__name__}); "
                f"resume from another checkpoint or start again (--overwrite)"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # checkpoints written before foreach was set
            group["foreach"] = True
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **state["scheduler"]})
        torch.set_rng_state(state["rng"])
        self.step, self.skipped = int(meta["step"]), int(meta["skipped"])
        return True


class _SignalCatcher:
    """Context manager: SIGINT / SIGTERM set ``signum`` instead of stopping the process (a second
    SIGINT raises KeyboardInterrupt at once); previous handlers are restored on exit.  Outside
    the main thread (where Python cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.saved: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, h in self.saved.items():
            signal.signal(s, h)
        return False


# -------------------------------------------------------------- state (de)serialising
class _CsvLog:
    """log.csv with a column per logged term: the columns are fixed by the first row written
    (the standard ones plus the objective's own terms), or by the header when appending."""

    BASE = ["step", "skipped", "lr", "loss", "bpd", "grad_norm"]

    def __init__(self, path: str, append: bool):
        fields = None
        if os.path.lexists(path):
            check_regular(path, "the run's log.csv")  # a FIFO would block the open below
        if append and os.path.exists(path) and os.path.getsize(path) > 0:
            with open_regular(path, "the run's log.csv") as f:
                first = f.readline(1 << 16).decode("utf-8", "replace")
            fields = next(csv.reader([first]), None)
        self.file = open(path, "a" if fields else "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore") if fields else None

    def writerow(self, row: dict) -> None:
        if self.writer is None:
            extra = [k for k in row if k not in self.BASE]
            self.writer = csv.DictWriter(self.file, fieldnames=self.BASE + extra, extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()


def _flatten_state(obj) -> tuple[dict, dict]:
    """Splits a nested state (dicts, lists, tensors, scalars) into a flat dict of tensors and
    a JSON-serialisable skeleton that refers to them by key."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o, path):
        if isinstance(o, torch.Tensor):
            key = path or "t"
            tensors[key] = o.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {
                "__dict__": [
                    [walk(k, None) if not isinstance(k, (str, int)) else k, walk(v, f"{path}.{k}")]
                    for k, v in o.items()
                ]
            }
        if isinstance(o, (list, tuple)):
            return {"__list__": [walk(v, f"{path}.{i}") for i, v in enumerate(o)]}
        if o is None or isinstance(o, (bool, int, float, str)):
            return o if not (isinstance(o, float) and not math.isfinite(o)) else {"__float__": repr(o)}
        raise TypeError(f"cannot checkpoint a {type(o).__name__}")

    return tensors, {"state": walk(obj, "s")}


def _unflatten_state(tensors: dict, meta: dict):
    def build(o):
        if isinstance(o, dict):
            if "__tensor__" in o:
                return tensors[o["__tensor__"]]
            if "__dict__" in o:
                return {k: build(v) for k, v in o["__dict__"]}
            if "__list__" in o:
                return [build(v) for v in o["__list__"]]
            if "__float__" in o:
                return float(o["__float__"])
        return o

    return build(meta["state"])
