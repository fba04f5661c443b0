"""The detector API shared by every score (docs/design.md, "Detectors"; pytorch-ood style).

    det = SomeDetector(...)
    det.fit(x_in)          # fits what the detector needs and calibrates the threshold
    s = det.score(x)       # float64 [B]; HIGHER = MORE ANOMALOUS
    det.predict(x)         # bool [B]: score above the threshold that flags a fraction
                           # ``fpr`` of in-distribution data (default 5%)

Inputs are image batches either as raw ``uint8`` (preprocessed here without noise, Schirrmeister et al. 2020
S4.5 "noise-free evaluation") or as preprocessed floats (``invflow.data.preprocess``; raw 0..255 or
0..1 floats raise ValueError, ``invflow.validation.check_preprocessed``), or feature / tabular
vectors [B, D] for vector models, as tensors, numpy arrays, lists of PIL images, Datasets or
DataLoaders (``detectors.inputs``); ``det.decision_function(x)`` (PyOD) and ``det(x)`` are
``det.score(x)``.  Inputs must have the shape the detector's models take (``input_shape``;
ValueError naming the model otherwise), unless ``resize=True`` resizes them as detector bundles
do.  NaN / Inf inputs raise ValueError.  Non-finite log-likelihoods of finite inputs are set to
``LOG_LIKELIHOOD_FLOOR = -3e6`` before any difference is taken (Schirrmeister et al. 2020 S4.5).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from invflow.data import preprocess
from invflow.layers import UninitializedWarning, warn_if_uninitialized
from invflow.validation import check_number, check_preprocessed

from ..inputs import accepts_any_input

LOG_LIKELIHOOD_FLOOR = -3e6

#: folds of the cross-fitting with which ``Detector.fit`` calibrates detectors that fit a state
FOLDS = 5


def floor_log_likelihood(log_p: torch.Tensor) -> torch.Tensor:
    """Non-finite (-inf, +inf, NaN) log-likelihoods -> -3e6 (Schirrmeister et al. 2020 S4.5)."""
    return torch.where(torch.isfinite(log_p), log_p, torch.full_like(log_p, LOG_LIKELIHOOD_FLOOR))


def model_dtype_device(model) -> tuple[torch.dtype, torch.device]:
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def as_model_input(x: torch.Tensor, model=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 images -> noise-free preprocessed floats in the model's dtype; floats pass
    through unchanged (the model validates them).  Both move to the model's device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        m_dtype, device = model_dtype_device(model) if model is not None else (torch.float32, x.device)
        return preprocess(x, dequantize=False, dtype=dtype or m_dtype).to(device)
    if not x.is_floating_point():
        raise TypeError(
            f"expected uint8 images (0..255) or floats preprocessed into [-0.5, 0.5], got {x.dtype}"
        )
    if model is not None:
        _, device = model_dtype_device(model)
        if x.device != device:
            x = x.to(device)
    return x


class eval_mode:
    """Context manager: puts the given modules in eval mode (no ActNorm initialisation, no
    dropout) and restores their previous modes afterwards."""

    def __init__(self, *modules):
        self.modules = [m for m in modules if isinstance(m, nn.Module)]

    def __enter__(self):
        self.saved = [[(sub, sub.training) for sub in m.modules()] for m in self.modules]
        for m in self.modules:
            m.eval()
        return self

    def __exit__(self, *exc):
        for states in self.saved:
            for sub, mode in states:
                sub.training = mode
        return False


def log_prob(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) [B] of any model exposing ``log_prob`` (or a forward returning ``.log_prob``)."""
    if hasattr(model, "log_prob"):
        return model.log_prob(x)
    return model(x).log_prob


def _checks_models_after(init):
    """Wraps a detector constructor: once the outermost ``__init__`` has run, the detector's
    models are checked against each other (``Detector._check_models``)."""

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self).__init__ is checked_init:  # the outermost constructor only
            self._check_models()

    return checked_init


def _resizes_input(method):
    """Wraps fit / calibrate / score / predict: with ``resize=True`` images of any size and
    colour mode (any input kind of ``detectors.inputs``) are first brought to the size and
    mode the detector's models take, with the policy detector bundles use
    (``detectors.data.ImagePolicy``: shorter side resized with Lanczos, centre crop, grey or
    RGB).  Batches that already have the right shape pass unchanged."""
    if getattr(method, "_resizes_input", False):
        return method
    takes_y = "y" in inspect.signature(method).parameters

    @functools.wraps(method)
    def wrapper(self, x, *args, **kwargs):
        target = self._resize_target() if getattr(self, "resize", False) else None
        if target is not None and not (
            isinstance(x, torch.Tensor) and (x.dim() != 4 or tuple(x.shape[1:]) == target)
        ):
            from ..data import ImagePolicy
            from ..inputs import as_images_with_labels

            where = f"{self.name}.{method.__name__}"
            images, labels = as_images_with_labels(x, where, progress=self.progress)
            x = ImagePolicy(target[1], target[0]).apply(images, progress=self.progress)
            if takes_y and labels is not None and kwargs.get("y") is None:
                kwargs["y"] = labels
        return method(self, x, *args, **kwargs)

    wrapper._accepts_any_input = wrapper._resizes_input = True
    return wrapper


def check_model(model, where: str, attr: str = "model", needs: str = "log_prob"):
    """``model`` if it can serve a detector, else TypeError naming ``where`` and ``attr``:
    ``needs="log_prob"``: an object with a ``log_prob`` method or an ``nn.Module`` whose forward
    returns ``.log_prob`` (invflow models, ``detectors.baselines.PixelCNNpp``);
    ``needs="logits"``: a callable returning logits (a classifier module)."""
    if needs == "log_prob":
        ok = isinstance(model, nn.Module) or callable(getattr(model, "log_prob", None))
    else:
        ok = callable(model) and not isinstance(model, type)
    if not ok:
        kind = "a flow (an nn.Module with log_prob, e.g. invflow.load(path) or detectors.zoo.load(name))"
        if needs != "log_prob":
            kind = "a classifier (an nn.Module returning logits [B, K])"
        hint = "; load it first" if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") else ""
        raise TypeError(f"{where}: {attr} must be {kind}, got {type(model).__name__}{hint}")
    return model


def describe_model(attr: str, model) -> str:
    """``"model (Glow, input [1, 28, 28], grey)"``: how errors name a detector's model; a zoo
    model by its name too (``"model (Glow 'fmnist-glow', input ...)"``, ``detectors.zoo.load``
    sets ``zoo_name``)."""
    kind = type(model).__name__
    zoo_name = getattr(model, "zoo_name", None)
    if isinstance(zoo_name, str):
        kind += f" {zoo_name!r}"
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return f"{attr} ({kind})"
    mode = {1: ", grey", 3: ", RGB"}.get(shape[0], "") if len(shape) == 3 else ""
    return f"{attr} ({kind}, input [{', '.join(map(str, shape))}]{mode})"


class Detector:
    """Base class: subclasses implement ``_score_batch(x) -> [B]`` and optionally ``_fit``.

    ``batch_size`` bounds memory while scoring; ``progress`` shows a tqdm bar; ``resize=True``
    brings images of any size and colour mode to the models' ``input_shape`` (square grey or
    RGB models; ``detectors.data.ImagePolicy``, as detector bundles do) instead of raising.
    Constructors check the models (finite weights, one input shape; ValueError naming them).
    """

    #: the stated score direction (pytorch-ood convention)
    higher_is_more_anomalous = True
    #: what beyond unlabelled in-distribution data the detector uses: "-", "aux data", "labels"
    uses = "-"
    #: whether scoring needs gradients w.r.t. the input
    needs_grad = False

    def __init_subclass__(cls, **kw):
        """fit / calibrate / score / predict of every subclass take every input kind of
        ``detectors.inputs`` (tensors, numpy, lists of PIL images, Datasets, DataLoaders)."""
        super().__init_subclass__(**kw)
        for name in ("fit", "calibrate", "score", "predict"):
            if name in vars(cls):
                setattr(cls, name, _resizes_input(accepts_any_input(vars(cls)[name])))
        if "__init__" in vars(cls):
            cls.__init__ = _checks_models_after(vars(cls)["__init__"])

    #: whether the state ``_fit`` learns leaves the fitting data's scores typical of fresh
    #: in-distribution data (then ``fit`` calibrates on them directly, without cross-fitting)
    calibrate_on_fit_data = False

    def __init__(self, batch_size: int = 256, progress: bool = False, resize: bool = False):
        self.batch_size = check_number(batch_size, "batch_size", type(self).__name__, low=1, integer=True)
        self.progress = progress
        if not isinstance(resize, bool):
            raise TypeError(f"{type(self).__name__}: resize must be True or False, got {resize!r}")
        self.resize = resize
        self.threshold = None
        self.fpr = None

    # -- state -------------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        """The score above which ``predict`` flags an input: a finite float, or None before
        ``fit`` / ``calibrate``.  Setting NaN or +-inf raises ValueError (a NaN threshold
        never flags anything, +inf neither)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        self._threshold = check_number(value, "threshold", self.name, optional=True)

    @property
    def fpr(self) -> float | None:
        """The fraction of in-distribution data the threshold was set to flag, in [0, 1), or None."""
        return self._fpr

    @fpr.setter
    def fpr(self, value) -> None:
        self._fpr = check_number(value, "fpr", self.name, low=0, high=1, high_open=True, optional=True)

    @property
    def is_fitted(self) -> bool:
        """Whether the detector's own state is fitted, so that ``score`` can run.  Detectors
        without a state (the likelihoods of a given model) always are; the threshold is
        separate (``threshold``)."""
        return True

    def _models(self) -> dict[str, nn.Module]:
        """The detector's models by attribute name (the modules among its attributes)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, nn.Module)}

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The per-sample shape every input must have, e.g. (1, 28, 28): the shape the
        detector's models take when it feeds them its inputs directly (no ``transform``);
        None when any shape is taken."""
        if getattr(self, "transform", None) is not None:
            return None
        shapes = [tuple(m.input_shape) for m in self._models().values() if hasattr(m, "input_shape")]
        return shapes[0] if shapes else None

    def _resize_target(self) -> tuple[int, int, int] | None:
        """(C, H, W) that ``resize=True`` brings images to; None when the detector takes no
        fixed image shape."""
        shape = self.input_shape
        return shape if shape is not None and len(shape) == 3 else None

    def _check_models(self) -> None:
        """At construction: the detector's models have finite weights and take the same inputs
        (else ValueError naming them), and ``resize=True`` has a square grey or RGB image
        shape to resize to."""
        for attr, model in self._models().items():
            for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ValueError(
                        f"{self.name}: {describe_model(attr, model)} has NaN or Inf in {pname!r}; every "
                        f"score would be the floor: load or train a model with finite weights"
                    )
        shaped = {k: m for k, m in self._models().items() if hasattr(m, "input_shape")}
        if len({tuple(m.input_shape) for m in shaped.values()}) > 1:
            named = " and ".join(describe_model(k, m) for k, m in shaped.items())
            raise ValueError(
                f"{self.name}: its models take different inputs: {named}; give models trained on "
                f"images of the same size and colour mode"
            )
        if self.resize:
            target = self._resize_target()
            if target is None or target[0] not in (1, 3) or target[1] != target[2]:
                raise ValueError(
                    f"{self.name}: resize=True needs models that take square grey or RGB images "
                    f"[1 or 3, S, S], got input shape {list(self.input_shape or []) or 'any'}; "
                    f"resize the inputs yourself and pass resize=False"
                )

    # -- API -------------------------------------------------------------------------
    @_resizes_input
    @accepts_any_input
    def fit(self, x: torch.Tensor, fpr: float = 0.05) -> Detector:
        """Fits the detector's own state on in-distribution ``x`` (if it has any) and sets the
        threshold so that a fraction ``fpr`` of *fresh* in-distribution data is flagged: a
        detector that fits a state calibrates on out-of-fold scores (``FOLDS``-fold
        cross-fitting: the state fitted without each fold scores that fold), since its own
        training points score as more typical than new data (a KDE's points sit on their own
        kernels: calibrating on them flagged 53% of fresh data at fpr 5%).  Detectors without
        a state (likelihoods of a given model) calibrate on ``x`` itself.  Use ``calibrate``
        to set the threshold on separate held-out data."""
        fpr = self._check_fpr(fpr, "fit")
        self._check_batch(x, "fit")
        self._fit(x)
        if type(self)._fit is Detector._fit or self.calibrate_on_fit_data:
            return self._set_threshold(self._calibration_scores(x), fpr)
        held_out = self._cross_fitted_scores(
            len(x), lambda det, idx: det._fit(x[idx]), lambda det, idx: det._calibration_scores(x[idx])
        )
        return self._set_threshold(held_out, fpr)

    def _cross_fitted_scores(self, n: int, fit_subset, score_subset) -> torch.Tensor:
        """Out-of-fold calibration scores of n samples [N]: for each of ``FOLDS`` seeded folds a
        shallow copy of the detector is fitted on the other folds (``fit_subset(copy, idx)``)
        and scores the fold (``score_subset(copy, idx)``)."""
        if n < 2:
            raise ValueError(
                f"{self.name}.fit: needs at least 2 in-distribution samples to fit and calibrate, got {n}"
            )
        folds = min(FOLDS, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        scores = torch.empty(n, dtype=torch.float64)
        for f in range(folds):
            held = perm[f::folds]
            rest = torch.cat([perm[g::folds] for g in range(folds) if g != f])
            det = copy.copy(self)
            fit_subset(det, rest)
            scores[held] = torch.as_tensor(np.asarray(score_subset(det, held)), dtype=torch.float64)
        return scores

    def _check_fpr(self, fpr, where: str) -> float:
        return check_number(fpr, "fpr", f"{self.name}.{where}", low=0, high=1, high_open=True)

    @_resizes_input
    @accepts_any_input
    def calibrate(self, x: torch.Tensor, fpr: float = 0.05) -> Detector:
        """Sets the threshold so that a fraction ``fpr`` of in-distribution ``x`` scores above it."""
        fpr = self._check_fpr(fpr, "calibrate")
        return self._set_threshold(self._calibration_scores(x), fpr)

    def _set_threshold(self, in_scores: torch.Tensor, fpr: float) -> Detector:
        """Threshold = the (1 - fpr) quantile of in-distribution scores (an observed score)."""
        s = in_scores.numpy()
        if np.isnan(s).any():
            raise ValueError(
                f"{self.name}: {int(np.isnan(s).sum())} of {len(s)} in-distribution scores are NaN; "
                f"no threshold can be set (check the model's weights)"
            )
        t = float(np.quantile(s, 1.0 - fpr, method="higher")) if fpr > 0 else float(s.max())
        if not math.isfinite(t):
            raise ValueError(
                f"{self.name}: the threshold at fpr={fpr:g} would be {t} ({int(np.isinf(s).sum())} of "
                f"{len(s)} in-distribution scores are infinite); check the model and the data"
            )
        self.threshold, self.fpr = t, fpr
        return self

    @_resizes_input
    @accepts_any_input
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly scores, float64 [B] on the CPU; higher = more anomalous."""
        self._check_batch(x, "score")
        parts = []
        n = len(x)
        models = [v for v in vars(self).values() if isinstance(v, nn.Module)]
        for m in models:  # an untrained model's scores are meaningless (its ActNorms say so)
            warn_if_uninitialized(m, f"{self.name}.score", stacklevel=4)
        with (
            eval_mode(*models),
            warnings.catch_warnings(),
            tqdm(total=n, disable=not self.progress, desc=self.name, unit="img", leave=False) as bar,
        ):
            warnings.simplefilter("ignore", UninitializedWarning)  # said once above, not per batch
            for i in range(0, n, self.batch_size):
                xb = x[i : i + self.batch_size]
                if self.needs_grad:
                    s = self._score_batch(xb)
                else:
                    with torch.no_grad():
                        s = self._score_batch(xb)
                parts.append(s.detach().to("cpu", torch.float64).reshape(-1))
                bar.update(len(xb))
        out = torch.cat(parts)
        if out.shape[0] != n:
            raise RuntimeError(f"{self.name}: produced {out.shape[0]} scores for {n} inputs")
        self._check_scores(out)
        return out

    def _check_scores(self, scores: torch.Tensor) -> None:
        """ValueError when finite inputs got NaN scores (a model with NaN weights, a transform
        that gives NaN): a NaN score is never above a threshold, so it would pass silently."""
        bad = torch.isnan(scores)
        if bool(bad.any()):
            raise ValueError(
                f"{self.name}.score: {int(bad.sum())} of {len(scores)} scores are NaN for finite inputs "
                f"(first at index {int(bad.nonzero()[0, 0])}); check the model's weights and the transform"
            )

    @_resizes_input
    @accepts_any_input
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """True where ``x`` is flagged anomalous (score above the calibrated threshold)."""
        if self.threshold is None:
            raise RuntimeError(
                f"{type(self).__name__}.predict: no threshold yet; call fit(x_in) or "
                f"calibrate(x_val_in, fpr=...) first"
            )
        return self.score(x) > self.threshold

    def decision_function(self, x) -> torch.Tensor:
        """PyOD's name for :meth:`score` (higher = more anomalous)."""
        return self.score(x)

    def __call__(self, x) -> torch.Tensor:
        """``det(x)`` is ``det.score(x)``."""
        return self.score(x)

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- hooks -----------------------------------------------------------------------
    def _fit(self, x: torch.Tensor) -> None:
        pass

    def _calibration_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_batch(self, x, where: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}.{where}: expected a torch.Tensor batch, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"{self.name}.{where}: expected a batch [B, ...] (images [B, C, H, W] or "
                f"vectors [B, D]), got shape {list(x.shape)}"
            )
        if len(x) == 0:
            raise ValueError(f"{self.name}.{where}: empty batch")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).flatten(1).any(1)
            raise ValueError(
                f"{self.name}.{where}: {int(bad.sum())} of {len(x)} inputs contain NaN or Inf (first at "
                f"index {int(bad.nonzero()[0, 0])}); drop or repair them before scoring"
            )
        shape = self.input_shape
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            self._wrong_shape(x, shape, where)
        # raw pixel values given as floats (0..255, ToTensor's 0..1) are refused with the rule
        # image models apply; a user's ``transform`` sets its own convention
        if x.is_floating_point() and x.dim() == 4 and getattr(self, "transform", None) is None:
            check_preprocessed(x, f"{self.name}.{where}")

    def _wrong_shape(self, x: torch.Tensor, shape: tuple[int, ...], where: str) -> None:
        """ValueError naming the model whose input shape ``x`` does not have, and how to fix it."""
        models = self._models()
        attr, model = next(((k, m) for k, m in models.items() if hasattr(m, "input_shape")), ("model", None))
        named = describe_model(attr, model) if model is not None else f"inputs [{', '.join(map(str, shape))}]"
        got = list(x.shape[1:])
        if len(shape) == 3 and x.dim() == 4:
            c, h, w = shape
            mode = {1: "grey", 3: "RGB"}.get(c, f"{c}-channel")
            fix = (
                f"pass resize=True to {self.name}(...) to resize them as detector bundles do (shorter "
                f"side to {h}, centre crop, {mode}), or resize them first with "
                f"detectors.data.ImagePolicy({h}, {c}).apply(images)"
                if h == w and c in (1, 3)
                else f"resize them to {h}x{w} with {c} channel(s) first"
            )
            raise ValueError(f"{self.name}.{where}: {named} takes images [{c}, {h}, {w}], got {got}; {fix}")
        raise ValueError(
            f"{self.name}.{where}: {named} takes inputs [B, {', '.join(map(str, shape))}], got "
            f"{list(x.shape)}; give inputs of that shape (or a transform= that maps them to it)"
        )

    def __repr__(self) -> str:
        t = "uncalibrated" if self.threshold is None else f"threshold={self.threshold:.4g} at fpr={self.fpr}"
        return f"{self.name}({t})"
