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
"class": <registered name>, "config": <json of model.config()>}``. Loading parses only the
safetensors header (JSON) and raw tensor bytes: no pickle is ever read, and files written by
``torch.save`` are refused with ``ValueError``.
"""

from __future__ import annotations

import json
import os
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

from .io import atomic_write  # noqa: F401  (re-exported: reports write atomically too)

__all__ = ["register", "save", "load", "load_run", "resolve", "model_from_config", "atomic_write"]

FORMAT = "invflow"
VERSION = "1"

# pickle protocol 2+ begins with the PROTO opcode (0x80); torch.save's zip format with "PK\3\4".
_PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")
_REGISTRY: dict[str, type] = {}

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- registry


def register(cls: type) -> type:
    """Registers ``cls`` (an ``nn.Module`` subclass) as savable under ``cls.__name__``.

    Usable as a class decorator; returns ``cls``. The class must define ``config(self) -> dict``
    (JSON-serialisable constructor keyword arguments) and the classmethod
    ``from_config(cls, config) -> instance``. Registering the same class twice is a no-op;
    a *different* class under an already registered name raises ``ValueError``.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register expects a torch.nn.Module subclass, got {cls!r}")
    _check_protocol(cls)
    name = cls.__name__
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"a different class is already registered under the name {name!r} "
            f"({existing.__module__}.{existing.__qualname__}); checkpoint class names must be unique"
        )
    _REGISTRY[name] = cls
    return cls


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


def _registered_name(model: nn.Module) -> str:
    """The name ``type(model)`` is registered under; TypeError when it is not registered."""
    cls = type(model)
    if _REGISTRY.get(cls.__name__) is not cls:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} is not registered for checkpoints; decorate it "
            "with @invflow.checkpoint.register (and give it config() / from_config())"
        )
    return cls.__name__


def model_from_config(name: str, config: dict) -> nn.Module:
    """Builds the registered class ``name`` from its ``config()`` (for wrappers whose config
    nests another model's)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model class {name!r}; registered: {_registered_names()}")
    return _REGISTRY[name].from_config(config)


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
    metadata = _metadata(model)
    tensors = _tensors_for_saving(model.state_dict())
    _atomic_write(tensors, metadata, os.fspath(path))


def _metadata(model: nn.Module) -> dict[str, str]:
    """The safetensors metadata for ``model`` (str -> str)."""
    name = _registered_name(model)
    config = model.config()
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"{name}.config() must return a dict with str keys, got {config!r}")
    try:
        config_json = json.dumps(config)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}.config() must be JSON-serialisable: {err}") from err
    return {"format": FORMAT, "version": VERSION, "class": name, "config": config_json}


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
    in eval mode, ready for inference (call ``.train()`` to train it further).

    ``path`` may also be a directory: a training run directory (``invflow.train.Trainer``'s
    ``out_dir``; its latest checkpoint is loaded) or one checkpoint directory holding
    ``model.safetensors`` (see :func:`resolve`). Loading only reads: nothing is trained,
    resumed or written.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything that is not
    an invflow safetensors checkpoint (pickled / ``torch.save`` files are refused for safety),
    an unknown class name, an unusable config, or (``strict=True``) state-dict keys that do not
    match the model's.
    """
    device = _device(map_location)
    path = resolve(path)
    _refuse_non_safetensors(path)
    metadata, tensors = _read(path)
    cls, config = _parse_metadata(metadata, path)
    model = _build(cls, config)
    _adopt_dtypes(model, tensors)
    _load_state(model, tensors, strict, cls.__name__)
    return model.to(device).eval()


MODEL_FILE = "model.safetensors"


def resolve(path: PathLike) -> str:
    """The checkpoint file that ``path`` names, without writing anything.

    * a file: itself;
    * a checkpoint directory (``step-NNNNNNN/`` of a run): its ``model.safetensors``;
    * a training run directory (``Trainer(out_dir=...)``): the ``model.safetensors`` of the
      checkpoint its ``latest`` file names.

    Raises ``FileNotFoundError`` naming what was expected when none of these exists.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: no such file or directory; expected an invflow checkpoint "
            f"(.safetensors) or a training run directory"
        )
    if not os.path.isdir(path):
        return path
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest) as fh:
            name = fh.read().strip()
        model = os.path.join(path, name, MODEL_FILE)
        if not name or not os.path.isfile(model):
            raise FileNotFoundError(
                f"{latest} names checkpoint {name!r}, but {model} does not exist; "
                f"the run directory is incomplete (pass a step-* directory or file)"
            )
        return model
    model = os.path.join(path, MODEL_FILE)
    if os.path.isfile(model):
        return model
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


def _refuse_non_safetensors(path: str) -> None:
    """ValueError unless the file starts like a safetensors file (8-byte header length, '{')."""
    with open(path, "rb") as fh:
        head = fh.read(9)
        size = os.fstat(fh.fileno()).st_size
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return
    if head.startswith(_PICKLE_MAGICS):
        raise ValueError(
            f"{path} looks like a pickled checkpoint (torch.save / pickle); pickled checkpoints are "
            "not loaded for safety (unpickling can run arbitrary code). Expected a safetensors file "
            "written by invflow.checkpoint.save"
        )
    raise ValueError(
        f"{path} is not a safetensors file; expected a checkpoint written by invflow.checkpoint.save"
    )


def _read(path: str):
    """(metadata, tensors on CPU) via safetensors; its parse errors become ValueError."""
    _require_safetensors()
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except safetensors.SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from err
    return metadata, tensors


def _parse_metadata(metadata: Any, path: str):
    """(registered class, config dict) from the checkpoint metadata, or ValueError."""
    if not metadata or metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not an invflow checkpoint: expected metadata "
            f"format={FORMAT!r}, got {metadata!r}"
        )
    if metadata.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported invflow checkpoint version {metadata.get('version')!r}; "
            f"expected {VERSION!r}"
        )
    name = metadata.get("class")
    if name not in _REGISTRY:
        raise ValueError(
            f"{path}: checkpoint class {name!r} is not registered; registered classes: {_registered_names()}"
        )
    try:
        config = json.loads(metadata.get("config", ""))
    except ValueError as err:
        raise ValueError(f"{path}: checkpoint config is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: checkpoint config must be a JSON object, got {config!r}")
    return _REGISTRY[name], config


def _build(cls: type, config: dict[str, Any]) -> nn.Module:
    """``cls.from_config(config)``; a config the class rejects becomes ValueError."""
    try:
        model = cls.from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint config {config!r} does not build a {cls.__name__}: {err}") from err
    if not isinstance(model, cls):
        raise TypeError(
            f"{cls.__name__}.from_config returned {type(model).__name__}, expected a {cls.__name__}"
        )
    return model


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
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint tensors do not match {name}'s state_dict: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
    try:
        model.load_state_dict(tensors, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"checkpoint tensors do not fit {name}: {err}") from err
