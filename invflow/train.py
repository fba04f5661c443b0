"""One trainer for every objective: resumable, guarded against non-finite steps, with
progress bars, a CSV log and multi-process training through torchrun / DDP.

    trainer = invflow.train.Trainer(model, images, out_dir="runs/glow", steps=10_000)
    trainer.fit()                 # or fit(resume=True) to continue from the last checkpoint

Defaults follow Schirrmeister et al. 2020 (seed 000) S4.1: Adamax, learning rate 5e-4,
weight decay 5e-5, a short linear warm-up; ActNorm layers are initialised from the first
global batch (identically on every process).  An objective maps ``(model, batch)`` to a scalar loss, or to ``(loss, logs)``
with ``logs`` a dict of named scalar terms that go to the progress bar and the CSV log;
``nll`` (bits/dim) is the default.

Determinism: the order of the data and every random number of a step (augmentation,
dequantisation noise) derive from ``(seed, step)`` alone, for the whole global batch, and
each process takes its slice.  So a resumed run continues exactly where the interrupted one
stopped, and N processes with global batch G reproduce one process with batch G.

Checkpoints (every ``checkpoint_every`` steps and at the end) are a directory holding the
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
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from . import checkpoint
from ._io import atomic_write
from .data import bits_per_dim, preprocess

Objective = Callable[[nn.Module, "Batch"], "torch.Tensor | tuple[torch.Tensor, dict]"]


# ----------------------------------------------------------------------- batches
@dataclass
class Batch:
    """A training batch handed to the objective: ``x`` preprocessed into [-0.5, 0.5)
    (dequantised when the data are 8-bit images), ``y`` labels when the data have them,
    ``generator`` for any further randomness the objective needs (seeded per step)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    generator: torch.Generator | None = None
    extra: dict = field(default_factory=dict)


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool, translate: int) -> torch.Tensor:
    """Random horizontal flips and random translations by up to ``translate`` pixels (with
    reflection padding), drawn from ``generator`` (seed 000 S4.1 augmentation)."""
    if flip:
        mask = torch.rand(images.shape[0], generator=generator) < 0.5
        images = torch.where(mask.view(-1, *[1] * (images.dim() - 1)), images.flip(-1), images)
    if translate > 0:
        b = images.shape[0]
        dx = torch.randint(-translate, translate + 1, (b,), generator=generator)
        dy = torch.randint(-translate, translate + 1, (b,), generator=generator)
        padded = nn.functional.pad(images.float(), (translate,) * 4, mode="reflect").to(images.dtype)
        h, w = images.shape[-2:]
        images = torch.stack([padded[i, ..., translate + dy[i]: translate + dy[i] + h,
                                     translate + dx[i]: translate + dx[i] + w] for i in range(b)])
    return images


# -------------------------------------------------------------------- objectives
def finite_mean(values: torch.Tensor, max_dropped: float = 0.75) -> torch.Tensor:
    """Mean over the finite entries (seed 000 S4.3: examples whose log-likelihood is not
    finite are dropped); NaN when more than ``max_dropped`` of the batch is non-finite, which
    makes the trainer skip (and count) the step."""
    finite = torch.isfinite(values)
    if finite.float().mean() < 1 - max_dropped:
        return values.new_tensor(float("nan"))
    return values[finite].mean()


def nll(model: nn.Module, batch: Batch):
    """Maximum likelihood: mean bits/dim of the batch (non-finite samples dropped)."""
    log_p = model(batch.x).log_prob
    bpd = bits_per_dim(log_p, batch.x[0].numel())
    loss = finite_mean(bpd)
    return loss, {"bpd": loss.detach()}


# ------------------------------------------------------------------------ trainer
@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64             # global batch, split across processes
    lr: float = 5e-4
    weight_decay: float = 5e-5
    warmup: int = 100                # linear learning-rate warm-up steps
    grad_clip: float | None = None   # max gradient norm
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    flip: bool = False
    translate: int = 0
    progress: bool = True


class Trainer:
    """Trains ``model`` on ``data`` with ``objective``; see the module docstring.

    ``data`` is a tensor of examples (uint8 images are preprocessed with uniform
    dequantisation; floating data are used as they are) or a tuple ``(examples, labels)``.
    ``finetune_from`` is a checkpoint path whose weights initialise the model (seed 000:
    in-distribution models start from the general-distribution model).
    """

    def __init__(self, model: nn.Module, data, out_dir: str, objective: Objective = nll,
                 config: TrainConfig | None = None, finetune_from: str | None = None, **overrides):
        self.config = config or TrainConfig()
        for k, v in overrides.items():
            if not hasattr(self.config, k):
                raise TypeError(f"Trainer: unknown option {k!r}")
            setattr(self.config, k, v)
        c = self.config
        if c.steps < 1 or c.batch_size < 1 or c.checkpoint_every < 1:
            raise ValueError("Trainer: steps, batch_size and checkpoint_every must be >= 1")
        self.examples, self.labels = (data if isinstance(data, (tuple, list)) else (data, None))
        if not isinstance(self.examples, torch.Tensor) or len(self.examples) == 0:
            raise ValueError("Trainer: data must be a non-empty tensor of examples (or (examples, labels))")
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
        self.optimizer = torch.optim.Adamax(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / max(1, c.warmup)))
        self.step = 0
        self.skipped = 0
        self._order: tuple[int, torch.Tensor] | None = None

    # -- data ------------------------------------------------------------------------
    def _batch(self, step: int, whole: bool = False) -> Batch:
        """The rank's slice of global batch ``step`` (all of it with ``whole``): a
        deterministic function of (seed, step)."""
        c, n = self.config, len(self.examples)
        per_epoch = max(1, n // c.batch_size)
        epoch, k = divmod(step, per_epoch)
        order = self._epoch_order(epoch)
        idx = order[(k * c.batch_size) % n:][: c.batch_size]
        if len(idx) < c.batch_size:  # fewer examples than one batch: wrap around
            idx = order[torch.arange(k * c.batch_size, (k + 1) * c.batch_size) % n]
        g = torch.Generator().manual_seed(c.seed * 7_919 + 104_729 * (step + 1))
        x = augment(self.examples[idx], g, c.flip, c.translate)
        x = preprocess(x, generator=g, dtype=self._dtype()) if x.dtype == torch.uint8 else x.to(self._dtype())
        y = self.labels[idx] if self.labels is not None else None
        share = c.batch_size // self.world
        part = slice(0, c.batch_size) if whole else slice(self.rank * share, (self.rank + 1) * share)
        x = x[part].to(self.device)
        y = y[part].to(self.device) if y is not None else None
        return Batch(x=x, y=y, generator=g)

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
        """Data-dependent initialisation (ActNorm) on the whole first global batch, which every
        process builds identically, so all processes start from the same weights."""
        self.model.train()
        self.model(self._batch(0, whole=True).x)

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
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
        self.optimizer.step()
        return True, logs

    # -- the loop --------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Trains up to ``config.steps``; with ``resume`` continues from the last checkpoint
        in ``out_dir`` (starting from scratch if there is none).  Returns a summary."""
        c = self.config
        if self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
        if resume and self.load_latest():
            self._say(f"resumed from step {self.step} ({self.latest_dir()})")
        elif self.step == 0:
            self.initialize()
        log = self._open_log(append=resume and self.step > 0)
        start, first = time.perf_counter(), self.step
        bar = tqdm(total=c.steps, initial=self.step, disable=not c.progress or self.rank != 0,
                   mininterval=1.0, unit="step", dynamic_ncols=True)
        try:
            while self.step < c.steps:
                taken, logs = self.train_step(self._batch(self.step))
                self.skipped += not taken
                if taken:  # the warm-up counts optimiser updates
                    self.scheduler.step()
                self.step += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    shown = {k: f"{v:.4g}" for k, v in logs.items()}
                    bar.set_postfix(skipped=self.skipped, **shown, refresh=False)
                    if log is not None:
                        row = {"step": self.step, "skipped": self.skipped, "lr": self.scheduler.get_last_lr()[0], **logs}
                        log.writerow(row)
                        if self.tensorboard is not None:
                            for k, v in row.items():
                                if k != "step":
                                    self.tensorboard.add_scalar(k, v, self.step)
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.file.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        seconds = time.perf_counter() - start
        summary = {"steps": self.step, "skipped": self.skipped, "seconds": seconds,
                   "steps_per_second": (self.step - first) / seconds if seconds > 0 else float("nan"),
                   "out_dir": self.out_dir}
        self._say(f"done: {summary['steps']} steps, {self.skipped} skipped, "
                  f"{summary['steps_per_second']:.2f} steps/s; checkpoints and log in {self.out_dir}")
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
        try:
            with open(os.path.join(self.out_dir, "latest")) as f:
                name = f.read().strip()
        except FileNotFoundError:
            return None
        return os.path.join(self.out_dir, name)

    def save_checkpoint(self) -> None:
        """Writes ``out_dir/step-NNNNNNN/`` (model + trainer state) then points ``latest`` at it."""
        if self.rank != 0:
            return
        name = f"step-{self.step:07d}"
        final = os.path.join(self.out_dir, name)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.out_dir)
        try:
            checkpoint.save(self.model, os.path.join(tmp, "model.safetensors"))
            tensors, meta = _flatten_state({
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
                "rng": torch.get_rng_state(),
            })
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
        """Restores model, optimizer, scheduler, RNG and step from ``latest``; False if none."""
        path = self.latest_dir()
        if path is None:
            return False
        saved = checkpoint.load(os.path.join(path, "model.safetensors"), map_location=self.device)
        self.model.load_state_dict(saved.state_dict())
        state_path = os.path.join(path, "state.safetensors")
        with safe_open(state_path, framework="pt") as f:
            meta = json.loads(f.metadata()["trainer"])
        state = _unflatten_state(load_file(state_path), meta)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **state["scheduler"]})
        torch.set_rng_state(state["rng"])
        self.step, self.skipped = int(meta["step"]), int(meta["skipped"])
        return True


# -------------------------------------------------------------- state (de)serialising
class _CsvLog:
    """log.csv with a column per logged term: the columns are fixed by the first row written
    (the standard ones plus the objective's own terms), or by the header when appending."""

    BASE = ["step", "skipped", "lr", "loss", "bpd", "grad_norm"]

    def __init__(self, path: str, append: bool):
        fields = None
        if append and os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                fields = next(csv.reader(f), None)
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
            return {"__dict__": [[walk(k, None) if not isinstance(k, (str, int)) else k, walk(v, f"{path}.{k}")]
                                 for k, v in o.items()]}
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
