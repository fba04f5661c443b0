"""Safe checkpoints: safetensors tensors + a JSON config, written atomically, never pickled.

    @invflow.checkpoint.register
    class MyFlow(invflow.Flow):
        def __init__(self, channels, hidden=64): ...
        def config(self):                      # JSON-serialisable constructor kwargs
            return {"channels": self.channels, "hidden": self.hidden}
        @classmethod
        def from_config(cls, config):          # an untrained instance
            return cls(**config)

    invflow.checkpoint.save(model, "model.safetensors")
    model = invflow.checkpoint.load("model.safetensors")       # eval mode
    model = invflow.checkpoint.load("runs/glow")               # a run directory: its latest model

A checkpoint is ONE safetensors file holding ``model.state_dict()`` (parameters and
persistent buffers) with the metadata ``{"format": "invflow", "version": "1",
"class": <registered name>, "module": <the class's module>, "config": <json of
model.config()>}``. Loading parses only the safetensors header (JSON) and raw tensor bytes: no
pickle is ever read, and files written by ``torch.save`` are refused with ``ValueError``.

Loading trusts nothing in the file: it opens regular files only (a named pipe or a device is
refused, not waited on); it checks the stored config against the stored tensor shapes before
allocating the model, so an edited config (``hidden`` 64 -> 200000) cannot make it allocate
160 GB; it refuses NaN / Inf weights; a run directory's ``latest`` file may only name a
checkpoint inside that directory; and a class that is not registered yet is imported only from
a module under ``TRUSTED_PACKAGES`` (``invflow``, ``detectors``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import numbers
import os
import re
import stat
import tempfile
from typing import Any, Union

try:
    import safetensors
    import safetensors.torch
except ImportError:  # a torch-only machine (the GPU check): layers and models work, checkpoints need it
    safetensors = None
import torch
from torch import nn

from .io import (
    atomic_write,  # noqa: F401  (re-exported: reports write atomically too)
    inside,
    open_regular,
    read_small_text,
)
from .masks import Mask

__all__ = [
    "register",
    "save",
    "load",
    "load_run",
    "resolve",
    "latest_checkpoint",
    "model_from_config",
    "config_of",
    "encode_arguments",
    "decode_arguments",
    "TORCH_MODULES",
    "atomic_write",
    "TRUSTED_PACKAGES",
]

FORMAT = "invflow"
VERSION = "1"

# pickle protocol 2+ begins with the PROTO opcode (0x80); torch.save's zip format with "PK\3\4".
_PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")
_REGISTRY: dict[str, type] = {}

#: Packages whose modules ``load`` may import to register a checkpoint's class (the module the
#: file names, e.g. ``detectors.objectives.supervised`` for ``ClassConditionalFlow``, which
#: ``import detectors`` does not import by itself).  A module outside them is never imported:
#: import it yourself before loading.  Add your own package's name to load its classes the same
#: way.
TRUSTED_PACKAGES: tuple[str, ...] = ("invflow", "detectors")

#: The largest safetensors header read (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000

_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# what a class's from_config raises for a config it cannot build
_CONFIG_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError)

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- registry


def register(cls: type | None = None, *, name: str | None = None):
    """Registers ``cls`` as savable under ``name`` (default ``cls.__name__``); returns ``cls``.

    Usable as a class decorator, bare (``@register``) or with a name (``@register(name="MyNet")``,
    for a class whose own name is taken).  ``cls`` is an ``nn.Module`` subclass (or an
    ``invflow.masks.Mask`` subclass, for masks given to layers) in one of two forms:

    * with ``config(self) -> dict`` (JSON-serialisable constructor keyword arguments) and the
      classmethod ``from_config(cls, config) -> instance``: saved through them;
    * with neither (a layer, an st-net, a mask): its **constructor arguments are recorded** when
      an instance is built (the registered class's ``__init__`` is wrapped; instances built
      before registration have none) and rebuild it.  They must be JSON values, tuples, small
      tensors (``MAX_TENSOR_ARGUMENT`` elements: vector masks), masks, modules of registered
      classes (nested layers, ``invflow.Sequential`` stacks, st-nets) or the ``torch.nn`` modules
      of ``TORCH_MODULES``; ``save`` raises a one-line TypeError naming any other argument (a
      function, e.g. an st-net factory: pass the st-net as a module instead).

    Every layer, st-net, mask and prior of invflow is registered at import.  Registering the
    same class twice is a no-op; a *different* class under an already registered name, or a
    class with only one of ``config`` / ``from_config``, raises ``ValueError`` / ``TypeError``.
    """
    if cls is None:
        return lambda c: register(c, name=name)
    if not (isinstance(cls, type) and issubclass(cls, (nn.Module, Mask))):
        raise TypeError(
            f"register expects a torch.nn.Module subclass (or an invflow.masks.Mask subclass), got {cls!r}"
        )
    recorded = _records_arguments(cls)
    if not recorded:
        _check_protocol(cls)
    if name is None:
        name = cls.__name__
    elif not (isinstance(name, str) and _CLASS_NAME.fullmatch(name)):
        raise ValueError(f"register: name must be a Python identifier such as 'MyNet', got {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"a different class is already registered under the name {name!r} "
            f"({existing.__module__}.{existing.__qualname__}); checkpoint class names must be unique: "
            f"register it under another one, @invflow.checkpoint.register(name='My{name}')"
        )
    if recorded:
        _record(cls)
    _REGISTRY[name] = cls
    return cls


def _records_arguments(cls: type) -> bool:
    """Whether ``cls`` is saved by its recorded constructor arguments: it defines neither
    ``config`` nor ``from_config``."""
    return getattr(cls, "config", None) is None and _getattr_static(cls, "from_config") is None


def _check_protocol(cls: type) -> None:
    """Raises TypeError unless ``cls`` has a ``config`` method and a ``from_config`` classmethod."""
    if not callable(getattr(cls, "config", None)):
        raise TypeError(f"{cls.__name__} must define config(self) -> dict to be registered for checkpoints")
    static = _getattr_static(cls, "from_config")
    if not isinstance(static, classmethod):
        raise TypeError(
            f"{cls.__name__} must define the classmethod from_config(cls, config: dict) "
            "to be registered for checkpoints"
        )


def _getattr_static(cls: type, name: str) -> Any:
    """The raw class attribute ``name`` (no descriptor binding), looked up along the MRO."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def _name_of(cls: type) -> str | None:
    """The name ``cls`` is registered under, or None."""
    if _REGISTRY.get(cls.__name__) is cls:
        return cls.__name__
    return next((name for name, known in _REGISTRY.items() if known is cls), None)


def _registered_name(model: nn.Module) -> str:
    """The name ``type(model)`` is registered under; TypeError when it is not registered."""
    cls = type(model)
    name = _name_of(cls)
    if name is None:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} is not registered for checkpoints; decorate it "
            "with @invflow.checkpoint.register (and give it config() / from_config())"
        )
    return name


def model_from_config(name: str, config: dict) -> nn.Module:
    """Builds the registered class ``name`` from its ``config()`` (for wrappers whose config
    nests another model's)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model class {name!r}; registered: {_registered_names()}")
    if not isinstance(config, dict):
        raise TypeError(f"model_from_config: config of {name} must be a dict, got {type(config).__name__}")
    return _from_config(_REGISTRY[name], config)


def _registered_names() -> str:
    return ", ".join(sorted(_REGISTRY)) or "(none)"


# --------------------------------------------------------------------------- save


def save(model: nn.Module, path: PathLike) -> None:
    """Writes ``model`` to the single safetensors file ``path``, atomically.

    Saves every tensor of ``model.state_dict()`` (made contiguous, detached and un-shared)
    plus the metadata ``format``/``version``/``class``/``config``. The bytes go to a temporary
    file in the same directory, are fsync'ed, then ``os.replace``-d onto ``path``: on any error
    the temporary file is removed and an existing ``path`` is left untouched.

    Raises ``TypeError`` when ``model`` is not an instance of a registered class or its
    ``config()`` is not a JSON-serialisable dict with string keys.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save expects a torch.nn.Module, got {type(model).__name__}")
    path = _fspath(path, "save")
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{path} is a directory; expected a file path such as {path}/model.safetensors"
        )
    metadata = _metadata(model)
    tensors = _tensors_for_saving(model.state_dict())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_write(tensors, metadata, path)


def _fspath(path: Any, where: str) -> str:
    """``os.fspath(path)``, or TypeError naming ``where`` for anything but a str / PathLike."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _metadata(model: nn.Module) -> dict[str, str]:
    """The safetensors metadata for ``model`` (str -> str)."""
    name = _registered_name(model)
    config = config_of(model)
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"{name}.config() must return a dict with str keys, got {config!r}")
    try:
        config_json = json.dumps(config)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}.config() must be JSON-serialisable: {err}") from err
    module = type(model).__module__
    return {"format": FORMAT, "version": VERSION, "class": name, "module": module, "config": config_json}


def _tensors_for_saving(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors, cloned where two entries would share storage."""
    out: dict[str, torch.Tensor] = {}
    seen = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state_dict entry {key!r} is a {type(value).__name__}; checkpoints hold tensors only"
            )
        tensor = value.detach().contiguous()
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if storage[1] != 0 and storage in seen:
            tensor = tensor.clone()
        seen.add((tensor.device, tensor.untyped_storage().data_ptr()))
        out[key] = tensor
    return out


def _atomic_write(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str) -> None:
    """safetensors-writes to a temporary sibling of ``path``, fsyncs, then replaces ``path``."""
    _require_safetensors()
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(
        delete=False, dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    ) as handle:
        tmp = handle.name
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "r+b") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_directory(directory)


def _target_mode(path: str) -> int:
    """Permission bits for the new file: those of the file it replaces, else 0o666 & ~umask
    (NamedTemporaryFile creates 0o600 files)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    """Makes the rename durable on POSIX; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- load


def load(path: PathLike, map_location: str | torch.device = "cpu", strict: bool = True) -> nn.Module:
    """Loads a checkpoint written by :func:`save` and returns the model on ``map_location``.

    Only the safetensors header and raw tensor bytes are read; nothing is unpickled. The model
    is rebuilt with ``cls.from_config(config)`` for the registered class named in the file, its
    tensors take the checkpoint's dtypes (a float64 model loads as float64), and it is returned
    in eval mode, ready for inference (call ``.train()`` to train it further).  A class not
    registered yet is imported from the module the file names when that module lies under
    ``TRUSTED_PACKAGES`` (so ``detectors``' classes load after ``import invflow, detectors``).

    ``path`` may also be a directory: a training run directory (``invflow.train.Trainer``'s
    ``out_dir``; its latest checkpoint is loaded) or one checkpoint directory holding
    ``model.safetensors`` (see :func:`resolve`). Loading only reads: nothing is trained,
    resumed or written.

    Before any model is allocated, the stored config is checked against the stored tensor
    shapes (the model is first built on the ``meta`` device, which allocates nothing), so a
    file cannot ask for more memory than its own tensors hold.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything that is not
    an invflow safetensors checkpoint (pickled / ``torch.save`` files are refused for safety),
    a path that is not a regular file (a FIFO, a device), an unknown class name, an unusable
    config, a config that does not match the stored tensor shapes, NaN / Inf in a stored tensor
    (named), a stored tensor of another kind than the model's (integer weights for a float
    parameter: named, never cast), or (``strict=True``) state-dict keys that do not match the model's.
    """
    device = _device(map_location)
    path = resolve(_fspath(path, "load"))
    with open_regular(path, "an invflow checkpoint (.safetensors)") as fh:
        metadata, shapes = _read_header(fh, path)
        cls, config = _parse_metadata(metadata, path)
        _check_shapes(cls, config, shapes, strict, path)
        tensors = _read_tensors(fh, path)
    _check_finite(tensors, path)
    model = _build(cls, config)
    _check_kinds(model, tensors, path)
    _adopt_dtypes(model, tensors)
    _load_state(model, tensors, strict, cls.__name__)
    return model.to(device).eval()


MODEL_FILE = "model.safetensors"
LATEST_FILE = "latest"


def resolve(path: PathLike) -> str:
    """The checkpoint file that ``path`` names, without writing anything.

    * a file: itself;
    * a checkpoint directory (``step-NNNNNNN/`` of a run): its ``model.safetensors``;
    * a training run directory (``Trainer(out_dir=...)``): the ``model.safetensors`` of the
      checkpoint its ``latest`` file names (:func:`latest_checkpoint`).

    A file found in a directory must lie inside that directory once symbolic links are
    resolved.  Raises ``FileNotFoundError`` naming what was expected when none of these exists,
    ``ValueError`` for a ``latest`` file or model file that leads outside the directory or is
    not a regular file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: no such file or directory; expected an invflow checkpoint "
            f"(.safetensors) or a training run directory"
        )
    if not os.path.isdir(path):
        return path
    step = latest_checkpoint(path)
    if step is not None:
        model = os.path.join(step, MODEL_FILE)
        if not os.path.exists(model):
            raise FileNotFoundError(
                f"{os.path.join(path, LATEST_FILE)} names checkpoint {os.path.basename(step)!r}, but {model} "
                f"does not exist; the run directory is incomplete (pass a step-* directory or file)"
            )
        return confined(path, model, "the run's model file")
    model = os.path.join(path, MODEL_FILE)
    if os.path.exists(model):  # a FIFO or device too: load refuses it by name
        return confined(path, model, "the checkpoint directory's model file")
    steps = sorted(
        d
        for d in os.listdir(path)
        if d.startswith("step-") and os.path.isfile(os.path.join(path, d, MODEL_FILE))
    )
    hint = f" (found {steps[-1]}/{MODEL_FILE}: pass that)" if steps else ""
    raise FileNotFoundError(
        f"{path} is a directory without a 'latest' file or {MODEL_FILE}; expected a "
        f"training run directory or a checkpoint directory{hint}"
    )


def latest_checkpoint(run_dir: PathLike) -> str | None:
    """The checkpoint directory that the ``latest`` file of the training run directory
    ``run_dir`` names (``run_dir/step-NNNNNNN``), or None when there is no ``latest`` file.

    The name is confined to the run: ``latest`` must be a small regular file inside ``run_dir``,
    and the directory it names must lie inside ``run_dir`` after resolving symbolic links (not
    ``..``, not an absolute path, not a link to another run's checkpoint); ``ValueError`` otherwise."""
    run_dir = os.fspath(run_dir)
    latest = os.path.join(run_dir, LATEST_FILE)
    if not os.path.lexists(latest):
        return None
    confined(run_dir, latest, "the run's latest file")
    name = read_small_text(latest, "a run's latest file naming its checkpoint (step-NNNNNNN)").strip()
    target = os.path.join(run_dir, name)
    real_run = os.path.realpath(run_dir)
    if not name or not inside(run_dir, target) or os.path.realpath(target) == real_run:
        raise ValueError(
            f"{latest} names {name[:80]!r}, which resolves to {os.path.realpath(target)}, not a checkpoint "
            f"inside the run directory {real_run}; a run's latest file names one of its own step-* "
            f"directories (pass a checkpoint file to load another one)"
        )
    return target


def confined(root: PathLike, path: PathLike, what: str) -> str:
    """``path`` when it lies inside the directory ``root`` after resolving symbolic links
    (``invflow.io.inside``), else ``ValueError`` naming where it leads."""
    if not inside(root, path):
        raise ValueError(
            f"{os.fspath(path)} ({what}) resolves to {os.path.realpath(os.fspath(path))}, outside "
            f"{os.path.realpath(os.fspath(root))}; files of a run or checkpoint directory must lie inside it"
        )
    return os.fspath(path)


def load_run(run_dir: PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The latest model of a training run directory, in eval mode; read-only (unlike
    ``Trainer.fit(resume=True)`` it opens no log and never trains). Same as :func:`load`."""
    return load(run_dir, map_location=map_location)


def _device(map_location: str | torch.device) -> torch.device:
    try:
        return torch.device(map_location)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"map_location must be a device such as 'cpu' or 'cuda:0', got {map_location!r}"
        ) from err


def _require_safetensors() -> None:
    if safetensors is None:
        raise ImportError("invflow checkpoints need the safetensors package: pip install safetensors")


def _read_header(fh, path: str) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """(metadata, {tensor name: shape}) from the safetensors header of the open file ``fh``,
    without reading tensor data; ValueError for a pickle / ``torch.save`` file or anything else
    that is not a safetensors file."""
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    raw = fh.read(n) if 0 < n <= min(MAX_HEADER_BYTES, size - 8) else b""
    if not raw.startswith(b"{"):
        if head.startswith(_PICKLE_MAGICS):
            raise ValueError(
                f"{path} looks like a pickled checkpoint (torch.save / pickle); pickled checkpoints are "
                "not loaded for safety (unpickling can run arbitrary code). Expected a safetensors file "
                "written by invflow.checkpoint.save"
            )
        raise ValueError(
            f"{path} is not a safetensors file; expected a checkpoint written by invflow.checkpoint.save"
        )
    try:
        header = json.loads(raw)
        metadata = header.pop("__metadata__", None) if isinstance(header, dict) else None
        shapes = {key: tuple(int(d) for d in info["shape"]) for key, info in header.items()}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        raise ValueError(
            f"{path} is not a valid safetensors file: unreadable header ({type(err).__name__})"
        ) from None
    return metadata, shapes


def _read_tensors(fh, path: str) -> dict[str, torch.Tensor]:
    """The tensors (CPU) of the open checkpoint ``fh``, read by safetensors from the same open
    file where the platform names it (``/proc/self/fd``); its parse errors become ValueError."""
    _require_safetensors()
    same_file = f"/proc/self/fd/{fh.fileno()}"
    source = same_file if os.path.exists(same_file) else path
    try:
        with safetensors.safe_open(source, framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except safetensors.SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from err


def _check_finite(tensors: dict[str, torch.Tensor], path: str) -> None:
    """ValueError naming the first stored floating tensor that holds NaN or Inf."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{path}: tensor {key!r} holds {bad} NaN / Inf value(s) of {t.numel()}; the weights are "
                f"unusable (a diverged run or a damaged file): load an earlier checkpoint"
            )


def _parse_metadata(metadata: Any, path: str):
    """(registered class, config dict) from the checkpoint metadata, or ValueError."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not an invflow checkpoint: expected metadata "
            f"format={FORMAT!r}, got {str(metadata)[:200]}"
        )
    if metadata.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported invflow checkpoint version {str(metadata.get('version'))[:40]!r}; "
            f"expected {VERSION!r}"
        )
    name = metadata.get("class")
    if name not in _REGISTRY:
        _import_trusted(metadata.get("module"), name)
    if name not in _REGISTRY:
        module = metadata.get("module")
        where = f" (defined in {module[:100]})" if isinstance(module, str) else ""
        raise ValueError(
            f"{path}: checkpoint class {str(name)[:100]!r}{where} is not registered; registered classes: "
            f"{_registered_names()}. Import the module that defines it first (modules under "
            f"{', '.join(TRUSTED_PACKAGES)} are imported automatically)"
        )
    if not issubclass(_REGISTRY[name], nn.Module):
        raise ValueError(
            f"{path}: checkpoint class {name!r} is not a torch.nn.Module; expected a model or layer"
        )
    raw = metadata.get("config", "")
    if isinstance(raw, str) and raw.count(_CLASS_KEY) > MAX_NESTED:
        raise ValueError(
            f"{path}: checkpoint config nests more than {MAX_NESTED} objects "
            f"(invflow.checkpoint.MAX_NESTED); the file was edited or damaged"
        )
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: checkpoint config is not valid JSON: {type(err).__name__}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: checkpoint config must be a JSON object, got {str(config)[:100]}")
    return _REGISTRY[name], config


def _import_trusted(module: Any, name: Any) -> None:
    """Imports ``module`` (named by a checkpoint) when it is a module of a trusted package
    (``TRUSTED_PACKAGES``), so that a class it registers on import becomes loadable; anything
    else is left alone (never an arbitrary module named by a file)."""
    if not (isinstance(module, str) and isinstance(name, str) and _MODULE_NAME.fullmatch(module)):
        return
    if module.split(".")[0] not in TRUSTED_PACKAGES:
        return
    try:
        importlib.import_module(module)
    except ImportError:
        return


def _check_shapes(
    cls: type, config: dict, shapes: dict[str, tuple[int, ...]], strict: bool, path: str
) -> None:
    """Builds ``cls`` from ``config`` on the meta device (no memory) and compares its state-dict
    shapes with the stored ones; ValueError for a config the class rejects, missing / unexpected
    keys (``strict``) or a shape that differs (an edited config: the file's tensors, not its
    config, bound what loading allocates).  A class that cannot be built on the meta device is
    checked by ``load_state_dict`` after the build instead."""
    try:
        with torch.device("meta"):
            skeleton = _from_config(cls, config)
    except _CONFIG_ERRORS as err:
        raise ValueError(f"{path}: checkpoint config does not build a {cls.__name__}: {err}") from None
    except Exception:  # noqa: BLE001  (not buildable on meta: the real build checks)
        return
    if not isinstance(skeleton, nn.Module):
        return
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if strict:
        _check_keys(set(expected), set(shapes), cls.__name__)
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            raise ValueError(
                f"{path}: the stored config does not match the stored tensors: {key} is {list(shapes[key])} "
                f"in the file but {list(shape)} for the config; the file was edited or damaged"
            )


def _check_keys(expected: set, stored: set, name: str) -> None:
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint tensors do not match {name}'s state_dict: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )


def _build(cls: type, config: dict[str, Any]) -> nn.Module:
    """``cls.from_config(config)``; a config the class rejects becomes ValueError."""
    try:
        model = _from_config(cls, config)
    except _CONFIG_ERRORS as err:
        raise ValueError(
            f"checkpoint config {str(config)[:300]} does not build a {cls.__name__}: {err}"
        ) from None
    if not isinstance(model, cls):
        raise TypeError(
            f"{cls.__name__}.from_config returned {type(model).__name__}, expected a {cls.__name__}"
        )
    return model


def _kind(dtype: torch.dtype) -> str:
    """'bool', 'complex', 'floating' or 'integer': what a tensor holds, whatever its width."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating" if dtype.is_floating_point else "integer"


def _check_kinds(model: nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    """ValueError when a stored tensor holds another kind of number than the model's tensor of
    that name (integer weights for a float parameter, floats for a bool flag): ``load_state_dict``
    would cast them silently.  Floating widths may differ (``_adopt_dtypes`` takes the file's)."""
    for key, current in model.state_dict().items():
        stored = tensors.get(key)
        if isinstance(stored, torch.Tensor) and _kind(stored.dtype) != _kind(current.dtype):
            raise ValueError(
                f"{path}: tensor {key!r} is stored as {stored.dtype} but the model holds {_kind(current.dtype)} "
                f"values ({current.dtype}) there; the file was edited or written by another program: "
                f"save the model again with invflow.save"
            )


def _adopt_dtypes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Gives the fresh model's floating tensors the checkpoint's dtypes before copying values
    (load_state_dict would otherwise cast a float64 checkpoint into a float32 model)."""
    floating = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(floating) == 1:  # whole-model dtype: also converts non-persistent buffers
        model.to(floating.pop())
    for key, param in model.named_parameters(remove_duplicate=False):
        wanted = tensors.get(key)
        if _needs_cast(param, wanted):
            param.data = param.data.to(wanted.dtype)
    for key, buf in list(model.named_buffers(remove_duplicate=False)):
        wanted = tensors.get(key)
        if _needs_cast(buf, wanted):
            owner, _, name = key.rpartition(".")
            setattr(model.get_submodule(owner), name, buf.to(wanted.dtype))


def _needs_cast(current: Any, wanted: Any) -> bool:
    return (
        isinstance(current, torch.Tensor)
        and isinstance(wanted, torch.Tensor)
        and current.is_floating_point()
        and wanted.is_floating_point()
        and current.dtype != wanted.dtype
    )


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], strict: bool, name: str) -> None:
    """``load_state_dict`` with key / shape mismatches reported as ValueError."""
    if strict:
        _check_keys(set(model.state_dict()), set(tensors), name)
    try:
        model.load_state_dict(tensors, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"checkpoint tensors do not fit {name}: {err}") from err


# --------------------------------------------------------------------------- recorded arguments
#
# A registered class without config() / from_config() is saved by the arguments its constructor
# was called with: ``register`` wraps its ``__init__`` so that every instance keeps them (after
# defaults are applied), and ``encode_arguments`` writes them as JSON, with typed values marked:
#
#   {"__invflow_class__": "AffineCoupling", "module": "invflow.layers.coupling", "config": {...}}
#   {"__invflow_tuple__": [2, 3]}
#   {"__invflow_tensor__": {"dtype": "bool", "shape": [4], "values": [true, false, true, false]}}
#
# Loading decodes them (registered classes only, trusted modules only) and calls the constructor,
# inside the meta-device build that checks the config against the stored tensor shapes.

#: The instance attribute that holds the recorded constructor arguments.
_ARGUMENTS = "_invflow_arguments"
_CLASS_KEY = "__invflow_class__"
_TUPLE_KEY = "__invflow_tuple__"
_TENSOR_KEY = "__invflow_tensor__"
_RESERVED = (_CLASS_KEY, _TUPLE_KEY, _TENSOR_KEY)
_TORCH_PREFIX = "torch.nn."

#: The most elements of a tensor given as a constructor argument (a vector mask).
MAX_TENSOR_ARGUMENT = 65536
#: The most objects (layers, nets, masks) one checkpoint config may nest.
MAX_NESTED = 10_000
#: The deepest nesting of a config (Sequentials in Sequentials, lists in lists).
MAX_DEPTH = 64

_TENSOR_DTYPES = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _record(cls: type) -> None:
    """Wraps ``cls.__init__`` so that an instance of exactly ``cls`` keeps its constructor
    arguments (defaults applied) in ``_invflow_arguments``."""
    if getattr(vars(cls).get("__init__"), "_invflow_records", None) is cls:
        return
    target = cls.__init__
    signature = inspect.signature(target)

    @functools.wraps(target)
    def __init__(self, *args, **kwargs):
        target(self, *args, **kwargs)
        if type(self) is cls:  # the outermost constructor records (not a parent's super().__init__)
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            object.__setattr__(self, _ARGUMENTS, tuple(bound.arguments.items())[1:])

    __init__._invflow_records = cls
    cls.__init__ = __init__


def config_of(obj: nn.Module | Mask) -> dict:
    """The JSON-serialisable config ``save`` writes for ``obj``, an instance of a registered
    class: ``obj.config()``, or the encoded recorded constructor arguments.  TypeError for an
    unregistered class, an instance built before its class was registered, or an argument a
    checkpoint cannot record (named)."""
    return _config_of(obj, set(), 0)


def _config_of(obj, seen: set, depth: int, where: str | None = None) -> dict:
    cls = type(obj)
    where = where or cls.__qualname__
    if not _records_arguments(cls):
        return obj.config()
    arguments = obj.__dict__.get(_ARGUMENTS)
    if arguments is None:
        raise TypeError(
            f"{cls.__qualname__}: this instance was built before its class was registered for checkpoints, "
            f"so its constructor arguments were not recorded; build it again after @invflow.checkpoint.register"
        )
    return _encode_arguments(dict(arguments), where, seen, depth)


def encode_arguments(arguments: dict, where: str) -> dict:
    """JSON config of constructor ``arguments`` (name -> value) for a class whose config nests
    modules (a model wrapping a layer stack): JSON values stay as they are; tuples, small
    tensors, masks and modules of registered classes are written as marked objects that
    ``decode_arguments`` rebuilds.  TypeError, naming ``where`` and the argument, for anything
    else (functions, unregistered modules, a module given twice: tied weights)."""
    return _encode_arguments(arguments, where, set(), 0)


def _encode_arguments(arguments: dict, where: str, seen: set, depth: int) -> dict:
    return {name: _encode(v, f"{where} argument {name!r}", seen, depth) for name, v in arguments.items()}


def _encode(value: Any, what: str, seen: set, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise TypeError(f"{what}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise TypeError(f"{what} is {value!r}; a checkpoint records finite numbers only")
        return float(value)
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{what}[{i}]", seen, depth + 1) for i, v in enumerate(value)]
        return items if isinstance(value, list) else {_TUPLE_KEY: items}
    if isinstance(value, dict):
        if not all(isinstance(k, str) and k not in _RESERVED for k in value):
            raise TypeError(f"{what}: a dict argument needs str keys other than {', '.join(_RESERVED)}")
        return {k: _encode(v, f"{what}[{k!r}]", seen, depth + 1) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, what)
    if isinstance(value, (nn.Module, Mask)):
        return _encode_object(value, what, seen, depth)
    if callable(value):
        raise TypeError(
            f"{what} is {getattr(value, '__qualname__', type(value).__name__)!r}, code that a checkpoint "
            f"cannot record; pass a module instead (e.g. the st-net as an nn.Module of a registered class)"
        )
    raise TypeError(
        f"{what} is a {type(value).__name__}, which a checkpoint cannot record; constructor arguments must "
        f"be JSON values, tuples, small tensors, masks or modules of registered classes"
    )


def _encode_tensor(t: torch.Tensor, what: str) -> dict:
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _TENSOR_DTYPES or t.numel() > MAX_TENSOR_ARGUMENT:
        raise TypeError(
            f"{what}: a tensor argument must be a bool, integer or float32/64 tensor of at most "
            f"{MAX_TENSOR_ARGUMENT} elements (a mask), got {t.dtype} of shape {list(t.shape)}"
        )
    values = t.detach().cpu().flatten().tolist()
    if t.is_floating_point() and not all(math.isfinite(v) for v in values):
        raise TypeError(f"{what}: a tensor argument must be finite")
    return {_TENSOR_KEY: {"dtype": dtype, "shape": list(t.shape), "values": values}}


def _encode_object(value, what: str, seen: set, depth: int) -> dict:
    cls = type(value)
    if isinstance(value, nn.Module):
        if id(value) in seen:
            raise TypeError(
                f"{what} is a module given twice (tied weights); a checkpoint rebuilds every argument "
                f"separately, so give each layer its own module"
            )
        seen.add(id(value))
    torch_module = TORCH_MODULES.get(cls)
    if torch_module is not None:
        arguments = torch_module[0](value)
        return {
            _CLASS_KEY: _TORCH_PREFIX + cls.__name__,
            "config": _encode_arguments(arguments, what, seen, depth + 1),
        }
    name = _name_of(cls)
    if name is None:
        raise TypeError(
            f"{what} is a {cls.__module__}.{cls.__qualname__}, which is not registered for checkpoints; "
            f"decorate its class with @invflow.checkpoint.register"
        )
    config = _config_of(value, seen, depth + 1, f"{what} ({cls.__qualname__})")
    return {_CLASS_KEY: name, "module": cls.__module__, "config": config}


def decode_arguments(config: dict, where: str) -> dict:
    """The constructor arguments that ``encode_arguments`` wrote (modules rebuilt, tuples and
    tensors restored).  Only registered classes are built (a class not registered yet is
    imported from a module under ``TRUSTED_PACKAGES``, never from elsewhere); ValueError /
    TypeError naming ``where`` for anything malformed."""
    if not isinstance(config, dict):
        raise TypeError(f"{where}: config must be a dict, got {type(config).__name__}")
    return {name: _decode(v, where, 0) for name, v in config.items()}


def _decode(value: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: config nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, list):
        return [_decode(v, where, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    if _CLASS_KEY in value:
        return _decode_object(value, where, depth)
    if _TUPLE_KEY in value:
        items = value[_TUPLE_KEY]
        if not isinstance(items, list):
            raise ValueError(f"{where}: a tuple in the config must hold a list, got {str(items)[:100]}")
        return tuple(_decode(v, where, depth + 1) for v in items)
    if _TENSOR_KEY in value:
        return _decode_tensor(value[_TENSOR_KEY], where)
    return {k: _decode(v, where, depth + 1) for k, v in value.items()}


def _decode_tensor(spec: Any, where: str) -> torch.Tensor:
    ok = isinstance(spec, dict) and spec.get("dtype") in _TENSOR_DTYPES
    shape, values = (spec.get("shape"), spec.get("values")) if ok else (None, None)
    ok = ok and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    ok = ok and isinstance(values, list) and len(values) <= MAX_TENSOR_ARGUMENT
    ok = ok and math.prod(shape) == len(values) and all(isinstance(v, (int, float)) for v in values)
    if not ok:
        raise ValueError(f"{where}: a tensor in the config is malformed: {str(spec)[:100]}")
    return torch.tensor(values, dtype=_TENSOR_DTYPES[spec["dtype"]]).reshape(shape)


def _decode_object(value: dict, where: str, depth: int):
    name, config = value.get(_CLASS_KEY), value.get("config", {})
    if not isinstance(name, str) or not isinstance(config, dict):
        raise ValueError(f"{where}: a nested object in the config is malformed: {str(value)[:100]}")
    if name.startswith(_TORCH_PREFIX):
        found = [(cls, spec) for cls, spec in TORCH_MODULES.items() if _TORCH_PREFIX + cls.__name__ == name]
        if not found:
            raise ValueError(f"{where}: {name[:100]} is not one of the torch.nn modules checkpoints rebuild")
        cls, (_, build) = found[0]
        return build(**_decode_kwargs(config, name, depth))
    if name not in _REGISTRY:
        _import_trusted(value.get("module"), name)
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(
            f"{where}: class {name[:100]!r} in the config is not registered; import the module that defines it "
            f"first (modules under {', '.join(TRUSTED_PACKAGES)} are imported automatically)"
        )
    obj = _from_config(cls, config)
    if not isinstance(obj, cls):
        raise TypeError(f"{where}: {name}'s config built a {type(obj).__name__}")
    return obj


def _decode_kwargs(config: dict, where: str, depth: int) -> dict:
    return {k: _decode(v, where, depth + 1) for k, v in config.items()}


def _from_config(cls: type, config: dict):
    """An instance of the registered ``cls`` from its config (``cls.from_config``, or its
    recorded constructor arguments called back into the constructor)."""
    if not isinstance(config, dict):
        raise TypeError(f"the config of {cls.__name__} must be a dict, got {type(config).__name__}")
    if not _records_arguments(cls):
        return cls.from_config(config)
    arguments = decode_arguments(config, cls.__name__)
    args, kwargs, positional = [], {}, True
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name not in arguments:
            positional = positional and p.kind is not p.POSITIONAL_OR_KEYWORD
            continue
        value = arguments.pop(p.name)
        if p.kind is p.VAR_POSITIONAL:
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"{cls.__name__}: *{p.name} must be a list in the config")
            args.extend(value)
        elif p.kind is p.VAR_KEYWORD:
            if not isinstance(value, dict):
                raise TypeError(f"{cls.__name__}: **{p.name} must be a dict in the config")
            kwargs.update(value)
        elif p.kind is p.KEYWORD_ONLY or not positional:
            kwargs[p.name] = value
        else:
            args.append(value)
    if arguments:
        raise TypeError(f"{cls.__name__} takes no argument(s) {sorted(arguments)[:10]}")
    return cls(*args, **kwargs)


# torch.nn modules that st-nets are commonly built from (FrEIA's subnet constructors), saved by
# their attributes: class -> (arguments of an instance, constructor)
def _conv_arguments(m) -> dict:
    return dict(
        in_channels=m.in_channels,
        out_channels=m.out_channels,
        kernel_size=m.kernel_size,
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=m.groups,
        bias=m.bias is not None,
        padding_mode=m.padding_mode,
    )


def _sequential(**config):
    from collections import OrderedDict

    return nn.Sequential(OrderedDict((str(k), m) for k, m in config["modules"]))


#: The ``torch.nn`` modules that ``save`` records as constructor arguments (st-nets built of
#: them, e.g. ``nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 4))``); other torch
#: modules need a registered class around them.
TORCH_MODULES: dict[type, tuple] = {
    nn.Sequential: (lambda m: {"modules": [[k, c] for k, c in m._modules.items()]}, _sequential),
    nn.Linear: (
        lambda m: dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None),
        nn.Linear,
    ),
    nn.Conv1d: (_conv_arguments, nn.Conv1d),
    nn.Conv2d: (_conv_arguments, nn.Conv2d),
    nn.Conv3d: (_conv_arguments, nn.Conv3d),
    nn.ReLU: (lambda m: dict(inplace=m.inplace), nn.ReLU),
    nn.LeakyReLU: (lambda m: dict(negative_slope=m.negative_slope, inplace=m.inplace), nn.LeakyReLU),
    nn.ELU: (lambda m: dict(alpha=m.alpha, inplace=m.inplace), nn.ELU),
    nn.SiLU: (lambda m: dict(inplace=m.inplace), nn.SiLU),
    nn.GELU: (lambda m: dict(approximate=m.approximate), nn.GELU),
    nn.Softplus: (lambda m: dict(beta=m.beta, threshold=m.threshold), nn.Softplus),
    nn.Tanh: (lambda m: {}, nn.Tanh),
    nn.Sigmoid: (lambda m: {}, nn.Sigmoid),
    nn.Identity: (lambda m: {}, nn.Identity),
    nn.Dropout: (lambda m: dict(p=m.p, inplace=m.inplace), nn.Dropout),
    nn.Flatten: (lambda m: dict(start_dim=m.start_dim, end_dim=m.end_dim), nn.Flatten),
    nn.LayerNorm: (
        lambda m: dict(
            normalized_shape=tuple(m.normalized_shape),
            eps=m.eps,
            elementwise_affine=m.elementwise_affine,
            bias=m.elementwise_affine and m.bias is not None,
        ),
        nn.LayerNorm,
    ),
}


def _register_builtins() -> None:
    """Registers every public layer, st-net, mask and prior class of invflow (the models
    register themselves in invflow.models).  A class that cannot be registered (a partial
    config protocol, a name taken) is left out: saving it then says it is not registered."""
    from . import layers, masks, nets, priors

    for module in (layers, nets, masks, priors):
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for attr in names:
            obj = getattr(module, attr, None)
            if (
                isinstance(obj, type)
                and issubclass(obj, (nn.Module, Mask))
                and obj.__module__.startswith("invflow.")
                and not inspect.isabstract(obj)
                and obj.__name__ not in _REGISTRY
            ):
                try:
                    register(obj)
                except (TypeError, ValueError):
                    continue


_register_builtins()
