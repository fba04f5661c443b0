"""Checkpoints and run directories that fight back: named pipes and devices are refused rather
than waited on, a run's ``latest`` file cannot lead outside the run, an edited config cannot
make loading allocate more than the file holds, NaN weights are refused (named), a class not
registered yet is imported only from a trusted package, and size bounds in the constructors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import safetensors
import safetensors.torch
import torch

import invflow
import invflow.validation
from invflow import checkpoint
from invflow.io import check_regular, open_regular, read_small_text
from invflow.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _within(seconds: float, fn):
    """fn() in a daemon thread: its result or exception, or a failure if it blocks."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _glow(hidden=4):
    torch.manual_seed(0)
    model = invflow.Glow(1, 4, levels=1, steps=1, hidden=hidden)
    model.train()(torch.rand(8, 1, 4, 4) - 0.5)
    return model.eval()


def _rewrite(path, config=None, tensors=None, **meta_updates):
    data = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    if config is not None:
        meta["config"] = json.dumps(config)
    meta.update(meta_updates)
    safetensors.torch.save_file(tensors if tensors is not None else data, str(path), metadata=meta)


# ------------------------------------------------------------- pipes, devices
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")


@needs_fifo
def test_a_fifo_as_checkpoint_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(
        ValueError, match=r"is a named pipe \(FIFO\), not a regular file; expected an invflow"
    ):
        _within(5, lambda: invflow.load(fifo))
    run = tmp_path / "run"
    (run / "step-0000001").mkdir(parents=True)
    os.mkfifo(run / "step-0000001" / "model.safetensors")
    (run / "latest").write_text("step-0000001")
    with pytest.raises(ValueError, match="named pipe"):
        _within(5, lambda: invflow.load(run))


@needs_fifo
def test_a_fifo_as_latest_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "latest")
    with pytest.raises(ValueError, match=r"latest is a named pipe"):
        _within(5, lambda: invflow.load(tmp_path))
    trainer = Trainer(
        _glow(), torch.zeros(4, 1, 4, 4, dtype=torch.uint8), str(tmp_path), steps=1, batch_size=2
    )
    with pytest.raises(ValueError, match="named pipe"):
        _within(5, lambda: trainer.fit(resume=True))


def test_devices_and_directories_are_refused(tmp_path):
    if os.path.exists("/dev/zero"):
        with pytest.raises(ValueError, match="character device"):
            _within(5, lambda: invflow.load("/dev/zero"))
    with pytest.raises(ValueError, match="is a directory"):
        open_regular(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file; expected a run's latest"):
        check_regular(tmp_path / "nope", "a run's latest file")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="more than 4096 bytes"):
        read_small_text(big)


@needs_fifo
def test_trainer_resume_refuses_a_fifo_state_and_log(tmp_path):
    data = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    Trainer(_glow(), data, str(tmp_path), steps=2, batch_size=4, progress=False).fit()
    step = checkpoint.latest_checkpoint(tmp_path)
    state = os.path.join(step, "state.safetensors")
    os.replace(state, state + ".bak")
    os.mkfifo(state)
    trainer = Trainer(_glow(), data, str(tmp_path), steps=3, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="named pipe"):
        _within(5, lambda: trainer.fit(resume=True))
    os.remove(state)
    os.replace(state + ".bak", state)
    os.remove(tmp_path / "log.csv")
    os.mkfifo(tmp_path / "log.csv")
    trainer = Trainer(_glow(), data, str(tmp_path), steps=3, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"log.csv is a named pipe"):
        _within(5, lambda: trainer.fit(resume=True))


# -------------------------------------------------------------- latest escapes
def _run(tmp_path, name="run", steps=1):
    data = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    out = tmp_path / name
    Trainer(_glow(), data, str(out), steps=steps, batch_size=4, progress=False).fit()
    return out


@pytest.mark.parametrize("target", ["../..", "/etc/passwd", "../other/step-0000001", "", "."])
def test_latest_must_name_a_checkpoint_inside_the_run(tmp_path, target):
    run, _ = _run(tmp_path), _run(tmp_path, "other")
    (run / "latest").write_text(target)
    with pytest.raises(ValueError, match=r"latest names .* not a checkpoint inside the run directory"):
        invflow.load(run)
    trainer = Trainer(_glow(), torch.zeros(4, 1, 4, 4, dtype=torch.uint8), str(run), steps=2, batch_size=2)
    with pytest.raises(ValueError, match="not a checkpoint inside the run directory"):
        trainer.load_latest()


def test_links_out_of_the_run_are_refused(tmp_path):
    run, other = _run(tmp_path), _run(tmp_path, "other")
    # a step directory that is a link to another run's checkpoint
    os.symlink(other / "step-0000001", run / "step-0000009")
    (run / "latest").write_text("step-0000009")
    with pytest.raises(ValueError, match="not a checkpoint inside the run directory"):
        invflow.load(run)
    # a model file that is a link to another run's model
    (run / "latest").write_text("step-0000001")
    model = run / "step-0000001" / "model.safetensors"
    os.remove(model)
    os.symlink(other / "step-0000001" / "model.safetensors", model)
    with pytest.raises(ValueError, match=r"resolves to .*other.* outside"):
        invflow.load(run)
    trainer = Trainer(_glow(), torch.zeros(4, 1, 4, 4, dtype=torch.uint8), str(run), steps=2, batch_size=2)
    with pytest.raises(ValueError, match="outside"):
        trainer.load_latest()
    # the latest file itself a link out of the run
    os.remove(run / "latest")
    (tmp_path / "elsewhere").write_text("step-0000001")
    os.symlink(tmp_path / "elsewhere", run / "latest")
    with pytest.raises(ValueError, match=r"latest file\) resolves to .*elsewhere"):
        invflow.load(run)


def test_a_good_run_still_loads_and_resumes(tmp_path):
    run = _run(tmp_path, steps=2)
    assert isinstance(invflow.load(run), invflow.Glow)
    data = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    trainer = Trainer(_glow(), data, str(run), steps=3, batch_size=4, progress=False)
    assert trainer.load_latest() and trainer.step == 2


# ------------------------------------------------------ memory set by the file
def test_an_edited_config_is_refused_before_allocating(tmp_path):
    path = tmp_path / "m.safetensors"
    invflow.save(_glow(hidden=4), path)
    config = _glow(hidden=4).config()
    _rewrite(path, config={**config, "hidden": 4000})  # within MAX_HIDDEN: only the shapes catch it
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"stored config does not match the stored tensors: .* is \[4, "):
        invflow.load(path)
    assert time.perf_counter() - start < 1.0
    _rewrite(path, config={**config, "hidden": 200000})  # the edit: 160 GB if built
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"hidden=200000 is above invflow.validation.MAX_HIDDEN"):
        invflow.load(path)
    assert time.perf_counter() - start < 1.0


def test_a_config_the_class_rejects_and_damaged_headers(tmp_path):
    path = tmp_path / "m.safetensors"
    invflow.save(_glow(), path)
    _rewrite(path, config={"in_channels": 1})
    with pytest.raises(ValueError, match="config does not build a Glow"):
        invflow.load(path)
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = "[" * 100_000 + "]" * 100_000  # nested past Python's recursion limit
    safetensors.torch.save_file(safetensors.torch.load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ValueError, match="config is not valid JSON"):
        invflow.load(path)
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(len(deep).to_bytes(8, "little") + deep)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        invflow.load(path)


@pytest.mark.parametrize(
    "make, arg, const",
    [
        (lambda v: invflow.Glow(1, 8, levels=1, hidden=v), "hidden", "MAX_HIDDEN"),
        (lambda v: invflow.Glow(1, 2**v, levels=v, steps=1), "levels", "MAX_LEVELS"),
        (lambda v: invflow.Glow(1, 8, levels=1, steps=v), "steps", "MAX_STEPS"),
        (lambda v: invflow.Glow(1, v, levels=1), "image_size", "MAX_IMAGE_SIZE"),
        (lambda v: invflow.Glow(v, 8, levels=1), "in_channels", "MAX_CHANNELS"),
        (lambda v: invflow.RealNVP(1, 8, blocks=v), "blocks", "MAX_BLOCKS"),
        (lambda v: invflow.RealNVP(1, 8, hidden=v), "hidden", "MAX_HIDDEN"),
        (lambda v: invflow.PatchGlow(1, 8, patch_size=4, hidden=v), "hidden", "MAX_HIDDEN"),
        (lambda v: invflow.DenseGlow(1, v, levels=1), "image_size", "MAX_IMAGE_SIZE"),
        (lambda v: invflow.VectorFlow(v), "dim", "MAX_DIM"),
        (lambda v: invflow.VectorFlow(4, hidden=v), "hidden", "MAX_HIDDEN"),
        (lambda v: invflow.nets.GlowNet(2, 4, hidden=v), "hidden", "MAX_HIDDEN"),
        (lambda v: invflow.nets.ResNet(2, 4, blocks=v), "blocks", "MAX_BLOCKS"),
        (lambda v: invflow.FixedLinear(v), "dim", "MAX_DIM"),
    ],
)
def test_constructor_size_bounds_name_the_limit(make, arg, const):
    limit = getattr(invflow.validation, const)
    over = limit + 1 if arg != "levels" else limit + 1
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match=rf"{arg}={over} is above invflow.validation.{const} = {limit}.*set "
    ):
        make(over)
    assert time.perf_counter() - start < 0.5


def test_a_bound_can_be_raised(monkeypatch):
    monkeypatch.setattr(invflow.validation, "MAX_HIDDEN", 6)
    with pytest.raises(ValueError, match="MAX_HIDDEN = 6"):
        invflow.Glow(1, 4, levels=1, steps=1, hidden=7)
    monkeypatch.setattr(invflow.validation, "MAX_HIDDEN", 7)
    assert invflow.Glow(1, 4, levels=1, steps=1, hidden=7).config()["hidden"] == 7
    dense = invflow.DenseGlow(1, 4, levels=1, steps=1, hidden=4)  # the largest fully-connected input
    with pytest.raises(ValueError, match="dim=16 is above invflow.validation.MAX_DIM"):
        monkeypatch.setattr(invflow.validation, "MAX_DIM", 15)
        invflow.DenseGlow(1, 4, levels=1, steps=1, hidden=4)
    assert dense.input_shape == (1, 4, 4)


# ----------------------------------------------------------- non-finite weights
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    path = tmp_path / "m.safetensors"
    model = _glow()
    with torch.no_grad():
        model.scales[0][0][2].net[0].weight[0, 0, 0, 0] = value
    invflow.save(model, path)
    with pytest.raises(ValueError, match=r"tensor 'scales.0.flows.0.flows.2.net.0.weight' holds 1 NaN / Inf"):
        invflow.load(path)


# ------------------------------------------------ classes registered on import
def test_a_class_of_a_trusted_module_loads_after_import_invflow_detectors(tmp_path):
    from detectors.objectives.supervised import ClassConditionalFlow

    path = tmp_path / "ccf.safetensors"
    invflow.save(ClassConditionalFlow(_glow(), 3), path)
    load = textwrap.dedent(
        f"""
        import sys, invflow
        assert "detectors.objectives.supervised" not in sys.modules
        m = invflow.load({str(path)!r})  # imports the module the file names (under detectors)
        print(type(m).__name__, m.num_classes)
        import detectors
        print(type(invflow.load({str(path)!r})).__name__)
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["ClassConditionalFlow", "3", "ClassConditionalFlow"]


def test_a_trusted_module_is_imported_when_its_class_is_not_registered(tmp_path, monkeypatch):
    """In-process: ClassConditionalFlow's module imported but not yet (as after a lazy import)."""
    from detectors.objectives.supervised import ClassConditionalFlow

    path = tmp_path / "ccf.safetensors"
    invflow.save(ClassConditionalFlow(_glow(), 2), path)
    registry = {k: v for k, v in checkpoint._REGISTRY.items() if k != "ClassConditionalFlow"}
    monkeypatch.setattr(checkpoint, "_REGISTRY", registry)
    import detectors.objectives

    # the re-import below rebinds the package attribute too: restore both afterwards
    monkeypatch.setattr(detectors.objectives, "supervised", detectors.objectives.supervised)
    monkeypatch.delitem(sys.modules, "detectors.objectives.supervised")
    loaded = invflow.load(path)
    assert type(loaded).__name__ == "ClassConditionalFlow" and loaded.num_classes == 2
    assert "ClassConditionalFlow" in registry


def test_modules_outside_the_trusted_packages_are_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "h1_untrusted_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "m.safetensors"
    invflow.save(_glow(), path)
    for module in ("h1_untrusted_module", "os", "invflow..x", "detectors.__main__; import os"):
        _rewrite(path, **{"class": "Unregistered", "module": module})
        with pytest.raises(ValueError, match="'Unregistered'.* is not registered.*Import the module"):
            invflow.load(path)
    assert not marker.exists()
    assert "h1_untrusted_module" not in sys.modules
    _rewrite(path, **{"class": "Unregistered", "module": "invflow.no_such_module"})
    with pytest.raises(ValueError, match="is not registered"):
        invflow.load(path)
