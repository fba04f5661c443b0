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
import math
import os
import platform
import stat

import numpy as np
import torch

from invflow.io import atomic_write

from ..data.folders import ImagePolicy
from ..limits import MAX_FEATURE_SIZE, MIN_FEATURE_SIZE
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


#: the largest ``bundle.json`` / ``fit.json`` read (bytes); a fitted bundle's is a few KB
MAX_JSON_BYTES = 64 * 2**20
#: the largest ``latest`` file of a model's run directory read (bytes): it names one checkpoint
MAX_LATEST_BYTES = 4096
#: the model roles a bundle's ``models`` may name, and the role each detector kind needs
MODEL_ROLES = {
    "flow": ("flow",),
    "flow+general": ("flow", "general"),
    "flow+dagger": ("flow", "dagger"),
    "features-flow": ("feature-flow",),
}


def inside(bundle: str, rel, field: str, kind: str = "file") -> str:
    """The real path of ``rel`` (a path relative to the bundle directory ``bundle``, as
    ``field`` of ``bundle.json`` gives it), after resolving every symbolic link.

    A bundle reads only files inside itself: ``ValueError`` (naming ``field``) when ``rel``
    is not a non-empty relative path, or resolves outside ``bundle`` (an absolute path,
    ``..``, a link to another bundle's model), or when it is not a regular file (``kind``
    ``"file"``), a directory (``"dir"``) or either (``"any"``): a named pipe or device is
    refused before it is opened, so it cannot hang the read.  ``FileNotFoundError`` when it
    does not exist."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ValueError(f"{field}: expected a non-empty relative path inside the bundle, got {rel!r}")
    if os.path.isabs(rel):
        raise ValueError(
            f"{field}: {rel!r} is an absolute path; a bundle reads only files inside itself "
            "(re-run the fit to write a complete bundle)"
        )
    root = os.path.realpath(bundle)
    real = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, real]) != root:
        raise ValueError(
            f"{field}: {rel!r} resolves to {real}, outside the bundle {root}; a bundle reads only "
            "files inside itself (re-run the fit to write a complete bundle)"
        )
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{field}: {rel!r} does not exist in the bundle {bundle}; re-run the fit"
        ) from None
    ok = {
        "file": stat.S_ISREG(mode),
        "dir": stat.S_ISDIR(mode),
        "any": stat.S_ISREG(mode) or stat.S_ISDIR(mode),
    }[kind]
    if not ok:
        expected = {"file": "a regular file", "dir": "a directory", "any": "a regular file or a directory"}
        raise ValueError(f"{field}: {rel!r} in the bundle {bundle} is not {expected[kind]}; re-run the fit")
    return real


def read_json(path: str, what: str) -> dict:
    """The JSON object in the regular file ``path`` (at most :data:`MAX_JSON_BYTES`);
    ``ValueError`` naming ``path`` for anything else (not a regular file, too large, not
    UTF-8, not JSON, nested too deeply, not an object).  ``what`` names the file's role."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: {what} is not a regular file")
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ValueError(
            f"{path}: {what} is {os.path.getsize(path):,} bytes, over the limit of "
            f"{MAX_JSON_BYTES:,} (MAX_JSON_BYTES); not a file the fit wrote"
        )
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except RecursionError:
        raise ValueError(f"{path}: {what} is nested too deeply to be one the fit wrote") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: {what} is not valid UTF-8 JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got a JSON {_json_name(type(obj))}")
    return obj


def _number(value, field: str, where: str, low=None, high=None, open_interval=False) -> float:
    """``value`` as a finite float (JSON numbers only, not booleans), within the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {field} must be a number, got {value!r}; re-run the fit")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise ValueError(f"{where}: {field} must be finite, got {value!r}; re-run the fit")
    below = low is not None and (v <= low if open_interval else v < low)
    above = high is not None and (v >= high if open_interval else v > high)
    if below or above:
        lo, hi = ("(", ")") if open_interval else ("[", "]")
        raise ValueError(f"{where}: {field} must be in {lo}{low}, {high}{hi}, got {value!r}; re-run the fit")
    return v


def _integer(value, field: str, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where}: {field} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _json_name(t: type) -> str:
    """What JSON calls the Python type ``t`` that json.load gives."""
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(t, "null" if t is type(None) else t.__name__)


def _of_type(meta: dict, key: str, types, where: str, default=None):
    value = meta.get(key, default)
    if not isinstance(value, types):
        names = " or ".join(_json_name(t) for t in (types if isinstance(types, tuple) else (types,)))
        raise ValueError(f"{where}: field {key!r} must be a JSON {names}, got {value!r}; re-run the fit")
    return value


def check_meta(meta: dict, where: str) -> None:
    """Checks the shape of a ``bundle.json`` object (``where`` names the file): format and
    version, the type of every field a load reads, and per detector a known name and class,
    the catalogue's parameters, a finite ``threshold`` and an ``fpr`` in (0, 1).
    ``ValueError`` naming the field (and the detector) for the first fault."""
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{where}: not a {FORMAT} version {VERSION} file (format {meta.get('format')!r}, "
            f"version {meta.get('version')!r})"
        )
    models = _of_type(meta, "models", dict, where, {})
    for role, rel in models.items():
        if role not in {r for roles in MODEL_ROLES.values() for r in roles}:
            raise ValueError(f"{where}: models.{role}: unknown model role; re-run the fit")
        if not isinstance(rel, str):
            raise ValueError(f"{where}: models.{role} must be a path string, got {rel!r}")
    _of_type(meta, "preprocessing", dict, where)
    _integer(meta.get("feature_size", 96), "feature_size", where, MIN_FEATURE_SIZE, MAX_FEATURE_SIZE)
    _of_type(meta, "data", dict, where, {})
    _of_type(meta, "command", (str, type(None)), where)
    entries = _of_type(meta, "detectors", list, where)
    if not entries:
        raise ValueError(f"{where}: field 'detectors' lists no detector; re-run the fit")
    names = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where}: detectors[{i}] must be an object with a 'name', got {entry!r}")
        name = entry["name"]
        spec = CATALOGUE.get(name)
        if spec is None or spec.cls != entry.get("class"):
            raise ValueError(f"{where}: unknown detector {name!r} (class {entry.get('class')!r})")
        if name in names:
            raise ValueError(f"{where}: detector {name!r} is listed twice")
        names.append(name)
        here = f"{where}: detector {name!r}"
        _number(entry.get("threshold"), "threshold", here)
        _number(entry.get("fpr"), "fpr", here, 0.0, 1.0, open_interval=True)
        _check_params(entry.get("params", spec.params), spec, here)
        _of_type(entry, "state", dict, here, {})
        missing = [r for r in MODEL_ROLES.get(spec.needs, ()) if r not in models]
        if missing:
            raise ValueError(f"{here} needs the model(s) {missing}, which 'models' lacks; re-run the fit")


def _check_params(params, spec: Spec, where: str) -> None:
    """The catalogue's parameters; KNN's ``k`` may be lowered (a fit on few images does)."""
    if not isinstance(params, dict) or set(params) != set(spec.params):
        raise ValueError(f"{where}: params must be {spec.params}, got {params!r}; re-run the fit")
    for key, value in params.items():
        if spec.cls == "KNN" and key == "k":
            _integer(value, "params.k", where, 1, spec.params["k"])
        elif value != spec.params[key] or type(value) is not type(spec.params[key]):
            raise ValueError(f"{where}: params.{key} must be {spec.params[key]!r}, got {value!r}")


def _check_tensors(tensors: dict, where: str) -> None:
    """Every floating tensor of the state file finite."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{where}: tensor {key!r} holds NaN or infinite values; the state is corrupt, re-run the fit"
            )


def _load_model(bundle: str, role: str, rel) -> torch.nn.Module:
    """The model of ``models.<role>``: a checkpoint file or a Trainer run directory inside the
    bundle (its ``latest`` file and the checkpoint that names inside too, all regular files)."""
    from invflow.checkpoint import MODEL_FILE, resolve
    from invflow.checkpoint import load as load_model

    field = f"models.{role}"
    real = inside(bundle, rel, field, kind="any")
    if os.path.isdir(real):
        latest = os.path.join(rel, "latest")
        if os.path.lexists(os.path.join(bundle, latest)):
            real_latest = inside(bundle, latest, f"{field} (its 'latest' file)")
            if os.path.getsize(real_latest) > MAX_LATEST_BYTES:
                raise ValueError(f"{field}: {latest!r} is not a 'latest' file a run wrote (too large)")
            with open(real_latest, encoding="utf-8", errors="replace") as f:
                step = f.read().strip()
            checkpoint = os.path.join(rel, step, MODEL_FILE)
        elif os.path.lexists(os.path.join(bundle, rel, MODEL_FILE)):
            checkpoint = os.path.join(rel, MODEL_FILE)
        else:  # resolve's own message: what the directory lacks
            checkpoint = os.path.relpath(resolve(real), os.path.realpath(bundle))
        real = inside(bundle, checkpoint, f"{field} (its checkpoint)")
    return load_model(real)


def _check_model(model, role: str, policy: ImagePolicy, where: str) -> None:
    """An image model takes the bundle's images: input shape (channels, size, size)."""
    if role == "feature-flow":
        return
    want = (policy.channels, policy.size, policy.size)
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if shape != want:
        raise ValueError(
            f"{where}: models.{role} takes images {list(shape)}, but 'preprocessing' makes them "
            f"{list(want)}; the bundle is inconsistent, re-run the fit"
        )


def _check_projection(tensors: dict, feature_flow, where: str) -> None:
    mean, comps, scale = (tensors.get(f"projection.{k}") for k in ("mean", "components", "scale"))
    if mean is None or comps is None or scale is None:
        raise ValueError(f"{where}: feature-flow needs its PCA projection in {STATE_FILE}, which lacks it")
    if mean.dim() != 1 or comps.dim() != 2 or comps.shape[1] != mean.shape[0] or scale.shape != (1,):
        raise ValueError(
            f"{where}: the PCA projection in {STATE_FILE} has inconsistent shapes (mean "
            f"{list(mean.shape)}, components {list(comps.shape)}, scale {list(scale.shape)}); re-run the fit"
        )
    if not float(scale[0]) > 0:
        raise ValueError(f"{where}: projection.scale must be > 0, got {float(scale[0])}; re-run the fit")
    shape = tuple(getattr(feature_flow, "input_shape", ()) or ())
    if shape != (comps.shape[0],):
        raise ValueError(
            f"{where}: models.feature-flow takes vectors {list(shape)}, but the PCA projection gives "
            f"{comps.shape[0]} dimensions; re-run the fit"
        )


def load(path, progress: bool = False) -> Bundle:
    """The detector bundle in directory ``path`` (written by ``python -m detectors fit``),
    read-only: models in eval mode, thresholds and fitted state restored, nothing trained or
    written.

    Only files inside the bundle are read (after resolving links; regular files only, see
    :func:`inside`), and everything read is checked first: ``bundle.json``'s shape
    (:func:`check_meta`), finite thresholds, ``fpr`` in (0, 1), finite fitted scalars and
    state tensors, models that take the bundle's images.  ``FileNotFoundError`` /
    ``ValueError`` say in one line what is missing or malformed (naming the file, the
    detector and the field)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: no such detector bundle (a directory written by "
            f"python -m detectors fit --data TRAIN --out {path})"
        )
    meta_path = os.path.join(path, BUNDLE_FILE)
    if not os.path.lexists(meta_path):
        hint = (
            "the fit did not finish: re-run the same fit command to resume"
            if os.path.isfile(os.path.join(path, FIT_FILE))
            else f"fit one with python -m detectors fit --data TRAIN --out {path}"
        )
        raise ValueError(f"{path} is not a detector bundle (no {BUNDLE_FILE}); {hint}")
    meta = read_json(inside(path, BUNDLE_FILE, BUNDLE_FILE), BUNDLE_FILE)
    check_meta(meta, meta_path)
    try:
        policy = ImagePolicy.from_json(meta["preprocessing"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{meta_path}: field 'preprocessing' is not a valid image policy ({e})") from None
    models = {role: _load_model(path, role, rel) for role, rel in meta.get("models", {}).items()}
    for role, model in models.items():
        _check_model(model, role, policy, meta_path)
    tensors = {}
    if os.path.lexists(os.path.join(path, STATE_FILE)):
        tensors = read_tensors(inside(path, STATE_FILE, STATE_FILE))[0]
        _check_tensors(tensors, os.path.join(path, STATE_FILE))
    feature_size = meta.get("feature_size", 96)
    built = {}
    for entry in sorted(
        meta["detectors"], key=lambda e: CATALOGUE[e["name"]].needs == ENSEMBLE
    ):  # members first
        name = entry["name"]
        spec = CATALOGUE[name]
        here = f"{meta_path}: detector {name!r}"
        params = entry.get("params", spec.params)
        if spec.needs == ENSEMBLE:
            missing = [m for m in params["members"] if m not in built]
            if missing:
                raise ValueError(
                    f"{meta_path}: ensemble {name!r} needs its members {missing} in the bundle; re-run the fit"
                )
        projection = None
        if spec.needs == "features-flow":
            _check_projection(tensors, models["feature-flow"], here)
            projection = Projection.from_tensors(tensors)
        det = build(name, spec, models, feature_size, progress, params, projection, built)
        restore(det, spec, entry.get("state", {}), tensors, here)
        det.threshold, det.fpr = float(entry["threshold"]), float(entry["fpr"])
        built[name] = det
    dets = {entry["name"]: built[entry["name"]] for entry in meta["detectors"]}
    return Bundle(dets, policy, meta, feature_size, path)


def state(det, spec: Spec, name: str = "") -> dict:
    """The JSON part of a fitted detector's state (``name``: the detector's, whose arrays the
    state file holds under ``name.*``)."""
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
    if spec.needs == "images+features":
        return {"coef": f"{name}.coef", "intercept": f"{name}.intercept", "feature_size": det.feature_size}
    return {}


def restore(det, spec: Spec, state: dict, tensors: dict, where: str) -> None:
    """Puts the fitted state back into ``det`` (built by :func:`build`): an ensemble's
    [mean, std > 0] per member, typicality's entropy (finite numbers), the feature detectors'
    fitted arrays from ``tensors``.  ``ValueError`` naming ``where`` (the detector) and the field."""
    if spec.needs == ENSEMBLE:
        stats = state.get("standardisation", {})
        if (
            not isinstance(stats, dict)
            or set(stats) != set(det.members)
            or not all(isinstance(v, list) and len(v) == 2 for v in stats.values())
        ):
            raise ValueError(
                f"{where}: state.standardisation needs a [mean, std > 0] per member "
                f"{list(det.members)}, got {stats!r}; re-run the fit"
            )
        det._stats = {
            m: (
                _number(stats[m][0], f"state.standardisation.{m} mean", where),
                _number(stats[m][1], f"state.standardisation.{m} std", where, low=0.0, high=math.inf),
            )
            for m in det.members
        }
        if not all(sd > 0 for _, sd in det._stats.values()):
            raise ValueError(f"{where}: state.standardisation: every std must be > 0, got {stats!r}")
    elif spec.cls == "Typicality":
        det.entropy = _number(state.get("entropy"), "state.entropy", where)
    elif spec.needs == "images+features":
        keys = [state.get("coef"), state.get("intercept")]
        missing = [k for k in keys if not isinstance(k, str) or k not in tensors]
        if missing:
            raise ValueError(f"{where} needs {missing} in {STATE_FILE}, which lacks them; re-run the fit")
        try:
            det.load_tensors(tensors[keys[0]], tensors[keys[1]])
        except ValueError as e:
            raise ValueError(f"{where}: {e}; re-run the fit") from None
    elif spec.needs in ("features", "features+labels"):
        keys = [state.get("features", "features.fit")] + (
            [state.get("labels", "labels.fit")] if spec.needs == "features+labels" else []
        )
        missing = [k for k in keys if not isinstance(k, str) or k not in tensors]
        if missing:
            raise ValueError(f"{where} needs {missing} in {STATE_FILE}, which lacks them; re-run the fit")
        f = tensors[keys[0]]
        if f.dim() != 2 or len(f) < 2 or not f.is_floating_point():
            raise ValueError(
                f"{where}: tensor {keys[0]!r} must be float feature vectors [N >= 2, D], got "
                f"{f.dtype} {list(f.shape)}; re-run the fit"
            )
        if spec.needs == "features":
            if spec.cls == "KNN" and len(f) <= det.k:
                raise ValueError(
                    f"{where}: params.k = {det.k} needs more than {det.k} feature vectors, got {len(f)}"
                )
            det._fit_features(f.double().numpy())
            det._fitted = True
        else:
            labels = tensors[keys[1]]
            if labels.shape != (len(f),) or labels.is_floating_point() or labels.dtype == torch.bool:
                raise ValueError(
                    f"{where}: tensor {keys[1]!r} must be integer labels [{len(f)}], got "
                    f"{labels.dtype} {list(labels.shape)}; re-run the fit"
                )
            det._fit_state(f.double().numpy(), labels.numpy())


def check_out(out: str, settings: dict) -> None:
    """Refuses an output directory that holds something else or a fit with other settings."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ValueError(
            f"--out {out} exists and is not a directory; expected a directory for the detector bundle"
        )
    fit_path = os.path.join(out, FIT_FILE)
    if not os.path.lexists(fit_path):
        if os.listdir(out):
            raise ValueError(f"--out {out} exists and is not a detector bundle; choose a new directory")
        return
    old = read_json(inside(out, FIT_FILE, FIT_FILE), f"{FIT_FILE} (the settings of the fit in progress)")
    changed = [
        k
        for k in ("data", "n_images", "preprocessing", "model", "holdout", "seed", "zoo")
        if old.get(k) != settings.get(k)
    ]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)} -> {settings.get(k)}" for k in changed)
        raise ValueError(
            f"--out {out} holds a fit with other settings ({diffs}); resume with the same "
            "settings or choose a new directory"
        )
