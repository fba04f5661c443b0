"""Detector bundles: everything a fitted set of detectors needs, in one directory
(safetensors + JSON, no pickle), written by ``python -m detectors fit`` / :func:`fit_bundle`
and read by ``detectors.load(DET)`` / ``python -m detectors score``.

    bundle = detectors.load("runs/det")      # read-only: never trains or writes
    bundle.score(images)                     # {detector name: float64 [B]}, higher = more anomalous
    bundle.predict(images)                   # {detector name: bool [B]} at the calibrated thresholds
    bundle["pca"]                            # the fitted detectors.PCA itself
    bundle["png+pca"]                        # a detectors.Ensemble of the bundle's png and pca

``images`` are anything ``detectors.inputs`` takes (tensors, numpy, lists of PIL images of
any sizes, Datasets, DataLoaders) or a path / named set (``detectors.data.load_source``);
they are resized and converted by the bundle's :class:`~detectors.data.ImagePolicy`,
the same at fit and score time.

Layout of ``DET/``:

* ``bundle.json``: format, versions, the command, the preprocessing policy, the model
  configurations, and per detector its class, parameters, threshold, fpr and fitted scalars
  (typicality's entropy; an ensemble's member names and each member's mean and standard
  deviation on the held-out part of TRAIN, JSON floats that read back exactly); written
  last, so its presence means a complete bundle;
* ``state.safetensors``: fitted arrays (the unit-norm EfficientNet-Lite0 features of the fit
  part of TRAIN, from which the scikit-learn state of the feature detectors is refit in
  well under a second on load);
* ``models/flow/`` (and ``models/general/`` for ``diff``): ``invflow.train.Trainer`` run
  directories (checkpoints ``step-*/model.safetensors`` + ``latest``); an interrupted fit
  resumes from them;
* ``fit.json``: the settings of the fit in progress (checked when a fit is re-run);
  ``features.safetensors``: cached features of TRAIN.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
from collections.abc import Mapping

import numpy as np
import torch

from .data.folders import ImagePolicy, Source, describe_skipped, load_source
from .inputs import as_images_with_labels
from .scores import Detector, Ensemble

BUNDLE_FILE, STATE_FILE = "bundle.json", "state.safetensors"
FIT_FILE, FEATURES_FILE = "fit.json", "features.safetensors"
FORMAT, VERSION = "detectors-bundle", 1


@dataclasses.dataclass(frozen=True)
class Spec:
    """A detector the bundle can fit: what it needs ("flow", "flow+general", "features",
    "features+labels", "features-flow", or "ensemble": other catalogue detectors, named in
    ``params["members"]``, that score the bundle's images), its class, its constructor
    parameters, what it uses beyond unlabelled in-distribution data, and its source."""

    needs: str
    cls: str
    params: dict
    uses: str
    source: str


CATALOGUE: dict[str, Spec] = {
    "likelihood": Spec(
        "flow", "Likelihood", {}, "-", "raw -log p(x) (the baseline that fails on simpler OOD data)"
    ),
    "bpd": Spec("flow", "BitsPerDim", {}, "-", "bits per dimension"),
    "last-scale": Spec(
        "flow",
        "LastScale",
        {},
        "-",
        "Schirrmeister et al. 2020, Eq. 3: -c_L(x), the last scale's contribution",
    ),
    "typicality": Spec(
        "flow",
        "Typicality",
        {"batch_size": 1},
        "-",
        "Nalisnick et al. 2019: |-log p(x) - H| (one input per test)",
    ),
    "png": Spec("flow", "InputComplexity", {}, "-", "Serra et al. 2020: model bits - PNG bits"),
    "mass": Spec("flow", "ApproximateMass", {}, "-", "Chali et al. 2023, Eq. 1: ||d log p(x) / dx||"),
    "diff": Spec(
        "flow+general",
        "LikelihoodRatio",
        {},
        "aux data",
        "Schirrmeister et al. 2020, Eq. 1: -(log p_in - log p_general), general = natural photo patches",
    ),
    "mse": Spec(
        "features",
        "MSEToMean",
        {},
        "-",
        "Schmier et al. 2022 baseline: ||f - mean||^2 on EfficientNet features",
    ),
    "knn": Spec("features", "KNN", {"k": 5}, "-", "k-th nearest-neighbour distance on EfficientNet features"),
    "kde": Spec("features", "KDE", {}, "-", "-log Gaussian KDE on EfficientNet features"),
    "pca": Spec(
        "features", "PCA", {"n_components": 0.9}, "-", "PCA reconstruction error on EfficientNet features"
    ),
    "feature-flow": Spec(
        "features-flow",
        "Likelihood",
        {},
        "-",
        "Schmier et al. 2022 'Flow' baseline: -log p of a vector flow on PCA-projected EfficientNet features",
    ),
    "mahalanobis": Spec(
        "features+labels",
        "Mahalanobis",
        {},
        "labels",
        "Lee et al. 2018: distance to the closest class mean on EfficientNet features "
        "(needs class sub-folders)",
    ),
    "png+pca": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["png", "pca"]},
        "-",
        "detectors.Ensemble: the z-scores of png and pca summed, each standardised on the held-out "
        "part of TRAIN; the best worst case of the OOD suite without aux data (82.9 AUROC; 99.7 on "
        "MNIST; docs/RESULTS.md section 6)",
    ),
    "last-scale+pca": Spec(
        "ensemble",
        "Ensemble",
        {"members": ["last-scale", "pca"]},
        "-",
        "detectors.Ensemble: the z-scores of last-scale and pca summed, each standardised on "
        "the held-out part of TRAIN (OOD suite worst case 81.4 AUROC; docs/RESULTS.md section 6)",
    ),
}
FEATURE_NEEDS = ("features", "features+labels", "features-flow")
ENSEMBLE = "ensemble"
FEATURE_FLOW_DIM, FEATURE_NOISE = (
    32,
    1e-2,
)  # PCA dimensions before the vector flow; training noise (Schmier Sec. 5)


def members(name: str) -> list:
    """The catalogue detectors the bundle detector ``name`` combines ([] unless an ensemble)."""
    spec = CATALOGUE[name]
    return list(spec.params["members"]) if spec.needs == ENSEMBLE else []


def with_members(names) -> tuple:
    """``names`` with the members of each ensemble among them added right after it when not
    listed: an ensemble needs its fitted members, and the bundle reports them too (each with
    its own threshold), so a listed ensemble always comes with the detectors it combines."""
    out = []
    for name in names:
        for n in [name] + members(name):
            if n not in out:
                out.append(n)
    return tuple(out)


class Projection:
    """f -> (f - mean) @ components.T / scale: the PCA projection (scikit-learn's
    ``PCA.transform``, whiten=False) of unit-norm features before the feature flow, scaled by
    the first component's standard deviation.  Saved in the bundle with the flow."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: float):
        self.mean, self.components, self.scale = mean.double(), components.double(), float(scale)

    @classmethod
    def fit(cls, f: torch.Tensor, dim: int) -> Projection:
        from sklearn.decomposition import PCA as SkPCA

        pca = SkPCA(n_components=min(dim, f.shape[1], len(f) - 1), svd_solver="full").fit(f.double().numpy())
        return cls(
            torch.from_numpy(pca.mean_),
            torch.from_numpy(pca.components_),
            float(np.sqrt(pca.explained_variance_[0])),
        )

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        return ((f.double() - self.mean) @ self.components.T / self.scale).float()

    def tensors(self) -> dict:
        return {
            "projection.mean": self.mean,
            "projection.components": self.components,
            "projection.scale": torch.tensor([self.scale], dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, t: dict) -> Projection:
        return cls(t["projection.mean"], t["projection.components"], float(t["projection.scale"][0]))


class FeatureVectors(torch.nn.Module):
    """``features(x)``: feature vectors [B, D] as they are, images [B, C, H, W] through
    EfficientNet-Lite0 at ``feature_size`` (unit-norm): lets ``Mahalanobis`` work on the
    bundle's image features."""

    def __init__(self, feature_size: int = 96):
        super().__init__()
        self.feature_size = feature_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            from .imagefeatures import image_features

            return image_features(x, self.feature_size)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# The default set is chosen by the worst case over the OOD suite (detectors.ood_suite;
# docs/RESULTS.md section 6, "The OOD suite: which detectors never collapse"): every single
# detector collapses on some kind of OOD data (PNG complexity 56.3 AUROC on upside-down
# Fashion-MNIST, feature PCA 65.8 and KNN 60.1 on inverted Fashion-MNIST, last scale 13.0 on
# constant images), while the ensemble of PNG complexity and feature PCA keeps its worst case
# at 82.9 (99.7 on MNIST) with no auxiliary data, the best a bundle can do (it trains its flow
# on TRAIN only; the suite's best, Diff-dagger + PCA at 92.4, needs a general-distribution
# model).  Its members come along so that users see each.
DEFAULT_DETECTORS = ("png+pca", "png", "pca")


@dataclasses.dataclass
class FitConfig:
    """Settings of :func:`fit_bundle` (the CLI's ``fit`` options)."""

    detectors: tuple = DEFAULT_DETECTORS
    steps: int = 300  # optimisation steps per flow (a few minutes on 2 CPU cores at 32x32)
    batch_size: int = 32
    lr: float = 1e-3
    levels: int = 2  # Glow scales; the image size must be a multiple of 2**levels
    depth: int = 4  # Glow steps per scale
    hidden: int = 32  # st-net channels (512 in Kingma & Dhariwal: impractical on a CPU)
    size: int | None = None  # image side; default from the data (most common size, capped at max_size)
    max_size: int = 32
    channels: int | None = None  # 1 grey / 3 RGB; default from the data
    holdout: float = 0.2  # share of TRAIN held out to calibrate the thresholds
    fpr: float = 0.05  # share of held-out in-distribution images flagged
    feature_size: int = 96  # EfficientNet-Lite0 input side for the feature detectors
    seed: int = 0
    max_images: int | None = None  # a seeded random subset of TRAIN of this size (default: all)
    progress: bool = True

    def check(self) -> None:
        unknown = [d for d in self.detectors if d not in CATALOGUE]
        if unknown or not self.detectors:
            raise ValueError(f"detectors: unknown {unknown}; choose from {', '.join(CATALOGUE)}")
        for name in ("steps", "batch_size", "levels", "depth", "hidden", "max_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.size is not None and (
            not isinstance(self.size, int) or self.size < 2**self.levels or self.size % 2**self.levels
        ):
            raise ValueError(
                f"size must be a positive multiple of {2**self.levels} (2**levels), got {self.size!r}"
            )
        if self.channels not in (None, 1, 3):
            raise ValueError(
                f"channels must be 1 (grey), 3 (RGB) or None (from the data), got {self.channels!r}"
            )
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout!r}")
        if not 0.0 < self.fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {self.fpr!r}")
        if not np.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 3):
            raise ValueError(f"max_images must be an int >= 3 or None, got {self.max_images!r}")
        if not isinstance(self.feature_size, int) or self.feature_size < 32:
            raise ValueError(f"feature_size must be an int >= 32, got {self.feature_size!r}")


# ------------------------------------------------------------------------- building
def _build(
    name: str,
    spec: Spec,
    models: dict,
    feature_size: int,
    progress: bool,
    params: dict | None = None,
    projection: Projection | None = None,
    built: dict | None = None,
):
    """The unfitted detector ``name``; an ensemble is built from its members in ``built``
    (fitted detectors by name)."""
    from . import scores

    cls = getattr(scores, spec.cls)
    kw = dict(spec.params if params is None else params)
    if spec.needs == ENSEMBLE:
        names = kw.pop("members")
        missing = [m for m in names if m not in (built or {})]
        if missing:
            raise ValueError(f"detector {name!r} combines {names}, but {missing} are not in the bundle")
        return cls({m: built[m] for m in names}, progress=progress, **kw)
    if spec.needs == "features-flow":
        return cls(models["feature-flow"], transform=projection, progress=progress, **kw)
    if spec.needs == "features+labels":
        return cls(FeatureVectors(feature_size), progress=progress, **kw)
    if spec.needs == "features":
        return cls(feature_size=feature_size, progress=progress, **kw)
    if spec.needs == "flow+general":
        return cls(models["flow"], models["general"], progress=progress, **kw)
    return cls(models["flow"], progress=progress, **kw)


def _versions() -> dict:
    import PIL
    import sklearn

    import invflow

    return {
        "invflow": invflow.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def _write_json(path: str, obj) -> None:
    from invflow.checkpoint import atomic_write

    atomic_write(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _write_tensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    from invflow.checkpoint import atomic_write

    atomic_write(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def _read_tensors(path: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}); re-run the fit") from None


# ------------------------------------------------------------------------- the bundle
class Bundle(Mapping):
    """Fitted detectors sharing one preprocessing policy; a Mapping name -> Detector."""

    def __init__(
        self,
        detectors: dict,
        policy: ImagePolicy,
        config: dict | None = None,
        feature_size: int = 96,
        path: str | None = None,
    ):
        self.detectors, self.policy, self.config = dict(detectors), policy, dict(config or {})
        self.feature_size, self.path = feature_size, path

    # Mapping
    def __getitem__(self, name):
        return self.detectors[name]

    def __iter__(self):
        return iter(self.detectors)

    def __len__(self) -> int:
        return len(self.detectors)

    def __repr__(self) -> str:
        dets = ", ".join(f"{n}: {d!r}" for n, d in self.detectors.items())
        return (
            f"Bundle({self.path or ''} {self.policy.size}x{self.policy.size}x{self.policy.channels}; {dets})"
        )

    @property
    def thresholds(self) -> dict:
        return {n: d.threshold for n, d in self.detectors.items()}

    @property
    def uses(self) -> dict:
        return {n: d.uses for n, d in self.detectors.items()}

    def prepare(self, x, progress: bool = False) -> torch.Tensor:
        """Any accepted input (or a path / named set) -> uint8 [N, C, S, S] by the bundle's policy."""
        return prepare(x, self.policy, progress)

    def score(self, x, progress: bool | None = None) -> dict:
        """{name: float64 [N]} anomaly scores (higher = more anomalous) of every detector."""
        images = self.prepare(x, progress=bool(progress))
        feats, out = None, {}
        for name, det in self.detectors.items():
            if progress is not None:
                det.progress = progress
            if self._scores_from_members(det):
                continue  # below, from its members' scores
            if CATALOGUE.get(name, Spec("", "", {}, "", "")).needs in FEATURE_NEEDS:
                if feats is None:
                    from .imagefeatures import image_features

                    feats = image_features(images, self.feature_size, progress=det.progress)
                out[name] = det.score(feats)
            else:
                out[name] = det.score(images)
        for name, det in self.detectors.items():
            if self._scores_from_members(det):
                out[name] = with_member_scores(det, out).score(images)
        return {name: out[name] for name in self.detectors}

    def _scores_from_members(self, det) -> bool:
        """Whether ``det`` is an Ensemble of this bundle's own detectors (each under its name)."""
        return isinstance(det, Ensemble) and all(
            self.detectors.get(m) is d and not isinstance(d, Ensemble) for m, d in det.members.items()
        )

    def decision_function(self, x) -> dict:
        return self.score(x)

    __call__ = score

    def predict(self, x, progress: bool | None = None) -> dict:
        """{name: bool [N]}: True where the score is above the detector's calibrated threshold."""
        return {n: s > self.detectors[n].threshold for n, s in self.score(x, progress).items()}


def read_images(x, progress: bool = False, split: str = "test"):
    """The one way images come in, for fit and score: (uint8 images, labels or None, name,
    skipped files).  A path / named set is read with ``detectors.data.load_source`` (named sets
    from ``split``), a ``Source`` as it is, every other kind with
    ``detectors.inputs.as_images_with_labels`` (preprocessed floats mapped back to uint8 once).
    Images are a uint8 batch [N, C, H, W] or a list of PIL images / uint8 [C, H, W] (any sizes)."""
    if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
        x = load_source(x, progress=progress, split=split)
    if isinstance(x, Source):
        return x.images, x.labels, x.name, x.skipped
    images, labels = as_images_with_labels(x, "images", progress)
    return images, labels, type(x).__name__, []


def prepare(x, policy: ImagePolicy, progress: bool = False) -> torch.Tensor:
    """``x`` -> uint8 [N, C, S, S] by ``policy``: :func:`read_images`, then ``policy.apply``."""
    return policy.apply(read_images(x, progress)[0], progress)


def load(path, progress: bool = False) -> Bundle:
    """The detector bundle in directory ``path`` (written by ``python -m detectors fit``),
    read-only: models in eval mode, thresholds and fitted state restored, nothing trained or
    written.  ``FileNotFoundError`` / ``ValueError`` say what is missing or malformed."""
    from invflow.checkpoint import load as load_model

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: no such detector bundle (a directory written by "
            f"python -m detectors fit --data TRAIN --out {path})"
        )
    meta_path = os.path.join(path, BUNDLE_FILE)
    if not os.path.isfile(meta_path):
        hint = (
            "the fit did not finish: re-run the same fit command to resume"
            if os.path.isfile(os.path.join(path, FIT_FILE))
            else f"fit one with python -m detectors fit --data TRAIN --out {path}"
        )
        raise ValueError(f"{path} is not a detector bundle (no {BUNDLE_FILE}); {hint}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: not a {FORMAT} version {VERSION} file")
    models = {role: load_model(os.path.join(path, rel)) for role, rel in meta.get("models", {}).items()}
    tensors = (
        _read_tensors(os.path.join(path, STATE_FILE))[0]
        if os.path.isfile(os.path.join(path, STATE_FILE))
        else {}
    )
    feature_size = int(meta.get("feature_size", 96))
    built = {}
    for entry in meta["detectors"]:
        spec = CATALOGUE.get(entry["name"])
        if spec is None or spec.cls != entry["class"]:
            raise ValueError(f"{meta_path}: unknown detector {entry['name']!r} ({entry.get('class')})")
    for entry in sorted(
        meta["detectors"], key=lambda e: CATALOGUE[e["name"]].needs == ENSEMBLE
    ):  # members first
        name = entry["name"]
        spec = CATALOGUE[name]
        if spec.needs == ENSEMBLE:
            missing = [m for m in entry.get("params", {}).get("members", []) if m not in built]
            if missing or not entry.get("params", {}).get("members"):
                raise ValueError(
                    f"{meta_path}: ensemble {name!r} needs its members {missing or '(none listed)'} "
                    "in the bundle; re-run the fit"
                )
        projection = None
        if spec.needs == "features-flow":
            if "projection.mean" not in tensors:
                raise ValueError(
                    f"{meta_path}: {name} needs its PCA projection in {STATE_FILE}, which lacks it"
                )
            projection = Projection.from_tensors(tensors)
        det = _build(name, spec, models, feature_size, progress, entry.get("params"), projection, built)
        _restore(det, spec, entry.get("state", {}), tensors, meta_path)
        det.threshold, det.fpr = float(entry["threshold"]), float(entry["fpr"])
        built[name] = det
    dets = {entry["name"]: built[entry["name"]] for entry in meta["detectors"]}
    return Bundle(dets, ImagePolicy.from_json(meta["preprocessing"]), meta, feature_size, path)


class _KnownScores(Detector):
    """An ensemble member whose scores on the batch at hand are already computed."""

    def __init__(self, name: str, scores: torch.Tensor):
        super().__init__()
        self.member, self.scores = name, scores

    def score(self, x):
        if len(x) != len(self.scores):
            raise RuntimeError(f"{self.member}: {len(self.scores)} known scores for a batch of {len(x)}")
        return self.scores


def with_member_scores(ens: Ensemble, scores: dict) -> Ensemble:
    """A copy of ``ens`` whose members return their known ``scores[name]`` (float64 [N]) for
    the N inputs at hand, so that ``Ensemble``'s own standardisation and sum (its ``fit`` /
    ``score``) run without scoring the members again (the bundle scores each detector once)."""
    known = copy.copy(ens)
    known.members = {name: _KnownScores(name, scores[name]) for name in ens.members}
    return known


def _state(det, spec: Spec) -> dict:
    """The JSON part of a fitted detector's state."""
    if spec.needs == ENSEMBLE:
        return {"standardisation": {name: list(det._stats[name]) for name in det.members}}
    if spec.cls == "Typicality":
        return {"entropy": det.entropy}
    if spec.needs == "features":
        return {"features": "features.fit", "feature_size": det.feature_size}
    if spec.needs == "features+labels":
        return {"features": "features.fit", "labels": "labels.fit"}
    if spec.needs == "features-flow":
        return {"projection": "projection.*"}
    return {}


def _restore(det, spec: Spec, state: dict, tensors: dict, where: str) -> None:
    if spec.needs == ENSEMBLE:
        stats = state.get("standardisation", {})
        if set(stats) != set(det.members) or not all(len(v) == 2 and v[1] > 0 for v in stats.values()):
            raise ValueError(
                f"{where}: ensemble {list(det.members)} needs a [mean, std > 0] per member in its "
                f"state, got {stats}; re-run the fit"
            )
        det._stats = {name: (float(stats[name][0]), float(stats[name][1])) for name in det.members}
    elif spec.cls == "Typicality":
        det.entropy = float(state["entropy"])
    elif spec.needs in ("features", "features+labels"):
        keys = [state.get("features", "features.fit")] + (
            [state.get("labels", "labels.fit")] if spec.needs == "features+labels" else []
        )
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise ValueError(
                f"{where}: detector {spec.cls} needs {missing} in {STATE_FILE}, which lacks them"
            )
        if spec.needs == "features":
            det._fit_features(tensors[keys[0]].double().numpy())
            det._fitted = True
        else:
            det._fit_state(tensors[keys[0]].double().numpy(), tensors[keys[1]].numpy())


# ------------------------------------------------------------------------- fitting
def _split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, calibration indices): a seeded permutation, ``holdout`` of it held out."""
    n_cal = max(1, int(round(holdout * n)))
    if n - n_cal < 2:
        raise ValueError(
            f"{n} images: too few to fit and hold out {holdout:.0%} for calibration "
            "(need at least 3; 100+ recommended)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_cal:].sort().values, perm[:n_cal].sort().values


def _glow(policy: ImagePolicy, cfg: FitConfig):
    import invflow

    return invflow.Glow(policy.channels, policy.size, levels=cfg.levels, steps=cfg.depth, hidden=cfg.hidden)


def _train_flow(
    run_dir: str, images: torch.Tensor, policy: ImagePolicy, cfg: FitConfig, say
) -> torch.nn.Module:
    """Trains (or resumes, or reuses) a Glow in the Trainer run directory ``run_dir``; returns it
    read back from its latest checkpoint, in eval mode."""
    import invflow
    from invflow.train import Trainer

    torch.manual_seed(cfg.seed)
    model = _glow(policy, cfg)
    resume = os.path.isfile(os.path.join(run_dir, "latest"))
    trainer = Trainer(
        model,
        images,
        out_dir=run_dir,
        steps=cfg.steps,
        batch_size=min(cfg.batch_size, len(images)),
        lr=cfg.lr,
        warmup=max(1, min(100, cfg.steps // 5)),
        seed=cfg.seed,
        checkpoint_every=max(10, cfg.steps // 10),
        progress=cfg.progress,
        log_every=10,
    )
    if resume and trainer.load_latest() and trainer.step >= cfg.steps:
        say(f"{run_dir}: reusing the trained model (step {trainer.step})")
    else:
        say(
            f"training a Glow ({sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{policy.channels}x{policy.size}x{policy.size}) on {len(images)} images for {cfg.steps} steps"
            + (f", resuming at step {trainer.step}" if resume else "")
        )
        trainer.step = 0  # fit(resume=True) reloads the checkpoint itself
        trainer.fit(resume=resume)
    return invflow.checkpoint.load(run_dir)


def _train_vector_flow(run_dir: str, z: torch.Tensor, cfg: FitConfig, say) -> torch.nn.Module:
    """A ``VectorFlow`` on projected features (Schmier et al. 2022's "Flow"), trained or resumed
    in the run directory ``run_dir`` like the image flow."""
    import invflow
    from invflow.train import Trainer

    torch.manual_seed(cfg.seed)
    model = invflow.VectorFlow(z.shape[1], blocks=4, hidden=64)
    resume = os.path.isfile(os.path.join(run_dir, "latest"))
    trainer = Trainer(
        model,
        z,
        out_dir=run_dir,
        steps=cfg.steps,
        batch_size=min(cfg.batch_size, len(z)),
        lr=cfg.lr,
        warmup=max(1, min(100, cfg.steps // 5)),
        seed=cfg.seed,
        checkpoint_every=max(10, cfg.steps // 10),
        progress=cfg.progress,
        log_every=10,
    )
    if resume and trainer.load_latest() and trainer.step >= cfg.steps:
        say(f"{run_dir}: reusing the trained feature flow (step {trainer.step})")
    else:
        say(f"training a feature flow ({z.shape[1]} PCA dimensions) for {cfg.steps} steps")
        trainer.step = 0
        trainer.fit(resume=resume)
    return invflow.checkpoint.load(run_dir)


def _cached_features(out: str, images: torch.Tensor, cfg: FitConfig) -> torch.Tensor:
    """EfficientNet-Lite0 features of ``images``, cached in ``out/features.safetensors``
    (keyed by the images' digest and the input size) so a re-run fit skips the extraction."""
    import hashlib

    from .imagefeatures import image_features

    digest = hashlib.sha1(images.numpy().tobytes()).hexdigest()
    path = os.path.join(out, FEATURES_FILE)
    if os.path.isfile(path):
        tensors, meta = _read_tensors(path)
        if meta.get("digest") == digest and meta.get("feature_size") == str(cfg.feature_size):
            return tensors["features"]
    feats = image_features(images, cfg.feature_size, progress=cfg.progress)
    _write_tensors(path, {"features": feats}, {"digest": digest, "feature_size": str(cfg.feature_size)})
    return feats


def _check_out(out: str, settings: dict) -> None:
    """Refuses an output directory that holds something else or a fit with other settings."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file; expected a directory for the detector bundle")
    fit_path = os.path.join(out, FIT_FILE)
    if not os.path.isfile(fit_path):
        if os.listdir(out):
            raise ValueError(f"--out {out} exists and is not a detector bundle; choose a new directory")
        return
    with open(fit_path) as f:
        old = json.load(f)
    changed = [
        k
        for k in ("data", "n_images", "preprocessing", "model", "holdout", "seed")
        if old.get(k) != settings.get(k)
    ]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)} -> {settings.get(k)}" for k in changed)
        raise ValueError(
            f"--out {out} holds a fit with other settings ({diffs}); resume with the same "
            "settings or choose a new directory"
        )


def fit_bundle(
    data, out: str, config: FitConfig | None = None, command: str | None = None, say=print
) -> Bundle:
    """Fits the detectors of ``config`` on ``data`` (a path / named set, a ``Source``, or any
    input kind with images) and writes the bundle directory ``out``; see the module docstring.

    TRAIN is split (seeded) into a fit part and a held-out part of ``config.holdout``: flows
    train and fitted state is estimated on the fit part, every threshold is set on the
    held-out part so that a fraction ``config.fpr`` of it is flagged.  An ensemble
    (``detectors.Ensemble``, e.g. ``last-scale+pca``) standardises its members' scores on
    that held-out part too (its state is a monotone map of each member's score, so the same
    images may set its threshold: ``Ensemble.calibrate_on_fit_data``); its members are
    fitted and reported as well, added after it when not listed (``with_members``).
    Re-running resumes: trained flows and extracted features are reused.
    """
    cfg = config or FitConfig()
    cfg.check()
    names = with_members(cfg.detectors)
    for ens in (d for d in cfg.detectors if members(d)):
        added = [m for m in members(ens) if m not in cfg.detectors]
        if added:
            say(f"{ens} combines {', '.join(members(ens))}: also fitting and reporting {', '.join(added)}")
    out = os.fspath(out)
    raw, labels, name, skipped = read_images(data, cfg.progress, split="train")
    if skipped:
        say(describe_skipped(skipped))
    images_for_policy = raw
    if cfg.max_images is not None and len(raw) > cfg.max_images:
        keep = torch.randperm(len(raw), generator=torch.Generator().manual_seed(cfg.seed + 1))[
            : cfg.max_images
        ]
        keep = keep.sort().values
        raw = [raw[int(i)] for i in keep] if isinstance(raw, (list, tuple)) else raw[keep]
        labels = labels[keep] if labels is not None else None
        images_for_policy = raw
        say(f"{name}: using a seeded random subset of {cfg.max_images} images")
    policy = ImagePolicy.from_images(
        images_for_policy, cfg.size, cfg.channels, multiple=2**cfg.levels, max_size=cfg.max_size
    )
    say(
        f"{name}: {len(raw)} images -> {policy.channels}x{policy.size}x{policy.size} "
        f"({'grey' if policy.channels == 1 else 'RGB'}; resize the shorter side and centre-crop)"
    )
    model_cfg = {"class": "Glow", "levels": cfg.levels, "depth": cfg.depth, "hidden": cfg.hidden}
    settings = {
        "data": str(name),
        "n_images": len(raw),
        "max_images": cfg.max_images,
        "preprocessing": policy.to_json(),
        "model": model_cfg,
        "holdout": cfg.holdout,
        "seed": cfg.seed,
    }
    _check_out(out, settings)
    os.makedirs(out, exist_ok=True)
    _write_json(
        os.path.join(out, FIT_FILE), {**settings, "command": command, "config": dataclasses.asdict(cfg)}
    )
    x = policy.apply(raw, cfg.progress)
    fit_idx, cal_idx = _split(len(x), cfg.holdout, cfg.seed)
    x_fit, x_cal = x[fit_idx], x[cal_idx]
    say(f"fit part: {len(x_fit)} images; calibration part (held out): {len(x_cal)} images")

    needs = {CATALOGUE[d].needs for d in names}
    if ENSEMBLE in needs and len(x_cal) < 2:
        raise ValueError(
            f"{[d for d in names if members(d)]} standardise their members on the held-out part of "
            f"TRAIN, which has {len(x_cal)} image(s); use more images or a larger --holdout"
        )
    if "features+labels" in needs and labels is None:
        supervised = [d for d in names if CATALOGUE[d].needs == "features+labels"]
        raise ValueError(
            f"detectors {supervised} need class labels: put TRAIN's images in one sub-folder "
            "per class (or pass a Dataset of (image, label) items)"
        )
    models, model_paths = {}, {}
    if needs & {"flow", "flow+general"}:
        model_paths["flow"] = os.path.join("models", "flow")
        models["flow"] = _train_flow(os.path.join(out, model_paths["flow"]), x_fit, policy, cfg, say)
    if "flow+general" in needs:
        from .data.named import natural_patches

        general = natural_patches(
            max(1000, len(x_fit)), size=policy.size, channels=policy.channels, seed=cfg.seed, split="train"
        )
        model_paths["general"] = os.path.join("models", "general")
        say("general-distribution model: natural photo patches (scikit-image, scikit-learn, matplotlib)")
        models["general"] = _train_flow(os.path.join(out, model_paths["general"]), general, policy, cfg, say)
    tensors, entries, dets = {}, [], {}
    f_fit = f_cal = None
    if needs & set(FEATURE_NEEDS):
        say(f"EfficientNet-Lite0 features at {cfg.feature_size}x{cfg.feature_size}")
        feats = _cached_features(out, x, cfg)
        f_fit, f_cal = feats[fit_idx], feats[cal_idx]
        tensors["features.fit"] = f_fit.float()
    if "features+labels" in needs:
        tensors["labels.fit"] = labels[fit_idx].long()
    projection = None
    if "features-flow" in needs:
        projection = Projection.fit(f_fit, FEATURE_FLOW_DIM)
        tensors.update(projection.tensors())
        g = torch.Generator().manual_seed(cfg.seed + 2)
        z_fit = projection(f_fit + FEATURE_NOISE * torch.randn(f_fit.shape, generator=g))
        model_paths["feature-flow"] = os.path.join("models", "feature-flow")
        models["feature-flow"] = _train_vector_flow(
            os.path.join(out, model_paths["feature-flow"]), z_fit, cfg, say
        )
    member_cal = {}  # ensemble members' scores on the held-out part
    for dname in sorted(names, key=lambda d: CATALOGUE[d].needs == ENSEMBLE):  # members before ensembles
        spec = CATALOGUE[dname]
        params = dict(spec.params)
        if spec.cls == "KNN":
            params["k"] = max(1, min(params["k"], len(x_fit) - 1))
        det = _build(dname, spec, models, cfg.feature_size, cfg.progress, params, projection, dets)
        fit_in, cal_in = (f_fit, f_cal) if spec.needs in FEATURE_NEEDS else (x_fit, x_cal)
        if (
            spec.needs == ENSEMBLE
        ):  # Ensemble.fit: mean / std per member and the threshold, on the held-out part
            known = with_member_scores(det, member_cal).fit(x_cal, cfg.fpr)
            det._stats, det.threshold, det.fpr = known._stats, known.threshold, known.fpr
        else:
            if spec.needs == "features+labels":  # the detector's own state, from the fit part only
                det._fit_state(f_fit.double().numpy(), labels[fit_idx].numpy())
            else:
                det._fit(fit_in)
            det.calibrate(cal_in, cfg.fpr)  # the threshold, from the held-out part
            if any(dname in members(d) for d in names):
                member_cal[dname] = det.score(cal_in)
        dets[dname] = det
        entries.append(
            {
                "name": dname,
                "class": spec.cls,
                "params": params,
                "uses": det.uses,
                "source": spec.source,
                "threshold": det.threshold,
                "fpr": det.fpr,
                "state": _state(det, spec),
            }
        )
        say(f"  {dname:<11} threshold {det.threshold:.5g} (flags {cfg.fpr:.0%} of held-out TRAIN)")
    if len(x_cal) * cfg.fpr < 5:
        say(
            f"warning: the thresholds rest on {len(x_cal)} held-out image(s), about {len(x_cal) * cfg.fpr:.1f} "
            f"above each threshold: the share flagged on new in-distribution images can be far from "
            f"{cfg.fpr:.0%}; fit on more images (or a larger --holdout) for a calibrated threshold"
        )
    dets = {d: dets[d] for d in names}
    entries.sort(key=lambda e: names.index(e["name"]))
    if tensors:
        _write_tensors(os.path.join(out, STATE_FILE), tensors, {"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "versions": _versions(),
        "preprocessing": policy.to_json(),
        "models": model_paths,
        "model": model_cfg,
        "feature_size": cfg.feature_size,
        "data": {
            "train": str(name),
            "n_images": len(x),
            "n_fit": len(x_fit),
            "n_calibration": len(x_cal),
            "holdout": cfg.holdout,
            "seed": cfg.seed,
            "skipped": [p for p, _ in skipped],
        },
        "fit": dataclasses.asdict(cfg),
        "detectors": entries,
    }
    meta["fit"]["detectors"] = list(cfg.detectors)
    _write_json(os.path.join(out, BUNDLE_FILE), meta)
    return Bundle(dets, policy, meta, cfg.feature_size, out)
