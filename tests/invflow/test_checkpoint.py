"""invflow.checkpoint: safetensors round trips, atomic writes, refusal of pickles."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
import safetensors.torch
import torch
from torch import nn

from invflow import checkpoint

_SIDE_EFFECT = {"ran": False}


def _set_flag() -> None:
    """What a malicious pickle would call; only sets a flag."""
    _SIDE_EFFECT["ran"] = True


class _Payload:
    def __reduce__(self):
        return (_set_flag, ())


@checkpoint.register
class TinyCheckpointModel(nn.Module):
    """A registered test model: a Linear layer, a float buffer, a bool buffer, a config."""

    def __init__(self, features: int = 3, out: int = 2, shift: float = 0.5):
        super().__init__()
        self.features, self.out, self.shift = features, out, shift
        self.linear = nn.Linear(features, out)
        self.register_buffer("offset", torch.full((out,), shift))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        return self.linear(x) + self.offset

    def config(self) -> dict:
        return {"features": self.features, "out": self.out, "shift": self.shift}

    @classmethod
    def from_config(cls, config: dict) -> TinyCheckpointModel:
        return cls(**config)


def _trained(dtype=torch.float32, **config) -> TinyCheckpointModel:
    model = TinyCheckpointModel(**config).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.offset.mul_(3.0)
        model.initialized.fill_(True)
    return model


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test do not leak into the others."""
    monkeypatch.setattr(checkpoint, "_REGISTRY", dict(checkpoint._REGISTRY))


def _write_safetensors(path, metadata) -> None:
    tensors = {k: v.contiguous() for k, v in _trained().state_dict().items()}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def _metadata(**overrides) -> dict:
    meta = {
        "format": "invflow",
        "version": "1",
        "class": "TinyCheckpointModel",
        "config": json.dumps({"features": 3, "out": 2, "shift": 0.5}),
    }
    meta.update(overrides)
    return meta


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_restores_state_outputs_and_config(tmp_path, dtype):
    model = _trained(dtype, features=4, out=3, shift=-1.25)
    path = tmp_path / "model.safetensors"
    checkpoint.save(model, path)
    loaded = checkpoint.load(path)

    assert type(loaded) is TinyCheckpointModel
    assert loaded.config() == {"features": 4, "out": 3, "shift": -1.25}
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys() == {"linear.weight", "linear.bias", "offset", "initialized"}
    for key in original:
        assert restored[key].dtype == original[key].dtype, key
        assert torch.equal(restored[key], original[key]), key
    assert loaded.linear.weight.dtype == dtype
    x = torch.randn(5, 4, dtype=dtype)
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training, "load returns a module in eval mode, ready for inference"


def test_file_is_one_safetensors_file_with_invflow_metadata(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save(_trained(), str(path))
    assert os.listdir(tmp_path) == ["model.safetensors"]
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta == _metadata(module=TinyCheckpointModel.__module__)  # the module: see TRUSTED_PACKAGES
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & 0o044 == 0o044 & ~_umask(), "not left with NamedTemporaryFile's 0o600"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_shared_storage_tensors_are_saved(tmp_path):
    model = _trained()
    model.register_buffer("alias", model.offset)  # same storage under two names
    checkpoint.save(model, tmp_path / "m.safetensors")
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("alias"), model.offset)


def test_map_location_cpu(tmp_path):
    model = _trained(torch.float64)
    checkpoint.save(model, tmp_path / "m.safetensors")
    for location in ("cpu", torch.device("cpu")):
        loaded = checkpoint.load(tmp_path / "m.safetensors", map_location=location)
        assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    with pytest.raises(ValueError, match="map_location"):
        checkpoint.load(tmp_path / "m.safetensors", map_location="not-a-device")


# --------------------------------------------------------------------------- atomicity


def test_failed_write_leaves_previous_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    first = _trained(features=3)
    checkpoint.save(first, path)
    before = path.read_bytes()

    def partial_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00\x01partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(_trained(features=5), path)

    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert path.read_bytes() == before
    loaded = checkpoint.load(path)
    assert torch.equal(loaded.linear.weight, first.linear.weight)


def test_failed_first_write_creates_nothing(tmp_path, monkeypatch):
    def fail(tensors, filename, metadata=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(RuntimeError, match="boom"):
        checkpoint.save(_trained(), tmp_path / "model.safetensors")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- refusal


def test_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_trained().state_dict(), path)
    with pytest.raises(ValueError, match="pickled checkpoints are not loaded for safety"):
        checkpoint.load(path)


def test_legacy_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_trained().state_dict(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="pickled checkpoints are not loaded for safety"):
        checkpoint.load(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running(tmp_path, protocol):
    assert pickle.loads(pickle.dumps(1)) == 1  # sanity: pickle itself works here
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state": _Payload()}, protocol=protocol))
    _SIDE_EFFECT["ran"] = False
    with pytest.raises(ValueError, match="pickled checkpoints are not loaded for safety"):
        checkpoint.load(path)
    assert _SIDE_EFFECT["ran"] is False


def test_raw_pickle_of_plain_data_is_refused(tmp_path):
    path = tmp_path / "plain.bin"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="pickled"):
        checkpoint.load(path)


def test_safetensors_header_length_that_starts_like_a_pickle_still_loads(tmp_path):
    """A header of 640 bytes makes the file start with b"\\x80\\x02", pickle's protocol-2 prefix."""
    model = _trained()
    path = tmp_path / "m.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    for pad in range(700):
        safetensors.torch.save_file(tensors, str(path), metadata=_metadata(pad="x" * pad))
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("could not build a header of the wanted length")
    assert torch.equal(checkpoint.load(path).linear.weight, model.linear.weight)


@pytest.mark.parametrize("content", [b"", b"hello", b"{" * 64, b"\x08" + b"\x00" * 7 + b"{not json"])
def test_garbage_is_refused_with_value_error(tmp_path, content):
    path = tmp_path / "junk"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="safetensors"):
        checkpoint.load(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------- registry and metadata


def test_saving_an_unregistered_class_raises_type_error(tmp_path):
    class Unregistered(TinyCheckpointModel):
        pass

    with pytest.raises(TypeError, match="invflow.checkpoint.register"):
        checkpoint.save(Unregistered(), tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_register_requires_config_and_from_config(isolated_registry):
    class NoConfig(nn.Module):
        @classmethod
        def from_config(cls, config):
            return cls()

    class NoFromConfig(nn.Module):
        def config(self):
            return {}

    class PlainFromConfig(nn.Module):
        def config(self):
            return {}

        def from_config(self, config):
            return self

    cases = ((NoConfig, "config"), (NoFromConfig, "from_config"), (PlainFromConfig, "from_config"))
    for cls, missing in cases:
        with pytest.raises(TypeError, match=missing):
            checkpoint.register(cls)
    with pytest.raises(TypeError, match="nn.Module"):
        checkpoint.register(object)


def test_register_is_idempotent_and_rejects_name_clashes(isolated_registry):
    assert checkpoint.register(TinyCheckpointModel) is TinyCheckpointModel

    class TinyCheckpointModel2(TinyCheckpointModel):
        pass

    TinyCheckpointModel2.__name__ = "TinyCheckpointModel"
    with pytest.raises(ValueError, match="already registered"):
        checkpoint.register(TinyCheckpointModel2)


def test_config_must_be_json_serialisable(tmp_path, isolated_registry):
    @checkpoint.register
    class BadConfig(TinyCheckpointModel):
        def config(self):
            return {"features": 3, "device": torch.device("cpu")}

    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(BadConfig(), tmp_path / "m.safetensors")


def test_unknown_class_name_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_safetensors(path, _metadata(**{"class": "NoSuchModel"}))
    with pytest.raises(ValueError, match="NoSuchModel.*TinyCheckpointModel"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {"note": "not ours"},
        _metadata(format="other"),
        _metadata(version="2"),
        _metadata(config="{oops"),
    ],
)
def test_safetensors_without_invflow_metadata_is_refused(tmp_path, metadata):
    path = tmp_path / "m.safetensors"
    _write_safetensors(path, metadata)
    with pytest.raises(ValueError):
        checkpoint.load(path)


def test_config_the_class_rejects_is_a_value_error(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_safetensors(path, _metadata(config=json.dumps({"bogus": 1})))
    with pytest.raises(ValueError, match="does not build a TinyCheckpointModel"):
        checkpoint.load(path)


def test_state_dict_key_mismatch_is_a_value_error(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {k: v.contiguous() for k, v in _trained().state_dict().items()}
    tensors["extra"] = tensors.pop("offset")
    safetensors.torch.save_file(tensors, str(path), metadata=_metadata())
    with pytest.raises(ValueError, match=r"missing keys \['offset'\].*unexpected keys \['extra'\]"):
        checkpoint.load(path)
    loaded = checkpoint.load(path, strict=False)
    assert torch.equal(loaded.linear.weight, tensors["linear.weight"])


def test_shape_mismatch_is_a_value_error(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(_trained(features=3), path)
    data = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = json.dumps({"features": 6, "out": 2, "shift": 0.5})
    safetensors.torch.save_file(data, str(path), metadata=meta)
    with pytest.raises(
        ValueError, match=r"config does not match the stored tensors: linear.weight is \[2, 3\]"
    ):
        checkpoint.load(path)
