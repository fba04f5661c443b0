"""Reading and writing a bundle directory (safetensors + JSON, no pickle; every file written
atomically with ``invflow.io.atomic_write``).

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

import json
import os
import platform

import numpy as np
import torch

from invflow.io import atomic_write

from ..data.folders import ImagePolicy
from .catalogue import CATALOGUE, ENSEMBLE, Projection, Spec, build
from .scoring import Bundle

BUNDLE_FILE, STATE_FILE = "bundle.json", "state.safetensors"
FIT_FILE, FEATURES_FILE = "fit.json", "features.safetensors"
FORMAT, VERSION = "detectors-bundle", 1


def versions() -> dict:
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


def write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_tensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    atomic_write(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def read_tensors(path: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}); re-run the fit") from None


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
        read_tensors(os.path.join(path, STATE_FILE))[0]
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
        det = build(name, spec, models, feature_size, progress, entry.get("params"), projection, built)
        restore(det, spec, entry.get("state", {}), tensors, meta_path)
        det.threshold, det.fpr = float(entry["threshold"]), float(entry["fpr"])
        built[name] = det
    dets = {entry["name"]: built[entry["name"]] for entry in meta["detectors"]}
    return Bundle(dets, ImagePolicy.from_json(meta["preprocessing"]), meta, feature_size, path)


def state(det, spec: Spec) -> dict:
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


def restore(det, spec: Spec, state: dict, tensors: dict, where: str) -> None:
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


def check_out(out: str, settings: dict) -> None:
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
