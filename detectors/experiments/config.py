"""One run configuration for the demo and the papers' experiments.

:class:`RunConfig` holds every knob of both runs: the shared ones (models, optimiser, data
sizes, features, baselines) and the stages each run has of its own.  ``DemoConfig`` and
``ReproduceConfig`` are RunConfig with the defaults of ``python -m detectors demo`` and
``python -m detectors reproduce``; each reports (:meth:`RunConfig.settings`, the
``config`` of ``results.json`` and ``report.md``) only the fields its run uses.

    cfg = DemoConfig(seed=1, n_eval=500)
    cfg.settings()          # {"seed": 1, "flow_steps": 4, ...}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from ..limits import (
    MAX_BATCH,
    MAX_DEPTH,
    MAX_FEATURE_SIZE,
    MAX_HIDDEN,
    MAX_IMAGES,
    MAX_STEPS,
    MIN_FEATURE_SIZE,
)

#: the fields of the demo, in the order its report lists them
DEMO_FIELDS = (
    "seed",
    "flow_steps",
    "hidden",
    "batch_size",
    "lr",
    "warmup",
    "translate",
    "steps_general",
    "steps_in",
    "steps_outlier",
    "steps_dagger",
    "lr_finetune",
    "n_general",
    "n_eval",
    "features",
    "feature_size",
    "n_feature_train",
    "n_ensemble_val",
    "feature_dim",
    "feature_flow_steps",
    "feature_noise",
    "baselines",
    "pcnn_filters",
    "pcnn_steps",
    "clf_width",
    "clf_steps",
)

#: the fields of the papers' experiments, in the order their reports list them
REPRODUCE_FIELDS = (
    "seed",
    "flow_steps",
    "hidden",
    "batch_size",
    "lr",
    "warmup",
    "translate",
    "steps",
    "steps_finetune",
    "lr_finetune",
    "approx_mass_alpha",
    "steps_arch",
    "n_general",
    "n_eval",
    "pcnn_filters",
    "pcnn_steps",
    "pcnn_batch",
    "clf_width",
    "clf_steps",
    "feature_size",
    "n_feature_train",
    "n_feature_test",
    "feature_dim",
    "feature_flow_steps",
    "feature_noise",
    "ovr_train_per_class",
    "ovr_flow_steps",
)


@dataclass
class RunConfig:
    """Every setting of a demo or experiment run (steps are optimiser steps, sizes are images)."""

    seed: int = 0
    # Glow on [1, 28, 28]: 2 scales (14x14, 7x7), `flow_steps` steps each, st-net width `hidden`
    flow_steps: int = 4
    hidden: int = 64
    batch_size: int = 64
    lr: float = 5e-3  # Schirrmeister et al. 2020 uses 5e-4 for 250 epochs; a short budget needs more
    warmup: int = 50
    translate: int = 1  # Schirrmeister et al. 2020 S4.1: translations for Fashion-MNIST
    # the demo's models
    steps_general: int = 600
    steps_in: int = 600
    steps_outlier: int = 300  # finetuning the in-distribution Glow with the outlier loss
    steps_dagger: int = 300  # finetuning the general Glow with Fashion-MNIST as outliers
    # the experiments' models
    steps: int = 600  # in-distribution and general models
    steps_finetune: int = 300  # every finetuned variant (no loss, margin, outlier, dagger, approx. mass)
    approx_mass_alpha: float = 2.0  # Chali et al. 2023 Eq. 2
    steps_arch: int = 400  # architecture ablations
    lr_finetune: float = 2e-3
    n_general: int = 30000  # natural-photo patches (broadened, see detectors.data)
    n_eval: int = 1000  # Fashion-MNIST test images and MNIST digits scored (balanced)
    # features (Schmier et al. 2022)
    features: bool = True
    feature_size: int = 96  # EfficientNet input size (224 in ImageNet training; 96 for speed)
    n_feature_train: int = 1000
    n_feature_test: int = 10000  # Fashion-MNIST test images (and MNIST digits, at most 5000) with features
    n_ensemble_val: int = 300  # Fashion-MNIST test images (not scored) that standardise the ensembles
    feature_dim: int = 64  # PCA projection of the normalised features before the flows
    feature_flow_steps: int = 200
    feature_noise: float = 1e-2
    # PixelCNN++ and classifier detectors (Schirrmeister et al. 2020 Tab. 1/4, Chali et al. 2023 Tab. 2)
    baselines: bool = True
    pcnn_filters: int = 16  # Schirrmeister et al. 2020 S1.2: 120 filters; shrunk for the CPU
    pcnn_steps: int = 100
    pcnn_batch: int = 32
    clf_width: int = 16
    clf_steps: int = 300  # ResNet classifier; outlier exposure finetunes it for steps_finetune
    # one-vs-rest (Schmier et al. 2022 Tab. 1)
    ovr_train_per_class: int = 900
    ovr_flow_steps: int = 300  # per class: the Flow, then as many contrastive-flow steps

    #: the fields :meth:`settings` reports (all of them here)
    REPORTED: ClassVar[tuple[str, ...]] = ()

    def settings(self) -> dict:
        """{field: value} of the fields this kind of run uses (``REPORTED``; every field for a
        plain RunConfig), in their report order."""
        values = dataclasses.asdict(self)
        return {k: values[k] for k in self.REPORTED} if self.REPORTED else values

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """{field: int / float / bool / str} of the settings ``--set KEY=VALUE`` may change."""
        kinds = {"int": int, "float": float, "bool": bool}
        names = cls.REPORTED or tuple(f.name for f in dataclasses.fields(cls))
        types = {f.name: kinds.get(str(f.type), str) for f in dataclasses.fields(cls)}
        return {k: types[k] for k in names}


_STEPS = (1, MAX_STEPS, "MAX_STEPS")
_IMAGES = (1, MAX_IMAGES, "MAX_IMAGES")
_RATE = (0.0, 1.0, None)  # learning rates: in (0, 1] (OPEN_LOW)

#: the range of every numeric setting, [low, high] (those of OPEN_LOW: (low, high]), with the name of
#: the limit (``detectors.limits``) that sets ``high``: past it a run asks for more memory or
#: time than a workstation has, as the command line's flags refuse
SETTING_RANGES = {
    "flow_steps": (1, MAX_DEPTH, "MAX_DEPTH"),
    "hidden": (1, MAX_HIDDEN, "MAX_HIDDEN"),
    "batch_size": (1, MAX_BATCH, "MAX_BATCH"),
    "lr": _RATE,
    "warmup": (0, MAX_STEPS, "MAX_STEPS"),
    "translate": (0, 27, "the 28-pixel side of the images (reflection padding)"),
    "steps_general": _STEPS,
    "steps_in": _STEPS,
    "steps_outlier": _STEPS,
    "steps_dagger": _STEPS,
    "steps": _STEPS,
    "steps_finetune": _STEPS,
    "approx_mass_alpha": (0.0, 1e6, None),
    "steps_arch": _STEPS,
    "lr_finetune": _RATE,
    "n_general": _IMAGES,
    "n_eval": _IMAGES,
    "feature_size": (MIN_FEATURE_SIZE, MAX_FEATURE_SIZE, "MAX_FEATURE_SIZE"),
    "n_feature_train": _IMAGES,
    "n_feature_test": _IMAGES,
    "n_ensemble_val": _IMAGES,
    "feature_dim": (1, 1280, "the 1280 EfficientNet-Lite0 features"),
    "feature_flow_steps": _STEPS,
    "feature_noise": (0.0, 1.0, None),
    "pcnn_filters": (1, MAX_HIDDEN, "MAX_HIDDEN"),
    "pcnn_steps": _STEPS,
    "pcnn_batch": (1, MAX_BATCH, "MAX_BATCH"),
    "clf_width": (1, MAX_HIDDEN, "MAX_HIDDEN"),
    "clf_steps": _STEPS,
    "ovr_train_per_class": _IMAGES,
    "ovr_flow_steps": _STEPS,
}
#: the settings whose lowest value is excluded (a learning rate of 0 trains nothing)
OPEN_LOW = frozenset({"lr", "lr_finetune"})


def parse_setting(key: str, text: str, where: str):
    """The value of the RunConfig setting ``key`` written as ``text`` (``--set KEY=VALUE``):
    an int, a finite float or a bool (true / false, 1 / 0, yes / no) in the range of
    :data:`SETTING_RANGES` (past the top, the error names the limit).  ValueError naming
    ``where`` otherwise."""
    kind = RunConfig.field_types()[key]
    if kind is bool:
        word = text.strip().lower()
        if word in ("true", "1", "yes", "false", "0", "no"):
            return word in ("true", "1", "yes")
        raise ValueError(f"{where}: {key} takes true or false, got {text!r}")
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(
            f"{where}: {key} takes {'an int' if kind is int else 'a ' + kind.__name__}"
        ) from None
    if kind is not float and kind is not int:
        return value
    low, high, limit = SETTING_RANGES[key]
    open_low = key in OPEN_LOW
    if not math.isfinite(value) or value < low or (open_low and value <= low) or value > high:
        interval = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
        named = f" ({high:g} is the limit {limit})" if limit and math.isfinite(value) and value > high else ""
        raise ValueError(f"{where}: {key} must be in {interval}{named}, got {text}")
    return value


@dataclass
class DemoConfig(RunConfig):
    """RunConfig with the defaults of ``python -m detectors demo`` (those of RunConfig)."""

    REPORTED: ClassVar[tuple[str, ...]] = DEMO_FIELDS


@dataclass
class ReproduceConfig(RunConfig):
    """RunConfig with the defaults of ``python -m detectors reproduce``: more images scored and
    with features, longer baselines."""

    n_eval: int = 5000
    feature_size: int = 128
    n_feature_train: int = 10000
    feature_flow_steps: int = 300
    pcnn_steps: int = 200
    clf_steps: int = 600

    REPORTED: ClassVar[tuple[str, ...]] = REPRODUCE_FIELDS


__all__ = [
    "RunConfig",
    "DemoConfig",
    "ReproduceConfig",
    "DEMO_FIELDS",
    "REPRODUCE_FIELDS",
    "SETTING_RANGES",
    "parse_setting",
]
